"""Auth checks for resource servers (SPEC §9, §9.1): nginx ``auth_request``, the registry token server, JSON.

* ``/internal/auth_request`` (any method; nginx may forward the original one): Git over HTTP (R10) and
  package registries (R12, R13), for nginx's ``auth_request``. It reads ``Authorization`` (Basic or
  Bearer), ``Deploy-Token``, ``X-Original-URI``, ``X-Original-Method`` and ``X-Original-Remote-Addr``, and
  answers only what nginx understands: **200** (``X-Auth-User``, ``X-Deploy-Token-Id``), **401** with
  ``WWW-Authenticate: Basic realm="deploy-tokens"`` (no or bad credentials: missing, malformed, unknown,
  revoked, deleted, expired, wrong username; also any route that never accepts deploy tokens, R13, as
  GitLab's API ignores the token there) or **403** (a valid token that may not do this: scope, namespace,
  external authorization, push, a disabled feature, an unrecognised resource).
* ``GET``/``POST /jwt/auth``: the distribution token server for ``container_registry`` (R11) and
  ``dependency_proxy``; ``GET /jwt/certificate``: the PEM for the registry's ``rootcertbundle``.
* ``POST /internal/auth/check``: one decision as JSON, for any other resource server.

**Fail closed when the credential index is stale.** ``StaleIndex`` means "cannot vouch for current data":
never an allow. nginx turns every sub-request status other than 2xx/401/403 into a 500, so a 503 here would
reach clients as a 500. A 401 is worse: git answers it by telling the credential helper to *erase* the
stored deploy token, and pip and twine prompt for a password. So ``/internal/auth_request`` answers
**403 with** ``Retry-After: 1`` **and** ``X-Auth-Error: unavailable`` (a header no other answer carries).
nginx can turn that into a real, retryable 503 (pip, npm and Maven retry a 503; git reports it without
touching its credentials)::

    location ~ ^/.+\\.git/ {
        auth_request /_auth;
        auth_request_set $auth_error $upstream_http_x_auth_error;
        error_page 403 = @auth_denied;
        ...
    }
    location @auth_denied {
        if ($auth_error = "unavailable") { add_header Retry-After 1 always; return 503; }
        return 403;
    }

Without that recipe clients see a plain 403, which is still closed. ``/jwt/auth`` and
``/internal/auth/check`` are not behind ``auth_request``: they answer 503 with ``Retry-After``.

Views stay thin: the URL and scope mapping below are pure functions (unit-tested on their own), every
decision is ``runtime.index.check(...)`` (``projections.access.decide`` over the in-memory index), and each
one is counted (``api.metrics``) and recorded (``api.activity``) without touching the database.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from time import perf_counter
from typing import Any, Final, NamedTuple

import marshmallow
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from marshmallow import Schema, fields, validate, validates_schema
from werkzeug.routing import Rule

from api.activity import activity_of
from api.client_address import ClientAddresses, normalise_address
from api.context import runtime_of
from api.metrics import Metrics, metrics_of
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
from api.request_mapping import Protocol, map_original_request, resource_from_reference
from deploy_tokens.runtime import Runtime
from domain.text import has_unstorable_characters
from infrastructure.activity import ACTIVITY_TEXT_LIMIT, TOKEN_REF_LENGTH, ActivityEvent
from infrastructure.keys import Keyring
from infrastructure.settings import ConfigurationError, Settings
from projections.access import Action, Decision, Reason
from projections.credential_index import CredentialIndex, Resource, StaleIndex

__all__ = [
    "AUTH_CHALLENGE",
    "BAD_CREDENTIALS",
    "CONTAINER_REGISTRY",
    "DEPENDENCY_PROXY",
    "FAILED_CREDENTIALS",
    "AuthRequestAnswer",
    "AuthorizationHeader",
    "Credentials",
    "auth_checks",
    "dependency_proxy_group",
    "longest_existing_prefix",
    "parse_authorization",
    "presented_credentials",
    "registry_action",
    "registry_certificate_pem",
    "registry_issuer",
    "registry_signing_key",
    "registry_token_ttl",
    "status_for",
]

auth_checks = Blueprint("auth_checks", __name__)

AUTH_CHALLENGE: Final = 'Basic realm="deploy-tokens"'
CONTAINER_REGISTRY: Final = "container_registry"
DEPENDENCY_PROXY: Final = "dependency_proxy"
_SERVICES: Final = frozenset({CONTAINER_REGISTRY, DEPENDENCY_PROXY})

# Settings of this module, read from the environment once per application (see _configure).
REGISTRY_ISSUER_ENV: Final = "DEPLOY_TOKENS_REGISTRY_ISSUER"
REGISTRY_TOKEN_TTL_ENV: Final = "DEPLOY_TOKENS_REGISTRY_TOKEN_TTL"
DEFAULT_REGISTRY_ISSUER: Final = "deploy-token-service"
DEFAULT_REGISTRY_TOKEN_TTL: Final = 300  # GitLab's container_registry_token_expire_delay: 5 minutes

# Reasons that mean "these are not valid credentials": 401, so the client may (re)send some. Routes that never
# take deploy tokens (R13) are here too: GitLab's API ignores the token there, which reads as 401.
BAD_CREDENTIALS: Final = frozenset(
    {
        Reason.NO_CREDENTIALS,
        Reason.MALFORMED_TOKEN,
        Reason.UNKNOWN_TOKEN,
        Reason.USERNAME_MISMATCH,
        Reason.REVOKED,
        Reason.DELETED,
        Reason.EXPIRED,
        Reason.ROTATED_OUT,
        Reason.API_NOT_ALLOWED,
    }
)

# Bad credentials that count towards a ban of the client's address: a guess that failed. Not a missing one
# (git's first request never carries any) and not a valid token on a route that never takes one.
FAILED_CREDENTIALS: Final = BAD_CREDENTIALS - {Reason.NO_CREDENTIALS, Reason.API_NOT_ALLOWED}
_BANNED: Final = Decision.deny(Reason.IP_BANNED)


# Settings ----------------------------------------------------------------------------------------------


def registry_issuer(environ: Mapping[str, str] | None = None) -> str:
    """``DEPLOY_TOKENS_REGISTRY_ISSUER``: the JWT ``iss``; the registry's ``auth.token.issuer`` must match."""
    env = os.environ if environ is None else environ
    return (env.get(REGISTRY_ISSUER_ENV) or "").strip() or DEFAULT_REGISTRY_ISSUER


