"""The Docker registry's token server: ``GET``/``POST /jwt/auth`` and ``GET /jwt/certificate``.

``/jwt/auth`` is the distribution token server for ``container_registry`` (behaviour [registry]) and
``dependency_proxy``: it
logs the client in with Basic ``username:token`` (or the OAuth2 password grant's form), then grants, per
requested scope, only the actions that are allowed, in a JWT signed with a key derived from the server
secret (``api.registry_token``). ``/jwt/certificate`` is the PEM for the registry's ``rootcertbundle``. The
issuer and the token's lifetime are ``Settings.registry_issuer`` and ``Settings.registry_token_ttl``.

A stale credential index answers 503 with ``Retry-After``: Docker clients call this endpoint directly, with
no nginx in between to misread it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import lru_cache
from time import perf_counter
from typing import Any, Final

import marshmallow
from flask import Flask, Response, jsonify, request
from marshmallow import Schema, fields, validate

from api.auth_checks.common import (
    AUTH_CHALLENGE,
    Credentials,
    auth_checks,
    current_flask_app,
    decide,
    first_decision,
    parse_authorization,
    presented_credentials,
    status_for,
    wiring_of,
)
from api.auth_checks.record import Observed, record_decisions
from api.openapi import operation
from api.registry_token import (
    InvalidScope,
    RegistrySigningKey,
    RequestedScope,
    derive_signing_key,
    issue_token,
    parse_scopes,
    registry_error,
)
from infrastructure.keys import Keyring
from infrastructure.settings import Settings
from projections.access import Action
from projections.credential_index import CredentialIndex, Resource, StaleIndex

__all__ = [
    "CONTAINER_REGISTRY",
    "DEPENDENCY_PROXY",
    "dependency_proxy_group",
    "jwt_auth",
    "jwt_certificate",
    "longest_existing_prefix",
    "registry_action",
    "registry_certificate_pem",
    "registry_signing_key",
]

CONTAINER_REGISTRY: Final = "container_registry"
DEPENDENCY_PROXY: Final = "dependency_proxy"
_SERVICES: Final = frozenset({CONTAINER_REGISTRY, DEPENDENCY_PROXY})


# The signing key ---------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _signing_key(seed: bytes) -> RegistrySigningKey:
    return derive_signing_key(seed)


def registry_signing_key(keys: Keyring) -> RegistrySigningKey:
    """Derived from ``Keyring.registry_seed`` once per process; every process derives the same key."""
    return _signing_key(keys.registry_seed)


def registry_certificate_pem(settings: Settings) -> bytes:
    """The ``rootcertbundle`` PEM, from the settings alone (no database): what a CLI command can print."""
    return registry_signing_key(Keyring(settings.secret_key)).certificate_pem()


# Mapping registry scopes (pure) ------------------------------------------------------------------------


def longest_existing_prefix(name: str, exists: Callable[[str], bool]) -> str | None:
    """The longest ``/``-separated prefix of a repository name that ``exists`` (a project or group path).

    ``group/project/app/web`` is the image ``app/web`` of project ``group/project`` when that project
    exists, or of ``group/project/app`` when that one does.
    """
    parts = name.split("/")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end])
        if exists(candidate):
            return candidate
    return None


_PROXY_MARKER: Final = "/dependency_proxy/containers/"


def dependency_proxy_group(name: str, exists: Callable[[str], bool]) -> str | None:
    """The group a dependency-proxy image name belongs to: ``<group>/dependency_proxy/containers/<image>``."""
    head, marker, _ = name.partition(_PROXY_MARKER)
    if marker:
        return head if exists(head) else None
    return longest_existing_prefix(name, exists)


_REGISTRY_ACTIONS: Final[dict[str, dict[str, Action]]] = {
    CONTAINER_REGISTRY: {
        "pull": Action.REGISTRY_PULL,
        "push": Action.REGISTRY_PUSH,
        "delete": Action.REGISTRY_DELETE,
        "*": Action.REGISTRY_DELETE,  # "*" includes delete: never granted to a deploy token (behaviour [registry])
    },
    DEPENDENCY_PROXY: {
        "pull": Action.DEPENDENCY_PROXY_READ,
        "push": Action.DEPENDENCY_PROXY_WRITE,
        "delete": Action.REGISTRY_DELETE,
        "*": Action.REGISTRY_DELETE,
    },
}


def registry_action(service: str, requested: str) -> Action | None:
    """The decision a requested registry action needs; ``None`` for actions that are simply dropped."""
    return _REGISTRY_ACTIONS.get(service, {}).get(requested)


def _scope_resource(index: CredentialIndex, service: str, name: str) -> Resource:
    """The project (registry) or group (dependency proxy) a repository name belongs to, by its canonical
    spelling only: the registry compares names exactly, so ``ACME/web`` is another repository than
    ``acme/web`` and a grant for it would reach outside the project's own images."""
    kind = "project" if service == CONTAINER_REGISTRY else "group"

    def exists(path: str) -> bool:
        return index.resolve(Resource(kind, path=path, exact_path=True)) is not None

    if service == CONTAINER_REGISTRY:
        owner = longest_existing_prefix(name, exists)
    else:
        owner = dependency_proxy_group(name, exists)
    return Resource(kind, path=owner or name, exact_path=True)


