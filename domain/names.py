"""What a path, a display name or an email address may be, and which paths are reserved for routes.

Reserved paths. A namespace or project path becomes the start of URLs, so a path that a route already owns
makes URLs ambiguous: a group ``api`` with subgroups ``v4/projects/1/packages/generic`` let a project's Git
URL read as a package API URL to the nginx auth check. The lists are GitLab's (``Gitlab::PathRegex``;
entries are lower case and compared case-insensitively, as GitLab does), plus the routes this service answers
itself. They are checked when a path is chosen, never on replay: a path recorded before a name was reserved
keeps working.
"""

from __future__ import annotations

import re
from typing import Final

from domain.errors import ValidationError
from domain.text import check_text

PATH_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9_.][a-zA-Z0-9_.-]*\Z")
EMAIL_PATTERN: Final = re.compile(r"\A[^@\s]+@[^@\s]+\.[^@\s]+\Z")
NAME_MAX_LENGTH: Final = 255

# GitLab's TOP_LEVEL_ROUTES, the union of its recent releases: reserving a name that GitLab has since
# released costs nothing, and a name this service might route later stays free.
GITLAB_TOP_LEVEL_ROUTES: Final = frozenset(
    {
        "-",
        ".well-known",
        "404.html",
        "422.html",
        "500.html",
        "502.html",
        "503.html",
        "admin",
        "api",
        "apple-touch-icon-precomposed.png",
        "apple-touch-icon.png",
        "assets",
        "dashboard",
        "deploy.html",
        "explore",
        "favicon.ico",
        "favicon.png",
        "files",
        "groups",
        "health_check",
        "help",
        "import",
        "jwt",
        "login",
        "o",
        "oauth",
        "profile",
        "projects",
        "public",
        "robots.txt",
        "s",
        "search",
        "sitemap",
        "sitemap.xml",
        "sitemap.xml.gz",
        "slash-command-logo.png",
        "snippets",
        "unsubscribes",
        "uploads",
        "users",
        "v2",
    }
)
# The first path segment of every route served at this service's address, whatever GitLab's list says: its
# own (API, auth checks, UI, Flask's ``/static``) and those of the deployment around it (registry ``/v2``).
SERVICE_TOP_LEVEL_ROUTES: Final = frozenset(
    {
        "-",
        "admin",
        "api",
        "assets",
        "dashboard",
        "explore",
        "favicon.ico",
        "groups",
        "help",
        "internal",
        "jwt",
        "metrics",
        "oauth",
        "projects",
        "static",
        "uploads",
        "users",
        "v2",
    }
)
# Top-level group paths and usernames (a user's namespace is top level too).
RESERVED_TOP_LEVEL_PATHS: Final = GITLAB_TOP_LEVEL_ROUTES | SERVICE_TOP_LEVEL_ROUTES
# GitLab's GROUP_ROUTES: what may follow ``/groups/<full path>/``; subgroup paths.
GROUP_ROUTES: Final = frozenset({"-"})
# GitLab's PROJECT_WILDCARD_ROUTES: what may follow ``<namespace>/<project>/`` before a second wildcard.
# Its multi-segment entries can never equal one path segment; they are kept so the list stays GitLab's.
PROJECT_WILDCARD_ROUTES: Final = frozenset(
    {
        "-",
        "badges",
        "blame",
        "blob",
        "builds",
        "commits",
        "create",
        "create_dir",
        "edit",
        "environments/folders",
        "files",
        "find_file",
        "gitlab-lfs/objects",
        "info/lfs/objects",
        "new",
        "preview",
        "raw",
        "refs",
        "tree",
        "update",
        "wikis",
    }
)
# Git's smart and dumb HTTP paths after a repository (``<project>/info/refs``, ``<project>/HEAD``, ...): the
# auth check finds the project as the part before them, so no project may be named like them.
GIT_ROUTES: Final = frozenset({"info", "git-upload-pack", "git-receive-pack", "objects", "head"})
RESERVED_PROJECT_PATHS: Final = PROJECT_WILDCARD_ROUTES | GIT_ROUTES


def validate_path(path: str | None, field: str = "path", reserved: frozenset[str] = frozenset()) -> str:
    """GitLab's path rules: the format first; a well-formed path that a route owns is "a reserved name"."""
    if not path:
        raise ValidationError.single(field, "can't be blank")
    if len(path) > NAME_MAX_LENGTH:
        raise ValidationError.single(field, f"is too long (maximum is {NAME_MAX_LENGTH} characters)")
    if not PATH_PATTERN.match(path) or path.endswith((".git", ".atom")):
        raise ValidationError.single(
            field,
            "can contain only letters, digits, '_', '-' and '.'. Cannot start with '-', "
            "end in '.git' or end in '.atom'",
        )
    if path.lower() in reserved:
        raise ValidationError.single(field, f"{path} is a reserved name")
    return path


def validate_display_name(name: str | None, field: str = "name") -> str:
    if name is None or not name.strip():
        raise ValidationError.single(field, "can't be blank")
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError.single(field, f"is too long (maximum is {NAME_MAX_LENGTH} characters)")
    return check_text(name, field)


def validate_email(email: str | None) -> str:
    if not email or not EMAIL_PATTERN.match(email) or len(email) > NAME_MAX_LENGTH:
        raise ValidationError.single("email", "is invalid")
    return check_text(email, "email")
