"""What an nginx ``auth_request`` sub-request asks for: one canonical reading of the original request.

nginx hands the auth check the *raw* request URI (``$request_uri``) but routes, and hands its backends, the
*normalised* one (``$uri``): percent-decoded, slashes merged, dot segments resolved. Reading the raw URI
one way and letting nginx serve it another is how a token for one project could write to another
(``/%61pi/v4/projects/<victim>/packages/generic/tool/info/refs`` was checked as a git read of a project
called ``api/v4/projects/…`` and served by nginx as a package upload to the victim). So there is exactly
one reading here: :func:`canonical_uri` reproduces nginx's normalisation byte for byte (including what
nginx refuses with a 400), and everything after it (API or Git, which project, read or write) is decided on
that one path. ``tests/e2e/test_nginx_differential.py`` holds the reading against the real nginx.

Top-level namespaces that collide with routes (``api``, ``-``, …) are reserved (``domain.names``), so a
project's path can never also read as an API URL; and a URL that could name two different resources (two
``.git/`` segments, two ``/packages/<format>`` boundaries) names none.

Pure functions only: unit-tested on their own, memoised on the hot path.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Final, NamedTuple
from urllib.parse import parse_qs, unquote

from projections.access import Action
from projections.credential_index import Resource

__all__ = [
    "NOT_A_DEPLOY_TOKEN_ROUTE",
    "PACKAGE_FORMATS",
    "CanonicalUri",
    "Protocol",
    "Target",
    "canonical_uri",
    "map_original_request",
    "resource_from_reference",
]

# The path segment after ``packages/`` on GitLab's package-registry routes. A fixed list rather than "any
# word" because other API routes live under ``packages/`` too (``packages/protection/rules``).
PACKAGE_FORMATS: Final = frozenset(
    {
        "cargo",
        "composer",
        "conan",
        "debian",
        "generic",
        "go",
        "helm",
        "maven",
        "ml_models",
        "npm",
        "nuget",
        "pypi",
        "rpm",
        "rubygems",
        "terraform",
    }
)


# nginx's normalisation ----------------------------------------------------------------------------------


class CanonicalUri(NamedTuple):
    """nginx's ``$uri`` (decoded path) and ``$args`` (raw query) for one ``$request_uri``."""

    path: str
    args: str


# Bytes nginx refuses anywhere in a request line: controls, space (it ends the URI), DEL. Characters above
# U+00FF cannot come from nginx at all (header values arrive as bytes, read as latin-1).
_REFUSED_RAW: Final = re.compile(r"[\x00-\x20\x7f\u0100-\U0010ffff]")
# Only these make nginx's parser do more than cut the path at the first "?".
_NEEDS_PARSING: Final = re.compile(r"%|#|//|/\.")
_HEX: Final = frozenset("0123456789abcdefABCDEF")

_USUAL, _SLASH, _DOT, _DOT_DOT = range(4)


def canonical_uri(request_uri: str) -> CanonicalUri | None:
    """The path nginx routes for ``request_uri`` and its query, or ``None`` where nginx answers 400.

    Same rules as nginx's request-line and complex-URI parsers (``merge_slashes on``, the default):
    ``%XX`` is decoded and the decoded character then counts as what it is (``%2F`` is a slash, ``%2E%2E``
    a dot segment), except that a decoded ``%``, ``#`` or ``?`` is a literal character; ``%00`` and a
    malformed escape are refused; repeated slashes merge; ``.`` segments vanish and ``..`` removes the
    segment before it (refused above the root); a raw ``?`` starts the query and a raw ``#`` ends the
    path (and the query).
    """
    if not request_uri.startswith("/") or _REFUSED_RAW.search(request_uri):
        return None
    raw_path, question, query = request_uri.partition("?")
    if not _NEEDS_PARSING.search(raw_path):
        return CanonicalUri(raw_path, query.partition("#")[0] if question else "")
    return _parse_complex(request_uri)


