"""Deploy-token trust policies (behaviour [federation]), a GitLab-style extension beside the deploy tokens:
list, get, create, change and delete a project's or group's policies under
``/api/v4/{projects|groups}/:id/deploy_token_trust_policies``.

The roles are the deploy tokens' (``TrustPolicyService`` asks the token service): whoever may list a holder's
tokens reads its policies, whoever may create them manages its policies. Bodies are JSON or form parameters,
as for deploy tokens; a form gives the claim conditions as Rack's nested parameters (``claims[ref]=main``).
"""

from __future__ import annotations

import re
from typing import Any, Final

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import EXCLUDE, Schema

from api.auth import require_principal
from api.context import runtime
from api.openapi import operation
from api.params import PaginationSchema, load, paginate_list, paginated, request_params
from api.resources import holder_id
from api.trust_policy_schemas import TrustPolicyChangeSchema, TrustPolicyCreateSchema, TrustPolicySchema
from domain.deploy_token import HolderKind
from domain.federation import ClaimCondition
from projections.trust_policies import TrustPolicyRecord

trust_policies = Blueprint("trust_policies", __name__, url_prefix="/api/v4")

# Anonymous callers, as for deploy tokens: a private project is hidden (404); a group refuses (403).
_ANONYMOUS: Final = {"project": "404", "group": "403"}
_TAG: Final = "deploy_token_trust_policies"
# ``claims[project_path]=acme/api`` in a form or query string: Rack reads it as {"claims": {"project_path": ...}}.
_NESTED: Final = re.compile(r"\A(claims|claim_patterns)\[([^\[\]]+)\]\Z")


def _kind(kind: str) -> HolderKind:
    return "project" if kind == "project" else "group"


def policy_fields(record: TrustPolicyRecord) -> dict[str, Any]:
    """The conditions split by how they match: exact values in ``claims``, patterns in ``claim_patterns``."""
    return {
        "id": record.policy_id,
        "name": record.name,
        "issuer": record.issuer,
        "audience": record.audience,
        "claims": {c.claim: c.value for c in record.conditions if c.match == "exact"},
        "claim_patterns": {c.claim: c.value for c in record.conditions if c.match == "glob"},
        "scopes": list(record.scopes),
        "ttl_seconds": record.ttl_seconds,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "created_by": record.created_by,
    }


def _policy_response(record: TrustPolicyRecord, status: int = 200) -> Response:
    response: Response = jsonify(TrustPolicySchema().dump(policy_fields(record)))
    response.status_code = status
    return response


def _load_body(schema: Schema) -> dict[str, Any]:
    """``request_params`` with the nested form parameters folded into their objects. A JSON object of the
    same name wins, as a later source wins in ``request_params``."""
    params = request_params()
    nested: dict[str, dict[str, Any]] = {}
    for key in [key for key in params if _NESTED.match(key)]:
        found = _NESTED.match(key)
        assert found is not None
        nested.setdefault(found.group(1), {})[found.group(2)] = params.pop(key)
    for name, values in nested.items():
        params.setdefault(name, values)
    loaded: dict[str, Any] = schema.load(params, unknown=EXCLUDE)
    return loaded


def _conditions(exact: dict[str, str], patterns: dict[str, str]) -> list[ClaimCondition]:
    return [ClaimCondition(claim, value, "exact") for claim, value in exact.items()] + [
        ClaimCondition(claim, value, "glob") for claim, value in patterns.items()
    ]


def list_policies(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind])
    holder = holder_id(kind, reference)
    records = runtime().trust_policies.policies(principal.actor, _kind(kind), holder)
    params = load(PaginationSchema())
    page = paginate_list(records, params["page"], params["per_page"])
    return paginated(page, TrustPolicySchema(many=True).dump([policy_fields(r) for r in page.items]))


def get_policy(kind: str, reference: str, policy_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind])
    holder = holder_id(kind, reference)
    return _policy_response(runtime().trust_policies.policy(principal.actor, _kind(kind), holder, policy_id))


def create_policy(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    holder = holder_id(kind, reference)
    params = _load_body(TrustPolicyCreateSchema())
    record = runtime().trust_policies.create_policy(
        principal.actor,
        _kind(kind),
        holder,
        name=params["name"],
        issuer=params["issuer"],
        audience=params["audience"],
        conditions=_conditions(params["claims"], params["claim_patterns"]),
        scopes=params["scopes"],
        ttl_seconds=params["ttl_seconds"],
    )
    return _policy_response(record, 201)


def change_policy(kind: str, reference: str, policy_id: int) -> ResponseReturnValue:
    """Only the fields given change. ``claims`` replaces the exact conditions and keeps the patterns, and
    ``claim_patterns`` the other way round."""
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    holder = holder_id(kind, reference)
    params = _load_body(TrustPolicyChangeSchema())
    service = runtime().trust_policies
    changes: dict[str, Any] = {
        key: params[key] for key in ("name", "issuer", "audience", "scopes", "ttl_seconds") if key in params
    }
    if "claims" in params:
        changes["exact_conditions"] = _conditions(params["claims"], {})
    if "claim_patterns" in params:
        changes["pattern_conditions"] = _conditions({}, params["claim_patterns"])
    return _policy_response(service.change_policy(principal.actor, _kind(kind), holder, policy_id, **changes))


def delete_policy(kind: str, reference: str, policy_id: int) -> ResponseReturnValue:
    principal = require_principal(anonymous=_ANONYMOUS[kind], writes=True)
    runtime().trust_policies.delete_policy(
        principal.actor, _kind(kind), holder_id(kind, reference), policy_id
    )
    return "", 204


_VIEWS = (
    (
        "",
        "GET",
        list_policies,
        operation(
            "List the trust policies under which CI jobs exchange OIDC ID tokens for deploy tokens",
            tag=_TAG,
            query=PaginationSchema,
            response=TrustPolicySchema,
            many=True,
        ),
    ),
    (
        "",
        "POST",
        create_policy,
        operation(
            "Create a trust policy (the roles that create deploy tokens)",
            tag=_TAG,
            body=TrustPolicyCreateSchema,
            response=TrustPolicySchema,
            status=201,
        ),
    ),
    (
        "/<int:policy_id>",
        "GET",
        get_policy,
        operation("Get a trust policy", tag=_TAG, response=TrustPolicySchema),
    ),
    (
        "/<int:policy_id>",
        "PUT",
        change_policy,
        operation(
            "Change a trust policy: only the fields given change",
            tag=_TAG,
            body=TrustPolicyChangeSchema,
            response=TrustPolicySchema,
        ),
    ),
    (
        "/<int:policy_id>",
        "DELETE",
        delete_policy,
        operation(
            "Delete a trust policy: no exchange matches it any more (tokens it gave stay until they expire)",
            tag=_TAG,
            status=204,
        ),
    ),
)

for _kind_name, _prefix in (("project", "/projects/<path:reference>"), ("group", "/groups/<path:reference>")):
    for _suffix, _method, _view, _describe in _VIEWS:

        def _bound(_view: Any = _view, _kind_name: str = _kind_name, **kwargs: Any) -> ResponseReturnValue:
            return _view(_kind_name, **kwargs)  # type: ignore[no-any-return]

        _bound.__name__ = f"{_kind_name}_{_view.__name__}"
        trust_policies.add_url_rule(
            f"{_prefix}/deploy_token_trust_policies{_suffix}",
            endpoint=_bound.__name__,
            view_func=_describe(_bound),
            methods=[_method],
        )
