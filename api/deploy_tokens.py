"""Deploy tokens, GitLab REST v4: instance list, per project and group list/get/create/delete, plus
revoke, rotate, history, revoke-by-value and the CI variables (behaviour [ci-token]; GitLab-style extensions)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_admin, require_principal
from api.context import runtime
from api.idempotency import idempotency_slot, idempotent, rebuilt
from api.openapi import operation
from api.params import load, paginated
from api.resources import holder_id, project_id
from api.schemas import (
    CiVariableSchema,
    CreatedDeployTokenSchema,
    DeployTokenCreateSchema,
    DeployTokenListSchema,
    DeployTokenSchema,
    HistoryEntrySchema,
    RevokeByValueSchema,
    RotateSchema,
)
from domain.deploy_token import HolderKind
from projections.credentials import TokenRecord

deploy_tokens = Blueprint("deploy_tokens", __name__, url_prefix="/api/v4")

# Anonymous callers: a private project is hidden (404); a group refuses (403) (behaviour [manage]).
_ANONYMOUS = {"project": "404", "group": "403"}


def token_fields(record: TokenRecord) -> dict[str, Any]:
    now = runtime().clock.now()
    return {
        "token_id": record.token_id,
        "name": record.name,
        "username": record.username,
        "expires_at": record.expires_at,
        "scopes": record.scopes,
        "revoked": record.revoked,
        "expired": record.is_expired(now),
    }


def _kind(kind: str) -> HolderKind:
    return "project" if kind == "project" else "group"


@deploy_tokens.get("/deploy_tokens")
@operation(
    "List all deploy tokens (administrators)",
    tag="deploy_tokens",
    query=DeployTokenListSchema,
    response=DeployTokenSchema,
    many=True,
)
def list_all() -> ResponseReturnValue:
    require_admin()
    params = load(DeployTokenListSchema())
    page = runtime().read.tokens(
        holder_kind=None,
        holder_id=None,
        active_only=params["active"],
        now=runtime().clock.now(),
        page=params["page"],
        per_page=params["per_page"],
    )
    return paginated(page, DeployTokenSchema(many=True).dump([token_fields(r) for r in page.items]))


def list_holder_tokens(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind])
    holder = holder_id(kind, reference)
    runtime().tokens.check_token_reader(principal.actor, _kind(kind), holder)
    params = load(DeployTokenListSchema())
    page = runtime().read.tokens(
        holder_kind=kind,
        holder_id=holder,
        active_only=params["active"],
        now=runtime().clock.now(),
        page=params["page"],
        per_page=params["per_page"],
    )
    return paginated(page, DeployTokenSchema(many=True).dump([token_fields(r) for r in page.items]))


def get_holder_token(kind: str, reference: str, token_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind])
    record = runtime().tokens.token_of(principal.actor, _kind(kind), holder_id(kind, reference), token_id)
    return jsonify(DeployTokenSchema().dump(token_fields(record)))


def _issued_response(record: TokenRecord, value: str, status: int) -> Response:
    response: Response = jsonify(CreatedDeployTokenSchema().dump({**token_fields(record), "token": value}))
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"  # the one response that carries a secret
    return response


def _reissued(status: int) -> Callable[..., Response]:
    """An Idempotency-Key replay whose answer was never kept: the token as it is now, with the value issued."""

    def rebuild(result: Mapping[str, Any], *_: Any, **__: Any) -> Response:
        record = rebuilt(runtime().read.token(int(result["token_id"])))
        return _issued_response(record, str(result["token"]), status)

    return rebuild


@idempotent(_reissued(201))
def create_holder_token(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    holder = holder_id(kind, reference)
    params = load(DeployTokenCreateSchema())
    issued = runtime().tokens.create_token(
        principal.actor,
        _kind(kind),
        holder,
        name=params["name"],
        scopes=params["scopes"],
        expires_at=params["expires_at"],
        username=params["username"],
        idempotency=idempotency_slot(),
    )
    return _issued_response(issued.token, issued.value, 201)


def delete_holder_token(kind: str, reference: str, token_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    runtime().tokens.delete_token(principal.actor, _kind(kind), holder_id(kind, reference), token_id)
    return "", 204


def revoke_holder_token(kind: str, reference: str, token_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    record = runtime().tokens.revoke_token(principal.actor, _kind(kind), holder_id(kind, reference), token_id)
    return jsonify(DeployTokenSchema().dump(token_fields(record)))


@idempotent(_reissued(200))
def rotate_holder_token(kind: str, reference: str, token_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    params = load(RotateSchema())
    grace = timedelta(seconds=params["grace_period_seconds"]) if params["grace_period_seconds"] else None
    issued = runtime().tokens.rotate_token(
        principal.actor,
        _kind(kind),
        holder_id(kind, reference),
        token_id,
        grace=grace,
        idempotency=idempotency_slot(),
    )
    return _issued_response(issued.token, issued.value, 200)


def holder_token_history(kind: str, reference: str, token_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind])
    runtime().tokens.token_of(principal.actor, _kind(kind), holder_id(kind, reference), token_id)
    return jsonify(HistoryEntrySchema(many=True).dump(runtime().tokens.history(token_id)))


_HOLDER_VIEWS = (
    (
        "",
        "GET",
        list_holder_tokens,
        operation(
            "List deploy tokens",
            tag="deploy_tokens",
            query=DeployTokenListSchema,
            response=DeployTokenSchema,
            many=True,
        ),
    ),
    (
        "",
        "POST",
        create_holder_token,
        operation(
            "Create a deploy token (the value is in this response only)",
            tag="deploy_tokens",
            body=DeployTokenCreateSchema,
            response=CreatedDeployTokenSchema,
            status=201,
        ),
    ),
    (
        "/<int:token_id>",
        "GET",
        get_holder_token,
        operation("Get a deploy token", tag="deploy_tokens", response=DeployTokenSchema),
    ),
    (
        "/<int:token_id>",
        "DELETE",
        delete_holder_token,
        operation("Delete a deploy token (its history stays)", tag="deploy_tokens", status=204),
    ),
    (
        "/<int:token_id>/revoke",
        "POST",
        revoke_holder_token,
        operation("Revoke a deploy token (idempotent)", tag="deploy_tokens", response=DeployTokenSchema),
    ),
    (
        "/<int:token_id>/rotate",
        "POST",
        rotate_holder_token,
        operation(
            "Rotate a deploy token's secret, optionally keeping the old one for a grace period",
            tag="deploy_tokens",
            body=RotateSchema,
            response=CreatedDeployTokenSchema,
        ),
    ),
    (
        "/<int:token_id>/history",
        "GET",
        holder_token_history,
        operation(
            "A deploy token's full event history", tag="deploy_tokens", response=HistoryEntrySchema, many=True
        ),
    ),
)

for _kind_name, _prefix in (("project", "/projects/<path:reference>"), ("group", "/groups/<path:reference>")):
    for _suffix, _method, _view, _describe in _HOLDER_VIEWS:

        def _bound(_view: Any = _view, _kind_name: str = _kind_name, **kwargs: Any) -> ResponseReturnValue:
            return _view(_kind_name, **kwargs)  # type: ignore[no-any-return]

        functools.update_wrapper(_bound, _view)  # carries the view's markers (Idempotency-Key) to the route
        _bound.__name__ = f"{_kind_name}_{_view.__name__}"
        deploy_tokens.add_url_rule(
            f"{_prefix}/deploy_tokens{_suffix}",
            endpoint=_bound.__name__,
            view_func=_describe(_bound),
            methods=[_method],
        )


@deploy_tokens.delete("/admin/token")
@operation(
    "Revoke a leaked deploy token by its value (administrators)",
    tag="deploy_tokens",
    body=RevokeByValueSchema,
    status=204,
)
def revoke_by_value() -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(RevokeByValueSchema())
    runtime().tokens.revoke_by_value(principal.actor, params["token"])
    return "", 204


@deploy_tokens.get("/projects/<path:reference>/deploy_token_variables")
@operation(
    "CI/CD variables CI_DEPLOY_USER and CI_DEPLOY_PASSWORD of the gitlab-deploy-token (behaviour [ci-token])",
    tag="deploy_tokens",
    response=CiVariableSchema,
    many=True,
)
def ci_variables(reference: str) -> ResponseReturnValue:
    require_admin()
    found = runtime().tokens.ci_variables(project_id(reference))
    variables = []
    if found is not None:
        username, password = found
        for key, value, masked in (
            ("CI_DEPLOY_USER", username, False),
            ("CI_DEPLOY_PASSWORD", password, True),
        ):
            variables.append(
                {
                    "key": key,
                    "value": value,
                    "variable_type": "env_var",
                    "protected": False,
                    "masked": masked,
                    "raw": True,
                    "environment_scope": "*",
                }
            )
    response: Response = jsonify(CiVariableSchema(many=True).dump(variables))
    response.headers["Cache-Control"] = "no-store"
    return response