def _token_group(index: CredentialIndex, credentials: Credentials, now: datetime) -> Resource | None:
    """The dependency proxy's login target: the group a group token belongs to."""
    if not credentials.value:
        return None
    index.ensure_fresh()
    token = index.lookup(credentials.value, now)
    if token is None or token.holder_kind != "group":
        return None
    return Resource("group", id=token.holder_id)


def _grant(
    index: CredentialIndex,
    credentials: Credentials,
    service: str,
    scope: RequestedScope,
    now: datetime,
    observed: list[Observed],
) -> dict[str, object] | None:
    """The access entry for one requested scope: only the actions that are allowed (others are dropped)."""
    if scope.type != "repository":  # registry:catalog:* and plugin types are never for deploy tokens
        return None
    resource = _scope_resource(index, service, scope.name)
    granted: list[str] = []
    for requested in scope.actions:
        action = registry_action(service, requested)
        if action is None:
            continue
        decision = decide(index, credentials, action, resource, now, check_username=True)
        observed.append((action, resource, decision))
        if decision.allowed:
            granted.append(requested)
    if not granted:
        return None
    return {"type": scope.type, "name": scope.name, "actions": granted}


# The token server --------------------------------------------------------------------------------------


class RegistryTokenQuerySchema(Schema):
    """``GET /jwt/auth``: the distribution token-auth parameters (credentials come in Basic auth)."""

    service = fields.String(load_default=None)
    scope = fields.List(fields.String(), load_default=list)
    account = fields.String(load_default=None)  # informational: the Basic username is what counts
    client_id = fields.String(load_default=None)
    offline_token = fields.String(load_default=None)


class RegistryTokenFormSchema(RegistryTokenQuerySchema):
    """``POST /jwt/auth``: the OAuth2 password grant that containerd-style clients send."""

    grant_type = fields.String(
        required=True, validate=validate.OneOf(["password"], error="must be password (no refresh tokens)")
    )
    username = fields.String(load_default=None)
    password = fields.String(load_default=None)
    access_type = fields.String(load_default=None)


def _multi_dict(source: Any) -> dict[str, Any]:
    """Repeated ``scope`` parameters as a list; every other parameter as its first value."""
    return {
        key: values if key == "scope" else values[0] for key, values in source.to_dict(flat=False).items()
    }


def _registry_response(status: int, body: Mapping[str, object], *, challenge: bool = False) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if challenge:
        response.headers["WWW-Authenticate"] = AUTH_CHALLENGE
    return response


def _message(error: marshmallow.ValidationError) -> str:
    messages = error.messages if isinstance(error.messages, dict) else {"request": error.messages}
    parts = []
    for field, problems in messages.items():
        for problem in problems if isinstance(problems, list) else [problems]:
            parts.append(f"{field} {problem}")
    return ", ".join(parts)