def _parse_complex(raw: str) -> CanonicalUri | None:
    out = ["/"]
    state = _SLASH
    index, end = 1, len(raw)
    while index < end:
        char = raw[index]
        index += 1
        if char == "%":
            digits = raw[index : index + 2]
            if len(digits) != 2 or digits[0] not in _HEX or digits[1] not in _HEX:
                return None
            index += 2
            char = chr(int(digits, 16))
            if char == "\0":
                return None
            if char in "%#?":  # decoded, these three are plain characters, never syntax
                out.append(char)
                state = _USUAL
                continue
        elif char == "?":
            if not _close_segment(out, state):
                return None
            return CanonicalUri("".join(out), raw[index:].partition("#")[0])
        elif char == "#":
            if not _close_segment(out, state):
                return None
            return CanonicalUri("".join(out), "")
        # A plain character, or a decoded one that keeps its meaning ("/" and ".").
        if char == "/":
            if state == _SLASH:
                continue  # merged
            if not _close_segment(out, state):
                return None
            state = _SLASH
            if out[-1] != "/":
                out.append("/")
        elif char == "." and state in (_SLASH, _DOT):
            out.append(".")
            state = _DOT if state == _SLASH else _DOT_DOT
        else:
            out.append(char)
            state = _USUAL
    if not _close_segment(out, state):
        return None
    return CanonicalUri("".join(out), "")


def _close_segment(out: list[str], state: int) -> bool:
    """Resolve a segment that ends here: ``.`` is dropped, ``..`` drops the segment before it.

    Returns False when ``..`` would climb above the root (nginx answers 400).
    """
    if state == _DOT:
        out.pop()
    elif state == _DOT_DOT:
        del out[-3:]  # "/.."
        if not out:
            return False
        while out[-1] != "/":  # the segment before, up to and excluding its slash
            out.pop()
    return True


# Mapping the canonical request to (action, resource) ------------------------------------------------------


class Protocol(StrEnum):
    GIT = "git"
    PACKAGES = "packages"
    API = "api"  # any route that never accepts deploy tokens, or one we cannot recognise


@dataclass(frozen=True, slots=True)
class Target:
    action: Action
    resource: Resource | None
    protocol: Protocol
    exact_group_only: bool = False
    # Git compares the Basic username with the token's; package endpoints ignore it. A field set once rather
    # than a property: targets are cached (map_original_request) and read on every check.
    check_username: bool = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "check_username", self.protocol is Protocol.GIT)


NOT_A_DEPLOY_TOKEN_ROUTE: Final = Target(Action.API, None, Protocol.API)

_READ_METHODS: Final = frozenset({"GET", "HEAD"})
_NUMERIC_ID: Final = re.compile(r"[0-9]{1,18}")
_FORMAT_BOUNDARY: Final = r"/packages/(?P<format>[a-z_]+)(?=/|$)"
_PROJECT_PACKAGES: Final = re.compile(r"/api/v4/projects/(?P<ref>[^/]+(?:/[^/]+)*?)" + _FORMAT_BOUNDARY)
_GROUP_PACKAGES: Final = re.compile(r"/api/v4/groups/(?P<ref>[^/]+(?:/[^/]+)*?)/-" + _FORMAT_BOUNDARY)
_INSTANCE_PACKAGES: Final = re.compile(r"/api/v4" + _FORMAT_BOUNDARY)
_ANY_FORMAT_BOUNDARY: Final = re.compile(_FORMAT_BOUNDARY)
_GIT_SUFFIX: Final = ".git/"
# Smart HTTP also works without the ``.git`` suffix: ``/<full/path>/info/refs`` and the two services.
_GIT_BARE: Final = re.compile(r"/(?P<project>.+?)(?P<rest>/(?:info/refs|git-upload-pack|git-receive-pack))")


def _reference(kind: str, text: str) -> Resource:
    if _NUMERIC_ID.fullmatch(text):
        return Resource(kind, id=int(text))
    return Resource(kind, path=text)


def resource_from_reference(kind: str, raw: str) -> Resource | None:
    """A project or group as a JSON caller addresses it: a numeric id, or the (URL-encoded) full path.

    Never for nginx's URIs: those are decoded once, by :func:`canonical_uri`; decoding again would read
    ``%252F`` as a slash that nginx never saw.
    """
    reference = unquote(raw)
    if not reference:
        return None
    return _reference(kind, reference)


def _package_action(method: str) -> Action:
    # Anything but GET/HEAD, including an unknown or missing method, is treated as a write: fail closed.
    return Action.PACKAGE_READ if method in _READ_METHODS else Action.PACKAGE_WRITE


def _package_boundaries(path: str) -> int:
    return sum(1 for match in _ANY_FORMAT_BOUNDARY.finditer(path) if match["format"] in PACKAGE_FORMATS)


