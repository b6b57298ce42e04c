"""The directory the rules need: users, groups, projects, memberships and instance settings.

Event-sourced like the tokens, so auditors can see who held which role when. Integer ids are claimed by
saving the first event of the stream ``uuid5(kind, n)``; unique names (usernames, namespace paths) are
claimed by a ``PathClaim`` stream saved in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, datetime
from enum import IntEnum
from typing import Any, Final
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.deploy_token import normalise_expiry
from domain.errors import ErrorCollector, ValidationError
from domain.text import check_text

_ID_NAMESPACE: Final = UUID("0b7e58a2-44c8-4a5e-8d0f-6a3c9e1d2f47")

PATH_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9_.][a-zA-Z0-9_.-]*\Z")
EMAIL_PATTERN: Final = re.compile(r"\A[^@\s]+@[^@\s]+\.[^@\s]+\Z")
NAME_MAX_LENGTH: Final = 255

PERSONAL_ACCESS_TOKEN_SCOPES: Final[tuple[str, ...]] = ("api", "read_api", "read_user", "sudo", "admin_mode")

EXPIRING_NOTIFICATIONS_FLAG: Final = "project_deploy_token_expiring_notifications"
KNOWN_FEATURES: Final[dict[str, bool]] = {EXPIRING_NOTIFICATIONS_FLAG: True}


class AccessLevel(IntEnum):
    """GitLab's access levels; a member's level on a group applies to everything below it."""

    NO_ACCESS = 0
    GUEST = 10
    REPORTER = 20
    DEVELOPER = 30
    MAINTAINER = 40
    OWNER = 50


MEMBER_LEVELS: Final = frozenset({10, 20, 30, 40, 50})


def stream_id(kind: str, number: int) -> UUID:
    """Stream id of directory object ``kind`` number ``number`` (kinds: user, namespace, project, pat)."""
    return uuid5(_ID_NAMESPACE, f"{kind}:{number}")


def path_claim_id(full_path: str) -> UUID:
    """Paths are unique case-insensitively, as in GitLab (``Acme`` and ``acme`` are the same namespace)."""
    return uuid5(_ID_NAMESPACE, f"path:{full_path.lower()}")


SETTINGS_ID: Final = uuid5(_ID_NAMESPACE, "instance-settings")

# Reserved paths. A namespace or project path becomes the start of URLs, so a path that a route already
# owns makes URLs ambiguous: a group ``api`` with subgroups ``v4/projects/1/packages/generic`` let a
# project's Git URL read as a package API URL to the nginx auth check. The lists are GitLab's
# (``Gitlab::PathRegex``; entries are lower case and compared case-insensitively, as GitLab does), plus the
# routes this service answers itself. They are checked when a path is chosen, never on replay: a path
# recorded before a name was reserved keeps working.

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


def validate_access_level(level: int) -> AccessLevel:
    if level not in MEMBER_LEVELS:
        raise ValidationError.single("access_level", "does not have a valid value")
    return AccessLevel(level)


class PathClaim(Aggregate):
    """Claims a username or namespace path; saved atomically with its owner so two cannot share it."""

    TOPIC = "deploy_tokens:PathClaim"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:PathClaim.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:PathClaim.Created"
        full_path: str
        owner_kind: str
        owner_id: int

    def __init__(self, full_path: str, owner_kind: str, owner_id: int) -> None:
        self.full_path = full_path
        self.owner_kind = owner_kind
        self.owner_id = owner_id

    @classmethod
    def claim(cls, full_path: str, owner_kind: str, owner_id: int, now: datetime) -> PathClaim:
        return cls._create(
            cls.Created,
            id=path_claim_id(full_path),
            timestamp=now,
            full_path=full_path,
            owner_kind=owner_kind,
            owner_id=owner_id,
        )


class _Membership(Aggregate):
    """Members with access levels, shared by groups and projects."""

    members: dict[int, int]

    def _member_set_event(self) -> type[Aggregate.Event]:
        raise NotImplementedError

    def _member_removed_event(self) -> type[Aggregate.Event]:
        raise NotImplementedError

    def owner_ids(self) -> frozenset[int]:
        """Users holding Owner directly on this group or project."""
        return frozenset(user_id for user_id, level in self.members.items() if level >= AccessLevel.OWNER)

    def set_member(self, user_id: int, level: int, *, actor: Actor, now: datetime) -> bool:
        checked = validate_access_level(level)
        if self.members.get(user_id) == int(checked):
            return False
        self.trigger_event(
            self._member_set_event(),
            timestamp=now,
            user_id=user_id,
            access_level=int(checked),
            actor=actor.as_event_data(),
        )
        return True

    def remove_member(self, user_id: int, *, actor: Actor, now: datetime) -> bool:
        if user_id not in self.members:
            return False
        self.trigger_event(
            self._member_removed_event(), timestamp=now, user_id=user_id, actor=actor.as_event_data()
        )
        return True


class User(Aggregate):
    TOPIC = "deploy_tokens:User"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Event"

    class Registered(Aggregate.Created):
        TOPIC = "deploy_tokens:User.Registered"
        user_id: int
        username: str
        email: str
        name: str
        is_admin: bool
        namespace_id: int
        actor: dict[str, Any]

    class Blocked(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Blocked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.blocked = True

    class Unblocked(Aggregate.Event):
        TOPIC = "deploy_tokens:User.Unblocked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.blocked = False

    class AdminChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:User.AdminChanged"
        is_admin: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, User)
            aggregate.is_admin = self.is_admin

    def __init__(
        self,
        user_id: int,
        username: str,
        email: str,
        name: str,
        is_admin: bool,
        namespace_id: int,
        actor: dict[str, Any],
    ) -> None:
        self.user_id = user_id
        self.username = username
        self.email = email
        self.name = name
        self.is_admin = is_admin
        self.namespace_id = namespace_id
        self.blocked = False

    @classmethod
    def register(
        cls,
        *,
        user_id: int,
        namespace_id: int,
        username: str,
        email: str,
        name: str | None,
        is_admin: bool,
        actor: Actor,
        now: datetime,
    ) -> User:
        errors = ErrorCollector()
        checked_username = errors.check(
            lambda value: validate_path(value, "username", RESERVED_TOP_LEVEL_PATHS), username
        )
        checked_email = errors.check(validate_email, email)
        checked_name = errors.check(validate_display_name, name or username)
        errors.raise_if_any()
        assert checked_username and checked_email and checked_name
        return cls._create(
            cls.Registered,
            id=stream_id("user", user_id),
            timestamp=now,
            user_id=user_id,
            username=checked_username,
            email=checked_email,
            name=checked_name,
            is_admin=is_admin,
            namespace_id=namespace_id,
            actor=actor.as_event_data(),
        )

    def block(self, *, actor: Actor, now: datetime) -> bool:
        if self.blocked:
            return False
        self.trigger_event(self.Blocked, timestamp=now, actor=actor.as_event_data())
        return True

    def unblock(self, *, actor: Actor, now: datetime) -> bool:
        if not self.blocked:
            return False
        self.trigger_event(self.Unblocked, timestamp=now, actor=actor.as_event_data())
        return True

    def set_admin(self, is_admin: bool, *, actor: Actor, now: datetime) -> bool:
        if self.is_admin == is_admin:
            return False
        self.trigger_event(self.AdminChanged, timestamp=now, is_admin=is_admin, actor=actor.as_event_data())
        return True


class UserNamespace(Aggregate):
    """A user's personal namespace: projects may live there (never reachable by group tokens)."""

    TOPIC = "deploy_tokens:UserNamespace"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:UserNamespace.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:UserNamespace.Created"
        namespace_id: int
        user_id: int
        path: str

    def __init__(self, namespace_id: int, user_id: int, path: str) -> None:
        self.namespace_id = namespace_id
        self.user_id = user_id
        self.path = path

    @classmethod
    def open(cls, *, namespace_id: int, user_id: int, path: str, now: datetime) -> UserNamespace:
        return cls._create(
            cls.Created,
            id=stream_id("namespace", namespace_id),
            timestamp=now,
            namespace_id=namespace_id,
            user_id=user_id,
            path=path,
        )