def registry_token_ttl(environ: Mapping[str, str] | None = None) -> int:
    """``DEPLOY_TOKENS_REGISTRY_TOKEN_TTL``: seconds a registry token is valid (default 300, 60..86400)."""
    env = os.environ if environ is None else environ
    raw = (env.get(REGISTRY_TOKEN_TTL_ENV) or "").strip()
    if not raw:
        return DEFAULT_REGISTRY_TOKEN_TTL
    if not raw.isascii() or not raw.isdigit() or not 60 <= int(raw) <= 86400:
        raise ConfigurationError(f"{REGISTRY_TOKEN_TTL_ENV} must be a whole number of seconds, 60 to 86400")
    return int(raw)


@auth_checks.record_once
def _configure(state: BlueprintSetupState) -> None:
    """Read the settings when the blueprint is registered: a bad value fails at start-up, not per request."""
    state.app.config.setdefault(REGISTRY_ISSUER_ENV, registry_issuer())
    state.app.config.setdefault(REGISTRY_TOKEN_TTL_ENV, registry_token_ttl())
    runtime = runtime_of(state.app)
    state.app.extensions[_CLIENT_ADDRESSES] = ClientAddresses(runtime.settings.trusted_proxies)


_CLIENT_ADDRESSES: Final = "deploy_tokens.client_addresses"


def _client_addresses(app: Flask) -> ClientAddresses:
    found = app.extensions[_CLIENT_ADDRESSES]
    assert isinstance(found, ClientAddresses)
    return found


# The registry signing key --------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _signing_key(seed: bytes) -> RegistrySigningKey:
    return derive_signing_key(seed)


def registry_signing_key(keys: Keyring) -> RegistrySigningKey:
    """Derived from ``Keyring.registry_seed`` once per process; every process derives the same key."""
    return _signing_key(keys.registry_seed)


def registry_certificate_pem(settings: Settings) -> bytes:
    """The ``rootcertbundle`` PEM, from the settings alone (no database): what a CLI command can print."""
    return registry_signing_key(Keyring(settings.secret_key)).certificate_pem()


# Credentials (pure) ------------------------------------------------------------------------------------