@auth_checks.route("/jwt/auth", methods=["GET", "POST"])
@operation(
    "Docker registry token server (container_registry, dependency_proxy)",
    tag="auth_checks",
    query=RegistryTokenQuerySchema,
    auth="deploy_token",
    errors=(400, 401, 403, 404, 503),
)
def jwt_auth() -> Response:
    started = perf_counter()
    app = current_flask_app()
    try:
        return _jwt_auth(app)
    finally:
        wiring_of(app).metrics.auth_duration.observe(perf_counter() - started, "jwt")


def _jwt_auth(app: Flask) -> Response:
    wiring = wiring_of(app)
    runtime = wiring.runtime
    authorization = parse_authorization(request.headers.get("Authorization"))
    try:
        if request.method == "POST":
            params = RegistryTokenFormSchema().load(_multi_dict(request.form), unknown=marshmallow.EXCLUDE)
        else:
            params = RegistryTokenQuerySchema().load(_multi_dict(request.args), unknown=marshmallow.EXCLUDE)
    except marshmallow.ValidationError as error:
        return _registry_response(400, registry_error("INVALID_REQUEST", _message(error)))
    service = params["service"]
    if service not in _SERVICES:
        return _registry_response(
            404, registry_error("UNSUPPORTED", f"unknown service {str(service)[:64]!r}")
        )
    try:
        scopes = parse_scopes(params["scope"])
    except InvalidScope as error:
        return _registry_response(400, registry_error("INVALID_REQUEST", str(error)))

    if params.get("password"):  # the OAuth2 form carries the credentials itself
        credentials = Credentials(params.get("username"), params["password"])
    else:
        credentials = presented_credentials(authorization, None, basic_only=True)

    index = runtime.index
    # Docker clients call the token server directly: no proxy in front, so only the peer says who they are.
    environ = request.environ
    client = wiring.addresses.peer(environ)
    now = runtime.clock.now()
    observed: list[Observed] = []
    access: list[dict[str, object]] = []
    login_action = Action.REGISTRY_LOGIN if service == CONTAINER_REGISTRY else Action.DEPENDENCY_PROXY_READ
    login_resource: Resource | None = None
    try:
        # Login first: bad credentials are a 401; a token with no registry ability (or, for the dependency
        # proxy, not a group token with the proxy scopes) is a 403 even if it asked for nothing.
        if service == DEPENDENCY_PROXY:
            login_resource = _token_group(index, credentials, now)
        login = first_decision(
            runtime, client, credentials, login_action, login_resource, now, check_username=True
        )
        observed.append((login_action, login_resource, login))
        if login.allowed:
            for scope in scopes:
                entry = _grant(index, credentials, service, scope, now, observed)
                if entry is not None:
                    access.append(entry)
    except StaleIndex:
        observed.append((login_action, login_resource, None))
        record_decisions(app, wiring, environ, "jwt", observed, 503, credentials, client, now)
        response = _registry_response(
            503, registry_error("UNAVAILABLE", "credential data is not current; try again")
        )
        response.headers["Retry-After"] = "1"
        return response

    if not login.allowed:
        status = status_for(login)
        record_decisions(app, wiring, environ, "jwt", observed, status, credentials, client, now)
        if status == 401:
            return _registry_response(
                401, registry_error("UNAUTHORIZED", "HTTP Basic: Access denied"), challenge=True
            )
        return _registry_response(403, registry_error("DENIED", "access forbidden"))

    record_decisions(app, wiring, environ, "jwt", observed, 200, credentials, client, now)
    username = login.username or ""
    body = issue_token(
        registry_signing_key(runtime.keys),
        issuer=runtime.settings.registry_issuer,
        audience=service,
        subject=username,
        access=access,
        now=now,
        ttl_seconds=runtime.settings.registry_token_ttl,
        extra_claims={
            "auth_type": "deploy_token",
            "user": {"token_type": "deploy_token", "username": username, "deploy_token_id": login.token_id},
        },
    )
    return _registry_response(200, body)


@auth_checks.get("/jwt/certificate")
@operation(
    "The PEM certificate of the registry token signer (the registry's rootcertbundle)",
    tag="auth_checks",
    auth="none",
    errors=(),
)
def jwt_certificate() -> Response:
    pem = registry_signing_key(wiring_of(current_flask_app()).runtime.keys).certificate_pem()
    return Response(pem, status=200, mimetype="application/x-pem-file")
