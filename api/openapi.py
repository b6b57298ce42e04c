"""The OpenAPI 3 document, built from the real routes: each view declares its operation with ``@operation``.

A test checks that every route the app serves is documented and every documented path is served, so the
document cannot drift from the API.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask
from marshmallow import Schema

from api.idempotency import HEADER, IDEMPOTENT_ATTRIBUTE, MAX_KEY_LENGTH, REPLAYED_HEADER

F = TypeVar("F", bound=Callable[..., Any])

_ERROR = {
    "type": "object",
    "properties": {"message": {}, "error": {"type": "string"}},
}


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    query: type[Schema] | None = None
    body: type[Schema] | None = None
    response: type[Schema] | None = None
    many: bool = False
    status: int = 200
    errors: tuple[int, ...] = (400, 401, 403, 404)
    auth: str = "private_token"  # "private_token", "deploy_token", "none"
    extra_responses: dict[int, str] = field(default_factory=dict)
    error_body: bool = True  # False: errors are bare status codes (nginx reads only the status)
    body_types: tuple[str, ...] = ("application/json", "application/x-www-form-urlencoded")


def operation(summary: str, *, tag: str, **options: Any) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        view.__dict__["openapi_operation"] = Operation(summary, tag, **options)
        return view

    return decorate


_CONVERTER_TYPES: dict[str, dict[str, Any]] = {
    "int": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
    "path": {"type": "string"},
    "string": {"type": "string"},
}


# Werkzeug placeholders: <name>, <int:name>, <path:name>, <any(a, b):name>
_PLACEHOLDER = re.compile(r"<(?:([^:<>]+):)?(\w+)>")


_IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retry safe for 24 hours: the same key with the same request replays the first answer "
        f"(with `{REPLAYED_HEADER}: true`); with another request it is refused (422)."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[ -~]+$"},
}


def _converter_schema(kind: str) -> dict[str, Any]:
    if kind.startswith("any("):
        return {"type": "string", "enum": [choice.strip() for choice in kind[4:-1].split(",")]}
    return dict(_CONVERTER_TYPES.get(kind or "string", {"type": "string"}))


def build_spec(app: Flask) -> dict[str, Any]:
    marshmallow_plugin = MarshmallowPlugin()
    spec = APISpec(
        title="Deploy tokens service",
        version="1",
        openapi_version="3.0.3",
        plugins=[marshmallow_plugin],
        info={"description": "GitLab REST v4-compatible deploy-token management and auth checks."},
    )
    spec.components.security_scheme(
        "private_token", {"type": "apiKey", "in": "header", "name": "PRIVATE-TOKEN"}
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    converter = marshmallow_plugin.converter
    assert converter is not None
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        described: Operation | None = getattr(view, "openapi_operation", None)
        if described is None:
            continue
        path = _PLACEHOLDER.sub(r"{\2}", rule.rule)
        parameters = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": _converter_schema(kind),
            }
            for kind, name in _PLACEHOLDER.findall(rule.rule)
        ]
        if described.query is not None:
            parameters += converter.schema2parameters(described.query(), location="query")
        idempotent = bool(getattr(view, IDEMPOTENT_ATTRIBUTE, False))
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            entry: dict[str, Any] = {
                "summary": described.summary,
                "tags": [described.tag],
                "operationId": f"{rule.endpoint}_{method.lower()}",
                "parameters": parameters,
                "responses": _responses(described, converter),
            }
            if idempotent:
                entry["parameters"] = [*parameters, _IDEMPOTENCY_KEY]
                _add_idempotency_responses(entry["responses"], described.status)
            if described.body is not None and method in ("POST", "PUT", "PATCH", "DELETE"):
                body_schema = converter.schema2jsonschema(described.body())  # type: ignore[no-untyped-call]
                entry["requestBody"] = {
                    "required": True,
                    "content": {media_type: {"schema": body_schema} for media_type in described.body_types},
                }
            if described.auth == "private_token":
                entry["security"] = [{"private_token": []}, {"bearer": []}, {}]
            elif described.auth == "deploy_token":
                entry["security"] = [{"basic": []}, {}]
            paths.setdefault(path, {})[method.lower()] = entry
    document = spec.to_dict()
    document["paths"] = dict(sorted(paths.items()))
    return document


def _add_idempotency_responses(responses: dict[str, Any], status: int) -> None:
    responses[str(status)]["headers"] = {
        REPLAYED_HEADER: {
            "description": f"`true` when this is the replayed answer to an earlier request with this {HEADER}",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }
    error = {"content": {"application/json": {"schema": _ERROR}}}
    responses["409"] = {"description": f"a request with this {HEADER} is still running", **error}
    responses["422"] = {"description": f"this {HEADER} was used for a different request", **error}


def _responses(described: Operation, converter: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if described.response is not None:
        schema = converter.schema2jsonschema(described.response())
        if described.many:
            schema = {"type": "array", "items": schema}
        responses[str(described.status)] = {
            "description": described.summary,
            "content": {"application/json": {"schema": schema}},
        }
    else:
        responses[str(described.status)] = {"description": described.summary}
    for status in described.errors:
        responses[str(status)] = (
            {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            if described.error_body
            else {"description": "refused (no body)"}
        )
    for status, text in described.extra_responses.items():
        responses[str(status)] = {"description": text}
    return responses