class AuthorizationHeader(NamedTuple):
    """An ``Authorization`` header taken apart: ``scheme`` is ``basic``, ``bearer`` or ``""`` (absent/other).

    (Named tuples rather than frozen dataclasses on the hot path: a third of the construction cost.)
    """

    scheme: str = ""
    username: str | None = None
    secret: str | None = None
    malformed: bool = False


_NO_AUTHORIZATION: Final = AuthorizationHeader()


def parse_authorization(header: str | None) -> AuthorizationHeader:
    if not header:
        return _NO_AUTHORIZATION
    scheme, _, rest = header.strip().partition(" ")
    scheme = scheme.lower()
    rest = rest.strip()
    if scheme == "basic":
        try:
            # strict_mode: the C decoder's own validation (base64.b64decode(validate=True) runs a regex first)
            decoded = binascii.a2b_base64(rest.encode("ascii"), strict_mode=True).decode("utf-8")
        except (binascii.Error, UnicodeError, ValueError):
            return AuthorizationHeader("basic", malformed=True)
        username, colon, password = decoded.partition(":")
        if not colon:
            return AuthorizationHeader("basic", malformed=True)
        return AuthorizationHeader("basic", username, password)
    if scheme == "bearer":
        return AuthorizationHeader("bearer", secret=rest or None)
    return _NO_AUTHORIZATION


class Credentials(NamedTuple):
    """What the client presented: a username (when the protocol has one) and a token value."""

    username: str | None = None
    value: str | None = None
    malformed: bool = False


def presented_credentials(
    authorization: AuthorizationHeader, deploy_token: str | None, *, basic_only: bool
) -> Credentials:
    """Git and the registry log in with Basic ``username:token`` only (gitlab-behaviour.md §7, §8).

    Package endpoints take the token from the Basic password (which wins), else ``Deploy-Token``, else
    ``Authorization: Bearer``, and ignore the Basic username (§10).
    """
    if basic_only:
        if authorization.scheme != "basic":
            return Credentials()
        if authorization.malformed:
            return Credentials(malformed=True)
        return Credentials(authorization.username, authorization.secret or None)
    if authorization.scheme == "basic" and authorization.secret:
        return Credentials(None, authorization.secret)
    token = (deploy_token or "").strip()
    if token:
        return Credentials(None, token)
    if authorization.scheme == "bearer" and authorization.secret:
        return Credentials(None, authorization.secret)
    return Credentials(malformed=authorization.malformed)


def status_for(decision: Decision) -> int:
    """200 allowed; 401 for bad credentials (the client may send others); 403 for a valid token refused."""
    if decision.allowed:
        return 200
    return 401 if decision.reason in BAD_CREDENTIALS else 403


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
        "*": Action.REGISTRY_DELETE,  # "*" includes delete: never granted to a deploy token (R11)
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


# Deciding, counting, recording -------------------------------------------------------------------------


def _decide(
    index: CredentialIndex,
    credentials: Credentials,
    action: Action,
    resource: Resource | None,
    now: datetime,
    check_username: bool,
    exact_group_only: bool = False,
) -> Decision:
    if credentials.malformed:
        return Decision.deny(Reason.MALFORMED_TOKEN)
    return index.check(
        value=credentials.value,
        username=credentials.username,
        action=action,
        resource=resource,
        now=now,
        check_username=check_username,
        exact_group_only=exact_group_only,
    )


def _first_decision(
    runtime: Runtime,
    client: str | None,
    credentials: Credentials,
    action: Action,
    resource: Resource | None,
    now: datetime,
    check_username: bool,
    exact_group_only: bool = False,
) -> Decision:
    """A request's first (or only) decision: a banned address is refused before its credentials are looked at."""
    if runtime.bans.is_banned(client, now):
        return _BANNED
    return _decide(runtime.index, credentials, action, resource, now, check_username, exact_group_only)


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _resource_ref(resource: Resource) -> str:
    return str(resource.id) if resource.id is not None else resource.path or ""


# One decision as recorded: what was asked, of what, and the answer (None: the index was stale). A plain
# tuple: one is built per decision on the hot path.
_Observed = tuple[Action, Resource | None, Decision | None]