def _map_api(path: str, method: str) -> Target:
    # A project or group named by its full path spans several segments, so the package route starts at the
    # one "/packages/<format>" boundary; with two, the URL could name two different resources, so it names
    # none (a backend reading an encoded "%2F" inside the reference would draw the line elsewhere).
    match = _PROJECT_PACKAGES.match(path)
    if match and match["format"] in PACKAGE_FORMATS and _package_boundaries(path) == 1:
        return Target(_package_action(method), _reference("project", match["ref"]), Protocol.PACKAGES)
    match = _GROUP_PACKAGES.match(path)
    if match and match["format"] in PACKAGE_FORMATS and _package_boundaries(path) == 1:
        # Group-level package endpoints accept only the token's own group, not its subgroups.
        resource = _reference("group", match["ref"])
        return Target(_package_action(method), resource, Protocol.PACKAGES, exact_group_only=True)
    match = _INSTANCE_PACKAGES.match(path)
    if match and match["format"] in PACKAGE_FORMATS:
        # Instance-level package routes name no project; the decision denies them (resource not found).
        return Target(_package_action(method), None, Protocol.PACKAGES)
    return NOT_A_DEPLOY_TOKEN_ROUTE


def _git_action(rest: str, path: str, args: str, method: str) -> Action:
    # Push is the one write Git has, and it always names git-receive-pack; in whatever spelling it appears,
    # the request is a write.
    if "git-receive-pack" in path.lower() or "git-receive-pack" in unquote(args).lower():
        return Action.GIT_WRITE
    if rest == "/info/refs":
        # Only what git sends for a clone or fetch is a read: GET (or HEAD) asking for git-upload-pack, or
        # for nothing (the dumb protocol). Any other method or service is treated as a write.
        services = parse_qs(args, keep_blank_values=True).get("service", [])
        reading = method in _READ_METHODS and services in ([], ["git-upload-pack"])
        return Action.GIT_READ if reading else Action.GIT_WRITE
    if rest == "/git-upload-pack":
        return Action.GIT_READ if method == "POST" else Action.GIT_WRITE
    if method in _READ_METHODS:
        return Action.GIT_READ  # dumb-protocol objects, HEAD, LFS object downloads
    # Any other write-shaped request (LFS batch and uploads, locks): without the body, which nginx does not
    # send, a download cannot be told from an upload, so it is refused.
    return Action.GIT_WRITE


def _map_git(path: str, args: str, method: str) -> Target | None:
    first = path.find(_GIT_SUFFIX)
    if first != -1:
        # The first ".git/" ends the project path (no namespace may end in .git); a second one would let a
        # backend that reads up to the last one serve another repository than the one checked.
        if first <= 1 or path.find(_GIT_SUFFIX, first + 1) != -1:
            return None
        project, rest = path[1:first], path[first + len(_GIT_SUFFIX) - 1 :]
    else:
        match = _GIT_BARE.fullmatch(path)
        if match is None:
            return None
        project, rest = match["project"], match["rest"]
    return Target(_git_action(rest, path, args, method), Resource("project", path=project), Protocol.GIT)


def _is_api(path: str) -> bool:
    # Case-insensitively: a location matched with ``~*`` routes "/API/…" to the API as well; such a URL then
    # matches no (case-sensitive) package route and is refused, rather than read as a project path.
    head = path[:5].lower()
    return head == "/api/" or head == "/api"


def _map_original_request(uri: str | None, method: str | None) -> Target:
    if not uri:
        return NOT_A_DEPLOY_TOKEN_ROUTE
    canonical = canonical_uri(uri)
    if canonical is None:  # nginx would have answered 400 itself
        return NOT_A_DEPLOY_TOKEN_ROUTE
    verb = (method or "").strip().upper()
    path, args = canonical
    if _is_api(path):
        return _map_api(path, verb)
    return _map_git(path, args, verb) or NOT_A_DEPLOY_TOKEN_ROUTE


_CACHED_URI_LENGTH: Final = 512
_map_cached: Final = lru_cache(maxsize=4096)(_map_original_request)


def map_original_request(uri: str | None, method: str | None) -> Target:
    """Map nginx's ``X-Original-URI`` (``$request_uri``) and ``X-Original-Method`` to what is asked.

    Pure, so memoised: clients repeat the same few URIs (``info/refs``, ``git-upload-pack``, index pages),
    and the cache makes the mapping a dict lookup on the hot path. Only the mapping is cached, never a
    decision; long URIs bypass the cache so that its memory stays bounded (4096 x 512 characters).
    """
    if uri is not None and len(uri) <= _CACHED_URI_LENGTH:
        return _map_cached(uri, method)
    return _map_original_request(uri, method)
