"""``POST /internal/auth/check``: one auth decision as JSON, for any other resource server.

The body names the credentials, the action and the project or group: ``{"username", "token", "action",
"project"|"group"}``, and optionally the address of the client it asks for (believed from trusted proxies
only). The answer is ``{"allowed", "reason", "token_id"}``; a stale credential index answers 503 with
``Retry-After``.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, Final

import marshmallow
from flask import Flask, Response, jsonify, request
from marshmallow import Schema, fields, validate, validates_schema

from api.auth_checks.common import (
    Credentials,
    auth_checks,
    current_flask_app,
    first_decision,
    wiring_of,
)
from api.auth_checks.record import record_decisions
from api.client_address import normalise_address
from api.openapi import operation
from api.request_mapping import resource_from_reference
from domain.text import has_unstorable_characters
from projections.access import Action, Decision
from projections.credential_index import Resource, StaleIndex

__all__ = ["AuthCheckResultSchema", "AuthCheckSchema", "auth_check"]


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
    app = current_flask_app()
    try:
        return _auth_check(app)
    finally:
        wiring_of(app).metrics.auth_duration.observe(perf_counter() - started, "check")


def _auth_check(app: Flask) -> Response:
    wiring = wiring_of(app)
    runtime = wiring.runtime
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise marshmallow.ValidationError({"body": ["must be a JSON object"]})
    params = AuthCheckSchema().load(body, unknown=marshmallow.EXCLUDE)
    action: Action = params["action"]
    resource: Resource | None = params["project"] or params["group"]
    package = action in _PACKAGE_ACTIONS
    credentials = Credentials(params["username"], params["token"])
    environ = request.environ
    addresses = wiring.addresses
    client = addresses.peer(environ)
    if params["client_address"] is not None and client is not None and addresses.is_trusted(client):
        client = params["client_address"]
    now = runtime.clock.now()
    decision: Decision | None
    try:
        decision = first_decision(
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
    record_decisions(app, wiring, environ, "check", observed, status, credentials, client, now)
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