class PersonalAccessToken(Aggregate):
    """A user's credential for the management API. Only its keyed digest is recorded."""

    TOPIC = "deploy_tokens:PersonalAccessToken"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:PersonalAccessToken.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:PersonalAccessToken.Created"
        pat_id: int
        user_id: int
        name: str
        scopes: list[str]
        expires_at: datetime | None
        digest: str
        actor: dict[str, Any]

    class Revoked(Aggregate.Event):
        TOPIC = "deploy_tokens:PersonalAccessToken.Revoked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, PersonalAccessToken)
            aggregate.revoked = True

    def __init__(
        self,
        pat_id: int,
        user_id: int,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        digest: str,
        actor: dict[str, Any],
    ) -> None:
        self.pat_id = pat_id
        self.user_id = user_id
        self.name = name
        self.scopes = tuple(scopes)
        self.expires_at = expires_at
        self.digest = digest
        self.revoked = False

    @classmethod
    def issue(
        cls,
        *,
        pat_id: int,
        user_id: int,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None,
        digest: str,
        actor: Actor,
        now: datetime,
    ) -> PersonalAccessToken:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        given = list(scopes)
        unknown = sorted(set(given) - set(PERSONAL_ACCESS_TOKEN_SCOPES))
        if not given:
            errors.add("scopes", "can't be blank")
        elif unknown:
            errors.add("scopes", f"does not have a valid value: {', '.join(unknown)}")
        checked_expiry = errors.check(normalise_expiry, expires_at)
        if checked_expiry is not None and checked_expiry <= now:
            errors.add("expires_at", "must be in the future")
        errors.raise_if_any()
        assert checked_name
        ordered = [scope for scope in PERSONAL_ACCESS_TOKEN_SCOPES if scope in given]
        return cls._create(
            cls.Created,
            id=stream_id("pat", pat_id),
            timestamp=now,
            pat_id=pat_id,
            user_id=user_id,
            name=checked_name,
            scopes=ordered,
            expires_at=checked_expiry,
            digest=digest,
            actor=actor.as_event_data(),
        )

    def revoke(self, *, actor: Actor, now: datetime) -> bool:
        if self.revoked:
            return False
        self.trigger_event(self.Revoked, timestamp=now, actor=actor.as_event_data())
        return True


