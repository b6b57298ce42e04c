"""The auth decision: a pure function over credential-lookup data. No I/O, no clock, no globals.

Given the token a secret resolved to (or none), the resource asked for and the action, it answers allow, or
deny with a machine-readable reason. The rules are those of docs/behaviour.md: [reach] (project vs group
and subgroups), [expiry], [external-authorization], [scopes], [git], [registry], [dependency-proxy],
[packages] and [api-routes] (every scope against every action), revoked and deleted tokens, disabled features,
and username matching where the protocol requires it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from domain.scopes import (
    READ_PACKAGE_REGISTRY,
    READ_REGISTRY,
    READ_REPOSITORY,
    READ_VIRTUAL_REGISTRY,
    WRITE_PACKAGE_REGISTRY,
    WRITE_REGISTRY,
    WRITE_VIRTUAL_REGISTRY,
)
from projections.credentials import NamespaceRecord, ProjectRecord


class TokenFacts(Protocol):
    """What a decision reads of a token: a ``TokenRecord`` of the read model, or the credential index's
    compact records (``projections.compact_tokens``)."""

    @property
    def token_id(self) -> int: ...
    @property
    def username(self) -> str | None: ...
    @property
    def holder_kind(self) -> str: ...
    @property
    def holder_id(self) -> int: ...
    @property
    def scope_set(self) -> frozenset[str]: ...
    @property
    def revoked(self) -> bool: ...
    @property
    def deleted(self) -> bool: ...
    def is_expired(self, now: datetime) -> bool: ...


class Action(StrEnum):
    GIT_READ = "git_read"  # clone, fetch (behaviour [git])
    GIT_WRITE = "git_write"  # push: never (no repository write scope)
    REGISTRY_LOGIN = "registry_login"  # token exchange with no scope asked
    REGISTRY_PULL = "registry_pull"
    REGISTRY_PUSH = "registry_push"
    REGISTRY_DELETE = "registry_delete"  # never granted to a deploy token (behaviour [registry])
    PACKAGE_READ = "package_read"
    PACKAGE_WRITE = "package_write"
    DEPENDENCY_PROXY_READ = "dependency_proxy_read"
    DEPENDENCY_PROXY_WRITE = "dependency_proxy_write"
    API = "api"  # any other API route: deploy tokens are never accepted (behaviour [api-routes])


class Reason(StrEnum):
    ALLOWED = "allowed"
    NO_CREDENTIALS = "no_credentials"
    MALFORMED_TOKEN = "malformed_token"
    UNKNOWN_TOKEN = "unknown_token"
    USERNAME_MISMATCH = "username_mismatch"
    REVOKED = "revoked"
    DELETED = "deleted"
    EXPIRED = "expired"
    ROTATED_OUT = "rotated_out"
    RESOURCE_NOT_FOUND = "resource_not_found"
    OUTSIDE_SCOPE = "outside_token_namespace"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    NEVER_GRANTED = "never_granted"
    EXTERNAL_AUTHORIZATION = "external_authorization"
    REPOSITORY_DISABLED = "repository_disabled"
    REGISTRY_DISABLED = "registry_disabled"
    DEPENDENCY_PROXY_DISABLED = "dependency_proxy_disabled"
    GROUP_TOKEN_REQUIRED = "group_token_required"
    API_NOT_ALLOWED = "deploy_tokens_not_accepted_here"
    # Never returned by ``decide``: the endpoints refuse a banned address before any decision.
    IP_BANNED = "ip_banned"


_ALLOWED = Reason.ALLOWED  # bound once: see decide()


class Decision(NamedTuple):
    """Immutable; a named tuple because one is built on every auth check (cheaper than a frozen dataclass)."""

    allowed: bool
    reason: Reason
    token_id: int | None = None
    username: str | None = None

    @classmethod
    def deny(cls, reason: Reason, token: TokenFacts | None = None) -> Decision:
        return cls(False, reason, token.token_id if token else None, token.username if token else None)

    @classmethod
    def allow(cls, token: TokenFacts) -> Decision:
        # tuple.__new__ directly: the generated __new__ of a named tuple is a Python call, and every allowed
        # check builds one
        return tuple.__new__(cls, (True, _ALLOWED, token.token_id, token.username))


class AuthRequest(NamedTuple):
    action: Action
    username: str | None
    # Git and the registry log in with username and token, and the username must match; most package
    # endpoints ignore the username (behaviour [git], [packages]).
    check_username: bool
    # A group-level package endpoint accepts only the token's exact group, never a subgroup (behaviour [reach]).
    exact_group_only: bool = False


_GIT_AND_PACKAGES = frozenset({Action.GIT_READ, Action.GIT_WRITE, Action.PACKAGE_READ, Action.PACKAGE_WRITE})
_REGISTRY = frozenset(
    {Action.REGISTRY_LOGIN, Action.REGISTRY_PULL, Action.REGISTRY_PUSH, Action.REGISTRY_DELETE}
)
_PROXY = frozenset({Action.DEPENDENCY_PROXY_READ, Action.DEPENDENCY_PROXY_WRITE})

# The scopes each action needs, all of them. Actions absent here are never granted.
REQUIRED_SCOPES: dict[Action, frozenset[str]] = {
    Action.GIT_READ: frozenset({READ_REPOSITORY}),
    Action.REGISTRY_PULL: frozenset({READ_REGISTRY}),
    Action.REGISTRY_PUSH: frozenset({READ_REGISTRY, WRITE_REGISTRY}),  # behaviour [registry]: push needs both
    Action.PACKAGE_READ: frozenset({READ_PACKAGE_REGISTRY}),  # behaviour [packages]
    Action.PACKAGE_WRITE: frozenset({WRITE_PACKAGE_REGISTRY}),
}
_NEVER = frozenset({Action.GIT_WRITE, Action.REGISTRY_DELETE, Action.API})


def _has_registry_ability(scopes: frozenset[str]) -> bool:
    return bool(scopes & {READ_REGISTRY, WRITE_REGISTRY})


def _proxy_scopes_ok(scopes: frozenset[str]) -> bool:
    """Pulling through the dependency proxy needs both registry scopes, or both virtual-registry scopes."""
    return {READ_REGISTRY, WRITE_REGISTRY} <= scopes or {
        READ_VIRTUAL_REGISTRY,
        WRITE_VIRTUAL_REGISTRY,
    } <= scopes


def token_reaches_project(token: TokenFacts, project: ProjectRecord) -> bool:
    """behaviour [reach]: a project token reaches its project; a group token every project of its group and
    subgroups."""
    if token.holder_kind == "project":
        return token.holder_id == project.project_id
    return token.holder_id in project.group_ids


def token_reaches_group(token: TokenFacts, group: NamespaceRecord, *, exact: bool) -> bool:
    if token.holder_kind != "group" or group.kind != "group":
        return False
    if token.holder_id == group.namespace_id:
        return True
    return not exact and token.holder_id in group.ancestor_ids


# Members used by ``decide``, bound once: on Python 3.11 reading ``Action.X`` off the enum class costs ten
# times a global, and ``decide`` runs on every auth check.
_API = Action.API
_GIT_READ = Action.GIT_READ
_REGISTRY_LOGIN = Action.REGISTRY_LOGIN
_PACKAGE = frozenset({Action.PACKAGE_READ, Action.PACKAGE_WRITE})


def decide(
    request: AuthRequest,
    token: TokenFacts | None,
    target: ProjectRecord | NamespaceRecord | None,
    *,
    external_authorization: bool,
    now: datetime,
) -> Decision:
    """Allow, or deny with the first reason that applies (checked from the credential outwards)."""
    if token is None:
        return Decision.deny(Reason.UNKNOWN_TOKEN)
    action = request.action
    if action is _API:
        return Decision.deny(Reason.API_NOT_ALLOWED, token)
    if token.deleted:
        return Decision.deny(Reason.DELETED, token)
    if token.revoked:
        return Decision.deny(Reason.REVOKED, token)
    if token.is_expired(now):  # behaviour [expiry]: expired iff now >= expires_at
        return Decision.deny(Reason.EXPIRED, token)
    if request.check_username and request.username != token.username:
        return Decision.deny(Reason.USERNAME_MISMATCH, token)
    if external_authorization and action in _GIT_AND_PACKAGES:  # behaviour [external-authorization]
        return Decision.deny(Reason.EXTERNAL_AUTHORIZATION, token)
    scopes = token.scope_set
    if action is _REGISTRY_LOGIN:  # login needs a registry ability, no resource
        if _has_registry_ability(scopes):
            return Decision.allow(token)
        return Decision.deny(Reason.INSUFFICIENT_SCOPE, token)
    if action in _PROXY:
        return _decide_proxy(token, scopes, target)
    if action in _NEVER:
        return Decision.deny(Reason.NEVER_GRANTED, token)
    if target is None:
        return Decision.deny(Reason.RESOURCE_NOT_FOUND, token)
    if isinstance(target, ProjectRecord):
        if not token_reaches_project(token, target):
            return Decision.deny(Reason.OUTSIDE_SCOPE, token)
        if action is _GIT_READ and not target.repository_enabled:
            return Decision.deny(Reason.REPOSITORY_DISABLED, token)
        if action in _REGISTRY and not target.container_registry_enabled:
            return Decision.deny(Reason.REGISTRY_DISABLED, token)
    elif action in _PACKAGE:
        if not token_reaches_group(token, target, exact=request.exact_group_only):
            return Decision.deny(Reason.OUTSIDE_SCOPE, token)
    else:  # git and the container registry address projects only
        return Decision.deny(Reason.RESOURCE_NOT_FOUND, token)
    if not REQUIRED_SCOPES[action] <= scopes:
        return Decision.deny(Reason.INSUFFICIENT_SCOPE, token)
    # Where the username was compared it is the token's: the request's copy saves deriving a default username
    # twice (the index derives it from the id, projections/compact_tokens.py).
    username = request.username if request.check_username else token.username
    return tuple.__new__(Decision, (True, _ALLOWED, token.token_id, username))


def _decide_proxy(
    token: TokenFacts, scopes: frozenset[str], target: ProjectRecord | NamespaceRecord | None
) -> Decision:
    """The dependency proxy: active group tokens only, for their group and its subgroups, while enabled."""
    if token.holder_kind != "group":
        return Decision.deny(Reason.GROUP_TOKEN_REQUIRED, token)
    if not isinstance(target, NamespaceRecord) or target.kind != "group":
        return Decision.deny(Reason.RESOURCE_NOT_FOUND, token)
    if not token_reaches_group(token, target, exact=False):
        return Decision.deny(Reason.OUTSIDE_SCOPE, token)
    if not target.dependency_proxy_enabled:
        return Decision.deny(Reason.DEPENDENCY_PROXY_DISABLED, token)
    if not _proxy_scopes_ok(scopes):
        return Decision.deny(Reason.INSUFFICIENT_SCOPE, token)
    return Decision.allow(token)