def _record(
    app: Flask,
    runtime: Runtime,
    environ: Mapping[str, Any],
    endpoint: str,
    observed: Sequence[_Observed],
    status: int,
    credentials: Credentials,
    client: str | None,
    now: datetime,
    metrics: Metrics,
) -> None:
    """Count every decision, queue its activity row (never the token value), and count a failed credential
    against the client's address (once per request, however many scopes it asked for).

    ``environ`` is the request's WSGI environ, read once by the view (each ``flask.request`` access goes
    through a context-local proxy). ``Action`` and ``Reason`` are ``StrEnum``s, used as the strings they are.
    """
    counter = metrics.auth_decisions
    recorder = activity_of(app)
    value = credentials.value
    # Header texts are cut here, not only in the writer, so that queued rows stay small while the database is
    # down (the queue holds 100,000 of them). The client address is already a normalised IP address.
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent is not None and len(user_agent) > ACTIVITY_TEXT_LIMIT:
        user_agent = user_agent[:ACTIVITY_TEXT_LIMIT]
    token_ref: str | None = None
    failed = False
    for action, resource, decision in observed:
        reason: str
        if decision is None:
            result, reason, token_id, allowed = "unavailable", "stale_index", None, False
        else:
            allowed, reason, token_id = decision.allowed, decision.reason, decision.token_id
            result = "allowed" if allowed else "denied"
            failed = failed or reason in FAILED_CREDENTIALS
        counter.inc(endpoint, action, result, reason)
        if recorder is None:
            continue
        if token_id is None and value and token_ref is None:
            # A value that matched no token is recorded by a prefix of its keyed digest, never as itself.
            token_ref = runtime.keys.digest(value)[:TOKEN_REF_LENGTH]
        recorder.record(
            _event(
                (
                    now,
                    token_id,
                    token_ref if token_id is None else None,
                    endpoint,
                    action,
                    None if resource is None else resource.kind,
                    _resource_ref(resource)[:ACTIVITY_TEXT_LIMIT] if resource is not None else None,
                    allowed,
                    reason,
                    status,
                    client,
                    user_agent,
                )
            )
        )
    if failed and runtime.bans.register_failure(client, now):
        metrics.auth_bans.inc(endpoint)


def _event(fields: tuple[Any, ...]) -> ActivityEvent:
    """Build the named tuple at C speed (its generated ``__new__`` is a Python function)."""
    return tuple.__new__(ActivityEvent, fields)


# nginx auth_request ------------------------------------------------------------------------------------

# nginx may proxy the sub-request with the client's method (the body is never sent), and the view decides from
# X-Original-Method alone. So every method must reach the view: Flask's automatic OPTIONS answer would be a
# 200 without credentials, and a 405 for WebDAV's PROPFIND would reach the client as nginx's 500. The methods
# listed are the documented ones; ``_any_method`` adds a rule that takes every other method.
_ANY_METHOD: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_STALE_HEADERS: Final = (("Retry-After", "1"), ("X-Auth-Error", "unavailable"))
_CHALLENGE_HEADERS: Final = (("WWW-Authenticate", AUTH_CHALLENGE),)


class AuthRequestAnswer(Response):
    """An ``auth_request`` answer: a status and headers, never a body, so no ``Content-Type`` either.

    nginx reads only the status and the ``X-`` headers of a sub-request; a ``Content-Type`` for an empty body
    would be one more header to build, validate and send on every check.
    """

    default_mimetype = None


@auth_checks.record_once
def _any_method(state: BlueprintSetupState) -> None:
    state.app.url_map.add(Rule("/internal/auth_request", endpoint="auth_checks.auth_request"))


