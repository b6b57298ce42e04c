"""What every auth check shares: the blueprint, the credentials a client presented, one decision, its status.

**Fail closed when the credential index is stale.** ``StaleIndex`` means "cannot vouch for current data":
never an allow. Each endpoint turns it into its own "try again" (``nginx``, ``registry``, ``json_check``).

Views stay thin: the URL and scope mapping are pure functions (unit-tested on their own), every decision is
``runtime.index.check(...)`` (``projections.access.decide`` over the in-memory index), and each one is counted
and recorded (``api.auth_checks.record``) without touching the database.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Final, NamedTuple

from flask import Blueprint, Flask, current_app
from flask.blueprints import BlueprintSetupState

from api.client_address import ClientAddresses
from api.context import runtime_of
from api.metrics import Metrics, metrics_of
from deploy_tokens.runtime import Runtime
from projections.access import Action, Decision, Reason
from projections.credential_index import CredentialIndex, Resource

__all__ = [
    "AUTH_CHALLENGE",
    "BAD_CREDENTIALS",
    "FAILED_CREDENTIALS",
    "AuthWiring",
    "AuthorizationHeader",
    "Credentials",
    "auth_checks",
    "current_flask_app",
    "decide",
    "first_decision",
    "parse_authorization",
    "presented_credentials",
    "status_for",
    "wiring_of",
]

auth_checks = Blueprint("auth_checks", __name__)

AUTH_CHALLENGE: Final = 'Basic realm="deploy-tokens"'

# Reasons that mean "these are not valid credentials": 401, so the client may (re)send some. Routes that never
# take deploy tokens (behaviour [api-routes]) are here too: GitLab's API ignores the token there, which reads as 401.
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


# Wiring ------------------------------------------------------------------------------------------------


class AuthWiring(NamedTuple):
    """What every auth check needs from its app, found once when the blueprint is registered: a view reads
    one ``app.extensions`` entry instead of three (the runtime, the metrics, the client-address rules)."""

    runtime: Runtime
    metrics: Metrics
    addresses: ClientAddresses


_WIRING: Final = "deploy_tokens.auth_checks"


@auth_checks.record_once
def _wire(state: BlueprintSetupState) -> None:
    app = state.app
    assert isinstance(app, Flask)
    runtime = runtime_of(app)
    app.extensions[_WIRING] = AuthWiring(
        runtime, metrics_of(app), ClientAddresses(runtime.settings.trusted_proxies)
    )


def wiring_of(app: Flask) -> AuthWiring:
    wiring = app.extensions[_WIRING]
    assert isinstance(wiring, AuthWiring)
    return wiring


def current_flask_app() -> Flask:
    """The app itself, not ``current_app``'s proxy: every attribute read through the proxy costs a lookup."""
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


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
    """What the client presented: a username (when the protocol has one) and a token value.

    ``malformed``: credentials were sent but could not be read (a Basic header that is not base64 of
    ``user:password``); whether that makes a malformed token is the credential index's rule, like every other.
    """

    username: str | None = None
    value: str | None = None
    malformed: bool = False


def presented_credentials(
    authorization: AuthorizationHeader, deploy_token: str | None, *, basic_only: bool
) -> Credentials:
    """Git and the registry log in with Basic ``username:token`` only (behaviour [git], [registry]).

    Package endpoints take the token from the Basic password (which wins), else ``Deploy-Token``, else
    ``Authorization: Bearer``, and ignore the Basic username (behaviour [packages]).
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


# Deciding ----------------------------------------------------------------------------------------------


def decide(
    index: CredentialIndex,
    credentials: Credentials,
    action: Action,
    resource: Resource | None,
    now: datetime,
    check_username: bool,
    exact_group_only: bool = False,
) -> Decision:
    """One decision on what the client presented. Raises ``StaleIndex`` rather than answer from old data."""
    return index.check(
        value=credentials.value,
        unreadable=credentials.malformed,
        username=credentials.username,
        action=action,
        resource=resource,
        now=now,
        check_username=check_username,
        exact_group_only=exact_group_only,
    )


def first_decision(
    runtime: Runtime,
    client: str | None,
    credentials: Credentials,
    action: Action,
    resource: Resource | None,
    now: datetime,
    check_username: bool,
    exact_group_only: bool = False,
) -> Decision:
    """A request's first (or only) decision: a banned address is refused before its credentials are read."""
    if runtime.bans.is_banned(client, now):
        return _BANNED
    return decide(runtime.index, credentials, action, resource, now, check_username, exact_group_only)


def status_for(decision: Decision) -> int:
    """200 allowed; 401 for bad credentials (the client may send others); 403 for a valid token refused."""
    if decision.allowed:
        return 200
    return 401 if decision.reason in BAD_CREDENTIALS else 403
