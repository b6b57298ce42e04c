"""``POST /oauth/token``: OAuth 2.0 Token Exchange (RFC 8693) of a CI job's OIDC ID token for a deploy token.

behaviour [federation]. The request is form-encoded, as RFC 6749 section 3.2 requires of a token endpoint:
``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``, ``subject_token`` (the ID token),
``subject_token_type=urn:ietf:params:oauth:token-type:jwt`` (or ``…:id_token``), and optionally ``scope``
(space-separated deploy-token scopes) and ``resource`` (the full path of the project or group). No client
authentication: the ID token's signature is the credential.

The answer is RFC 8693's (``access_token``, ``issued_token_type``, ``token_type: N_A``, ``expires_in``,
``scope``) plus what a deploy token's user needs (``username``, ``token_id``, ``expires_at``), never cached;
a refusal is RFC 6749's ``{"error", "error_description"}``. Every attempt is counted and recorded as one
activity row whose reason says why it was refused, in more detail than the client is told.
"""

from __future__ import annotations

from typing import Final

from flask import Flask, Response, jsonify, request
from marshmallow import Schema, fields

from api.activity import activity_of
from api.auth_checks.common import auth_checks, current_flask_app, wiring_of
from api.openapi import operation
from deploy_tokens.federation import Exchanged, ExchangeRefused, ExchangeRequest
from domain.text import has_unstorable_characters
from infrastructure.activity import ACTIVITY_TEXT_LIMIT, ActivityEvent

__all__ = ["TokenExchangeResponseSchema", "TokenExchangeSchema", "exchange_token"]

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
SUBJECT_TOKEN_TYPES: Final = frozenset(
    {"urn:ietf:params:oauth:token-type:jwt", "urn:ietf:params:oauth:token-type:id_token"}
)
ISSUED_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"
FORM: Final = "application/x-www-form-urlencoded"
# An ID token is a few kilobytes at most; the verifier refuses anything over 16 KiB as well.
SUBJECT_TOKEN_MAX_LENGTH: Final = 16 * 1024
PARAMETER_MAX_LENGTH: Final = 1024
ENDPOINT: Final = "oauth_token"
ACTION: Final = "token_exchange"
_PARAMETERS: Final = ("grant_type", "subject_token", "subject_token_type", "scope", "resource")


class TokenExchangeSchema(Schema):
    """The request parameters (documentation: the view reads the form itself, parameter by parameter, so that
    every malformed request gets the OAuth error it calls for)."""

    grant_type = fields.String(required=True, metadata={"enum": [GRANT_TYPE]})
    subject_token = fields.String(required=True, metadata={"maxLength": SUBJECT_TOKEN_MAX_LENGTH})
    subject_token_type = fields.String(required=True, metadata={"enum": sorted(SUBJECT_TOKEN_TYPES)})
    scope = fields.String(metadata={"description": "space-separated deploy-token scopes"})
    resource = fields.String(metadata={"description": "full path of the project or group"})


class TokenExchangeResponseSchema(Schema):
    access_token = fields.String(required=True)
    issued_token_type = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)
    scope = fields.String(required=True)
    username = fields.String(required=True)
    token_id = fields.Integer(required=True)
    expires_at = fields.String(required=True)


def _oauth_error(refused: ExchangeRefused) -> Response:
    response = jsonify(error=refused.error, error_description=refused.description)
    response.status_code = refused.status
    response.headers["Cache-Control"] = "no-store"
    if refused.status == 503:
        response.headers["Retry-After"] = "5"
    return response


def _invalid(detail: str, error: str = "invalid_request") -> ExchangeRefused:
    return ExchangeRefused(error, error, detail)