@auth_checks.route("/internal/auth_request", methods=_ANY_METHOD, provide_automatic_options=False)
@operation(
    "nginx auth_request check for Git over HTTP and package registries (200, 401 or 403 only)",
    tag="auth_checks",
    auth="deploy_token",
    errors=(401, 403),
    error_body=False,
)
def auth_request() -> Response:
    started = perf_counter()
    app = _app()
    runtime = runtime_of(app)
    # The proxy's documented accessor: ``request.environ`` resolves the proxy through several Python calls
    # (measured 2.4 against 0.3 microseconds).
    environ = request._get_current_object().environ  # type: ignore[attr-defined]
    target = map_original_request(environ.get("HTTP_X_ORIGINAL_URI"), environ.get("HTTP_X_ORIGINAL_METHOD"))
    credentials = presented_credentials(
        parse_authorization(environ.get("HTTP_AUTHORIZATION")),
        environ.get("HTTP_DEPLOY_TOKEN"),
        basic_only=target.protocol is Protocol.GIT,
    )
    client = _client_addresses(app).behind_proxy(environ)
    now = runtime.clock.now()
    decision: Decision | None
    try:
        decision = _first_decision(
            runtime,
            client,
            credentials,
            target.action,
            target.resource,
            now,
            target.check_username,
            target.exact_group_only,
        )
    except StaleIndex:
        decision = None
    status = 403 if decision is None else status_for(decision)
    headers: Sequence[tuple[str, str]]
    if decision is None:
        headers = _STALE_HEADERS
    elif status == 200:
        headers = (("X-Auth-User", decision.username or ""), ("X-Deploy-Token-Id", str(decision.token_id)))
    elif status == 401:
        headers = _CHALLENGE_HEADERS
    else:
        headers = ()
    metrics = metrics_of(app)
    observed = ((target.action, target.resource, decision),)
    _record(app, runtime, environ, "auth_request", observed, status, credentials, client, now, metrics)
    metrics.auth_duration.observe(perf_counter() - started, "auth_request")
    return AuthRequestAnswer(status=status, headers=headers)


# Docker registry token server --------------------------------------------------------------------------


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


def _token_group(index: CredentialIndex, credentials: Credentials, now: datetime) -> Resource | None:
    """The dependency proxy's login target: the group a group token belongs to."""
    if credentials.malformed or not credentials.value:
        return None
    index.ensure_fresh()
    token = index.lookup(credentials.value, now)
    if token is None or token.holder_kind != "group":
        return None
    return Resource("group", id=token.holder_id)


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


