"""Who is calling the management API: a personal access token, never a deploy token (behaviour [api-routes])."""

from __future__ import annotations

from flask import g, request

from api.context import runtime
from deploy_tokens.access import Principal
from domain.errors import NotFound, PermissionDenied, Unauthenticated


def client_address() -> str | None:
    return request.remote_addr


def _presented_token() -> str | None:
    token = request.headers.get("PRIVATE-TOKEN")
    if token:
        return token.strip()
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    # GitLab also reads ``?private_token=``; not here: a secret in a URL ends up in access logs and proxies.
    return None


def optional_principal() -> Principal | None:
    """The caller, or None when no credential was sent. A bad credential is always a 401."""
    if "principal" in g:
        cached: Principal | None = g.principal
        return cached
    value = _presented_token()
    principal = None if value is None else runtime().access.authenticate(value, address=client_address())
    g.principal = principal
    return principal


def require_principal(*, anonymous: str = "401", writes: bool = False) -> Principal:
    """GitLab hides private projects from anonymous callers (404) and refuses groups (403)."""
    principal = optional_principal()
    if principal is None:
        if anonymous == "404":
            raise NotFound("404 Project")
        if anonymous == "403":
            raise PermissionDenied("403 Forbidden")
        raise Unauthenticated("401 Unauthorized")
    if writes:
        principal.require_write()  # the api scope, and no auditor (behaviour [auditors])
    return principal


def require_admin(*, writes: bool = False) -> Principal:
    """An authenticated caller whom the access rules count as an administrator."""
    principal = require_principal(writes=writes)
    runtime().access.require_admin(principal.actor)
    return principal