class Group(_Membership):
    TOPIC = "deploy_tokens:Group"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:Group.Created"
        group_id: int
        name: str
        path: str
        parent_id: int | None
        full_path: str
        ancestor_ids: list[int]
        actor: dict[str, Any]

    class MemberSet(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.MemberSet"
        user_id: int
        access_level: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.members[self.user_id] = self.access_level

    class MemberRemoved(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.MemberRemoved"
        user_id: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.members.pop(self.user_id, None)

    class DependencyProxyChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.DependencyProxyChanged"
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.dependency_proxy_enabled = self.enabled

    def __init__(
        self,
        group_id: int,
        name: str,
        path: str,
        parent_id: int | None,
        full_path: str,
        ancestor_ids: list[int],
        actor: dict[str, Any],
    ) -> None:
        self.group_id = group_id
        self.name = name
        self.path = path
        self.parent_id = parent_id
        self.full_path = full_path
        self.ancestor_ids = tuple(ancestor_ids)
        self.members: dict[int, int] = {}
        self.dependency_proxy_enabled = True

    @classmethod
    def found(
        cls, *, group_id: int, name: str, path: str, parent: Group | None, actor: Actor, now: datetime
    ) -> Group:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        reserved = GROUP_ROUTES if parent else RESERVED_TOP_LEVEL_PATHS
        checked_path = errors.check(lambda value: validate_path(value, "path", reserved), path)
        errors.raise_if_any()
        assert checked_name and checked_path
        full_path = f"{parent.full_path}/{checked_path}" if parent else checked_path
        ancestors = [*parent.ancestor_ids, parent.group_id] if parent else []
        return cls._create(
            cls.Created,
            id=stream_id("namespace", group_id),
            timestamp=now,
            group_id=group_id,
            name=checked_name,
            path=checked_path,
            parent_id=parent.group_id if parent else None,
            full_path=full_path,
            ancestor_ids=ancestors,
            actor=actor.as_event_data(),
        )

    def _member_set_event(self) -> type[Aggregate.Event]:
        return self.MemberSet

    def _member_removed_event(self) -> type[Aggregate.Event]:
        return self.MemberRemoved

    def set_dependency_proxy(self, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if self.dependency_proxy_enabled == enabled:
            return False
        self.trigger_event(
            self.DependencyProxyChanged, timestamp=now, enabled=enabled, actor=actor.as_event_data()
        )
        return True


class Project(_Membership):
    TOPIC = "deploy_tokens:Project"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:Project.Created"
        project_id: int
        name: str
        path: str
        namespace_id: int
        namespace_kind: str
        group_ids: list[int]
        full_path: str
        repository_enabled: bool
        container_registry_enabled: bool
        actor: dict[str, Any]

    class FeaturesChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.FeaturesChanged"
        repository_enabled: bool
        container_registry_enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.repository_enabled = self.repository_enabled
            aggregate.container_registry_enabled = self.container_registry_enabled

    class MemberSet(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.MemberSet"
        user_id: int
        access_level: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.members[self.user_id] = self.access_level

    class MemberRemoved(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.MemberRemoved"
        user_id: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.members.pop(self.user_id, None)

    def __init__(
        self,
        project_id: int,
        name: str,
        path: str,
        namespace_id: int,
        namespace_kind: str,
        group_ids: list[int],
        full_path: str,
        repository_enabled: bool,
        container_registry_enabled: bool,
        actor: dict[str, Any],
    ) -> None:
        self.project_id = project_id
        self.name = name
        self.path = path
        self.namespace_id = namespace_id
        self.namespace_kind = namespace_kind
        self.group_ids = tuple(group_ids)
        self.full_path = full_path
        self.repository_enabled = repository_enabled
        self.container_registry_enabled = container_registry_enabled
        self.members: dict[int, int] = {}

    @classmethod
    def found(
        cls,
        *,
        project_id: int,
        name: str,
        path: str | None,
        namespace: Group | UserNamespace,
        repository_enabled: bool,
        container_registry_enabled: bool,
        actor: Actor,
        now: datetime,
    ) -> Project:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        checked_path = errors.check(
            lambda value: validate_path(value, "path", RESERVED_PROJECT_PATHS), path or _path_from_name(name)
        )
        errors.raise_if_any()
        assert checked_name and checked_path
        if isinstance(namespace, Group):
            group_ids = [*namespace.ancestor_ids, namespace.group_id]
            parent_path, kind, namespace_id = namespace.full_path, "group", namespace.group_id
        else:
            group_ids, parent_path, kind, namespace_id = [], namespace.path, "user", namespace.namespace_id
        return cls._create(
            cls.Created,
            id=stream_id("project", project_id),
            timestamp=now,
            project_id=project_id,
            name=checked_name,
            path=checked_path,
            namespace_id=namespace_id,
            namespace_kind=kind,
            group_ids=group_ids,
            full_path=f"{parent_path}/{checked_path}",
            repository_enabled=repository_enabled,
            container_registry_enabled=container_registry_enabled,
            actor=actor.as_event_data(),
        )

    @property
    def group_id(self) -> int | None:
        """The group the project lives directly in (None in a user namespace)."""
        return self.group_ids[-1] if self.group_ids else None

    def _member_set_event(self) -> type[Aggregate.Event]:
        return self.MemberSet

    def _member_removed_event(self) -> type[Aggregate.Event]:
        return self.MemberRemoved

    def change_features(
        self,
        *,
        repository_enabled: bool | None,
        container_registry_enabled: bool | None,
        actor: Actor,
        now: datetime,
    ) -> bool:
        repository = self.repository_enabled if repository_enabled is None else repository_enabled
        registry = (
            self.container_registry_enabled
            if container_registry_enabled is None
            else container_registry_enabled
        )
        if (repository, registry) == (self.repository_enabled, self.container_registry_enabled):
            return False
        self.trigger_event(
            self.FeaturesChanged,
            timestamp=now,
            repository_enabled=repository,
            container_registry_enabled=registry,
            actor=actor.as_event_data(),
        )
        return True


def _path_from_name(name: str | None) -> str:
    """GitLab derives a project's path from its name when no path is given."""
    if not name:
        return ""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", name.strip()).strip("-")
    return slug.lower()


class InstanceSettings(Aggregate):
    """Instance-wide settings: external authorization (R6) and feature flags (R18)."""

    TOPIC = "deploy_tokens:InstanceSettings"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:InstanceSettings.Created"

    class ExternalAuthorizationChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.ExternalAuthorizationChanged"
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InstanceSettings)
            aggregate.external_authorization_enabled = self.enabled

    class FeatureChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:InstanceSettings.FeatureChanged"
        name: str
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, InstanceSettings)
            aggregate.features[self.name] = self.enabled

    def __init__(self) -> None:
        self.external_authorization_enabled = False
        self.features: dict[str, bool] = dict(KNOWN_FEATURES)

    @classmethod
    def initial(cls, now: datetime) -> InstanceSettings:
        return cls._create(cls.Created, id=SETTINGS_ID, timestamp=now)

    def feature_enabled(self, name: str) -> bool:
        return self.features.get(name, False)

    def set_external_authorization(self, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if self.external_authorization_enabled == enabled:
            return False
        self.trigger_event(
            self.ExternalAuthorizationChanged, timestamp=now, enabled=enabled, actor=actor.as_event_data()
        )
        return True

    def set_feature(self, name: str, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if name not in KNOWN_FEATURES:
            raise ValidationError.single("name", f"is not a known feature: {name}")
        if self.features.get(name) == enabled:
            return False
        self.trigger_event(
            self.FeatureChanged, timestamp=now, name=name, enabled=enabled, actor=actor.as_event_data()
        )
        return True