def _grant(
    index: CredentialIndex,
    credentials: Credentials,
    service: str,
    scope: RequestedScope,
    now: datetime,
    observed: list[_Observed],
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
        decision = _decide(index, credentials, action, resource, now, check_username=True)
        observed.append((action, resource, decision))
        if decision.allowed:
            granted.append(requested)
    if not granted:
        return None
    return {"type": scope.type, "name": scope.name, "actions": granted}


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
    app = _app()
    try:
        return _jwt_auth(app)
    finally:
        metrics_of(app).auth_duration.observe(perf_counter() - started, "jwt")


def _jwt_auth(app: Flask) -> Response:
    runtime = runtime_of(app)
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
    client = _client_addresses(app).peer(request.environ)
    metrics = metrics_of(app)
    now = runtime.clock.now()
    observed: list[_Observed] = []
    access: list[dict[str, object]] = []
    login_action = Action.REGISTRY_LOGIN if service == CONTAINER_REGISTRY else Action.DEPENDENCY_PROXY_READ
    login_resource: Resource | None = None
    try:
        # Login first: bad credentials are a 401; a token with no registry ability (or, for the dependency
        # proxy, not a group token with the proxy scopes) is a 403 even if it asked for nothing.
        if service == DEPENDENCY_PROXY:
            login_resource = _token_group(index, credentials, now)
        login = _first_decision(
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
        _record(app, runtime, request.environ, "jwt", observed, 503, credentials, client, now, metrics)
        response = _registry_response(
            503, registry_error("UNAVAILABLE", "credential data is not current; try again")
        )
        response.headers["Retry-After"] = "1"
        return response

    if not login.allowed:
        status = 401 if login.reason in BAD_CREDENTIALS else 403
        _record(app, runtime, request.environ, "jwt", observed, status, credentials, client, now, metrics)
        if status == 401:
            return _registry_response(
                401, registry_error("UNAUTHORIZED", "HTTP Basic: Access denied"), challenge=True
            )
        return _registry_response(403, registry_error("DENIED", "access forbidden"))

    _record(app, runtime, request.environ, "jwt", observed, 200, credentials, client, now, metrics)
    username = login.username or ""
    body = issue_token(
        registry_signing_key(runtime.keys),
        issuer=str(app.config.get(REGISTRY_ISSUER_ENV) or DEFAULT_REGISTRY_ISSUER),
        audience=service,
        subject=username,
        access=access,
        now=now,
        ttl_seconds=int(app.config.get(REGISTRY_TOKEN_TTL_ENV) or DEFAULT_REGISTRY_TOKEN_TTL),
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
    pem = registry_signing_key(runtime_of(_app()).keys).certificate_pem()
    return Response(pem, status=200, mimetype="application/x-pem-file")


# JSON check for other resource servers -----------------------------------------------------------------


class ProjectOrGroupReference(fields.Field[Resource]):
    """A numeric id (JSON number or digits) or a full path (plain or URL-encoded)."""

    default_error_messages = {"invalid": "must be an id or a full path"}

    def __init__(self, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind = kind

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Resource:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int):
            if value < 1:
                raise self.make_error("invalid")
            return Resource(self.kind, id=value)
        if isinstance(value, str) and 0 < len(value) <= 1024 and not has_unstorable_characters(value):
            resource = resource_from_reference(self.kind, value.strip())
            if resource is not None:
                return resource
        raise self.make_error("invalid")


def _storable(value: str) -> None:
    # Control characters, NUL and lone surrogates could not be recorded with the decision: refused here.
    if has_unstorable_characters(value):
        raise marshmallow.ValidationError("contains characters that are not allowed (control characters)")


class ClientAddressField(fields.String):
    default_error_messages = {"invalid_address": "must be an IP address"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        address = normalise_address(text) if len(text) <= 64 else None
        if address is None:
            raise self.make_error("invalid_address")
        return address


class AuthCheckSchema(Schema):
    username = fields.String(
        load_default=None, allow_none=True, validate=[validate.Length(max=255), _storable]
    )
    token = fields.String(required=True, validate=[validate.Length(min=1, max=1024), _storable])
    action = fields.Enum(Action, by_value=True, required=True)
    project = ProjectOrGroupReference("project", load_default=None, allow_none=True)
    group = ProjectOrGroupReference("group", load_default=None, allow_none=True)
    # The address of the client the resource server asks for, believed from trusted proxies only.
    client_address = ClientAddressField(load_default=None, allow_none=True)

    @validates_schema
    def _one_resource(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("project") is not None and data.get("group") is not None:
            raise marshmallow.ValidationError("give project or group, not both", "group")


class AuthCheckResultSchema(Schema):
    allowed = fields.Boolean(required=True)
    reason = fields.String(required=True)
    token_id = fields.Integer(allow_none=True)


_PACKAGE_ACTIONS: Final = frozenset({Action.PACKAGE_READ, Action.PACKAGE_WRITE})


@auth_checks.post("/internal/auth/check")
@operation(
    "One auth decision for any resource server",
    tag="auth_checks",
    body=AuthCheckSchema,
    response=AuthCheckResultSchema,
    auth="none",
    errors=(400, 503),
)
def auth_check() -> Response:
    started = perf_counter()
    app = _app()
    try:
        return _auth_check(app)
    finally:
        metrics_of(app).auth_duration.observe(perf_counter() - started, "check")


def _auth_check(app: Flask) -> Response:
    runtime = runtime_of(app)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise marshmallow.ValidationError({"body": ["must be a JSON object"]})
    params = AuthCheckSchema().load(body, unknown=marshmallow.EXCLUDE)
    action: Action = params["action"]
    resource: Resource | None = params["project"] or params["group"]
    package = action in _PACKAGE_ACTIONS
    credentials = Credentials(params["username"], params["token"])
    addresses = _client_addresses(app)
    client = addresses.peer(request.environ)
    if params["client_address"] is not None and client is not None and addresses.is_trusted(client):
        client = params["client_address"]
    now = runtime.clock.now()
    decision: Decision | None
    try:
        decision = _first_decision(
            runtime,
            client,
            credentials,
            action,
            resource,
            now,
            # Package endpoints ignore the username; everything else compares it.
            check_username=not package and action is not Action.API,
            # A group addressed by a package endpoint is a group-level endpoint: the exact group only.
            exact_group_only=package and resource is not None and resource.kind == "group",
        )
    except StaleIndex:
        decision = None
    status = 503 if decision is None else 200
    observed = ((action, resource, decision),)
    metrics = metrics_of(app)
    _record(app, runtime, request.environ, "check", observed, status, credentials, client, now, metrics)
    if decision is None:
        response = jsonify(message="503 Service Unavailable - credential data is not current; try again")
        response.status_code = 503
        response.headers["Retry-After"] = "1"
        return response
    return jsonify(
        AuthCheckResultSchema().dump(
            {"allowed": decision.allowed, "reason": decision.reason.value, "token_id": decision.token_id}
        )
    )