def _parameters(address: str | None) -> ExchangeRequest:
    """The form's parameters, each given once, of sane length and storable text (RFC 6749 section 3.2)."""
    if request.mimetype != FORM:
        raise _invalid(f"the request body must be {FORM}")
    form = request.form
    values: dict[str, str] = {}
    for name in _PARAMETERS:
        given = form.getlist(name)
        if len(given) > 1:
            raise _invalid(f"{name} is given more than once")
        if not given:
            continue
        value = given[0]
        limit = SUBJECT_TOKEN_MAX_LENGTH if name == "subject_token" else PARAMETER_MAX_LENGTH
        if len(value) > limit:
            raise _invalid(f"{name} is too long")
        if has_unstorable_characters(value):
            raise _invalid(f"{name} contains control characters")
        values[name] = value
    grant_type = values.get("grant_type")
    if grant_type is None:
        raise _invalid("grant_type is missing")
    if grant_type != GRANT_TYPE:
        raise _invalid(f"only {GRANT_TYPE} is supported", "unsupported_grant_type")
    for name in ("subject_token", "subject_token_type"):
        if not values.get(name):
            raise _invalid(f"{name} is missing")
    if values["subject_token_type"] not in SUBJECT_TOKEN_TYPES:
        raise _invalid("subject_token_type must be urn:ietf:params:oauth:token-type:jwt")
    return ExchangeRequest(values["subject_token"], values.get("scope"), values.get("resource"), address)


@auth_checks.post("/oauth/token")
@operation(
    "Exchange a CI job's OIDC ID token for a short-lived deploy token (RFC 8693)",
    tag="auth_checks",
    body=TokenExchangeSchema,
    response=TokenExchangeResponseSchema,
    auth="none",
    errors=(400, 503),
    body_types=(FORM,),
)
def exchange_token() -> Response:
    app = current_flask_app()
    wiring = wiring_of(app)
    client = wiring.addresses.peer(request.environ)
    resource: str | None = None
    try:
        parameters = _parameters(client)
        resource = parameters.resource
        exchanged = wiring.runtime.token_exchange.exchange(parameters)
    except ExchangeRefused as refused:
        _record(app, client, None, resource, refused.status, refused.reason, refused.detail)
        return _oauth_error(refused)
    _record(app, client, exchanged, resource, 200, "allowed")
    token = exchanged.issued.token
    expires_at = token.expires_at
    assert expires_at is not None  # a federated token always expires (its policy's TTL)
    response = jsonify(
        TokenExchangeResponseSchema().dump(
            {
                "access_token": exchanged.issued.value,
                "issued_token_type": ISSUED_TOKEN_TYPE,
                "token_type": "N_A",
                "expires_in": exchanged.expires_in,
                "scope": " ".join(token.scopes),
                "username": token.username,
                "token_id": token.token_id,
                "expires_at": expires_at.isoformat().replace("+00:00", "Z"),
            }
        )
    )
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def _record(
    app: Flask,
    client: str | None,
    exchanged: Exchanged | None,
    resource: str | None,
    status: int,
    code: str,
    detail: str | None = None,
) -> None:
    """Count the attempt by its reason code and queue its activity row, whose reason adds the detail."""
    wiring = wiring_of(app)
    allowed = exchanged is not None
    result = "allowed" if allowed else "unavailable" if status == 503 else "denied"
    wiring.metrics.auth_decisions.inc(ENDPOINT, ACTION, result, code)
    reason = code if detail is None else f"{code}: {detail}"
    recorder = activity_of(app)
    if recorder is None:
        return
    user_agent = request.environ.get("HTTP_USER_AGENT")
    if exchanged is not None:
        resource_kind: str | None = exchanged.holder_kind
        resource_ref: str | None = resource or str(exchanged.holder_id)
    else:
        resource_kind, resource_ref = None, resource or None
    recorder.record(
        ActivityEvent(
            occurred_at=wiring.runtime.clock.now(),
            token_id=None if exchanged is None else exchanged.issued.token.token_id,
            token_ref=None,
            endpoint=ENDPOINT,
            action=ACTION,
            resource_kind=resource_kind,
            resource_ref=None if resource_ref is None else resource_ref[:ACTIVITY_TEXT_LIMIT],
            allowed=allowed,
            reason=reason[:ACTIVITY_TEXT_LIMIT],
            status=status,
            client_addr=client,
            user_agent=None if user_agent is None else user_agent[:ACTIVITY_TEXT_LIMIT],
        )
    )
