"""Members of groups and projects: one set of routes under ``/projects/:id`` and ``/groups/:id``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from flask import Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_principal
from api.context import runtime
from api.directory.blueprint import WITH_CONFLICT, created, directory
from api.directory.representations import member_fields
from api.directory.schemas import MemberCreateSchema, MemberSchema, MemberUpdateSchema
from api.idempotency import idempotency_slot, idempotent
from api.openapi import operation
from api.params import PaginationSchema, load, paginate_list, paginated
from api.resources import holder_id
from deploy_tokens.access import Principal
from deploy_tokens.members import Member
from domain.deploy_token import HolderKind


def _holder(kind: str) -> HolderKind:
    return "project" if kind == "project" else "group"


def _dump(found: Member) -> dict[str, Any]:
    body: dict[str, Any] = MemberSchema().dump(member_fields(*found))
    return body


def _source(kind: str, principal: Principal, reference: str) -> int:
    """The group or project the caller addresses, once the access rules let them see it."""
    number = holder_id(kind, reference)
    runtime().members.visible_source(principal.actor, _holder(kind), number)
    return number


def list_members(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal()
    found = runtime().members.members(principal.actor, _holder(kind), holder_id(kind, reference))
    params = load(PaginationSchema())
    page = paginate_list(found, params["page"], params["per_page"])
    return paginated(page, MemberSchema(many=True).dump([member_fields(*member) for member in page.items]))


def get_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    principal = require_principal()
    return jsonify(
        _dump(runtime().members.member(principal.actor, _holder(kind), holder_id(kind, reference), user_id))
    )


def _recreated_member(result: Mapping[str, Any], kind: str, reference: str) -> Response:
    found = runtime().members.recorded_member(
        _holder(kind), holder_id(kind, reference), int(result["user_id"])
    )
    return created(_dump(found))


@idempotent(_recreated_member)
def add_member(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    params = load(MemberCreateSchema())
    found = runtime().members.add_member(
        principal.actor,
        _holder(kind),
        source,
        params["user_id"],
        params["access_level"],
        idempotency=idempotency_slot(),
    )
    return created(_dump(found))


def update_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    params = load(MemberUpdateSchema())
    found = runtime().members.change_member(
        principal.actor, _holder(kind), source, user_id, params["access_level"]
    )
    return jsonify(_dump(found))


def remove_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    runtime().members.remove_member(principal.actor, _holder(kind), source, user_id)
    return "", 204


_MEMBER_VIEWS: tuple[tuple[str, str, Callable[..., ResponseReturnValue], Callable[[Any], Any]], ...] = (
    (
        "",
        "GET",
        list_members,
        operation(
            "List direct members", tag="members", query=PaginationSchema, response=MemberSchema, many=True
        ),
    ),
    (
        "",
        "POST",
        add_member,
        operation(
            "Add a member with an access level",
            tag="members",
            body=MemberCreateSchema,
            response=MemberSchema,
            status=201,
            errors=WITH_CONFLICT,
        ),
    ),
    (
        "/<int:user_id>",
        "GET",
        get_member,
        operation("Get a direct member", tag="members", response=MemberSchema),
    ),
    (
        "/<int:user_id>",
        "PUT",
        update_member,
        operation(
            "Change a member's access level", tag="members", body=MemberUpdateSchema, response=MemberSchema
        ),
    ),
    ("/<int:user_id>", "DELETE", remove_member, operation("Remove a member", tag="members", status=204)),
)

for _kind_name, _prefix in (("project", "/projects/<path:reference>"), ("group", "/groups/<path:reference>")):
    for _suffix, _method, _view, _describe in _MEMBER_VIEWS:

        def _bound(
            _view: Callable[..., ResponseReturnValue] = _view, _kind_name: str = _kind_name, **kwargs: Any
        ) -> ResponseReturnValue:
            return _view(_kind_name, **kwargs)

        functools.update_wrapper(_bound, _view)  # carries the view's markers (Idempotency-Key) to the route
        _bound.__name__ = f"{_kind_name}_{_view.__name__}"
        directory.add_url_rule(
            f"{_prefix}/members{_suffix}",
            endpoint=_bound.__name__,
            view_func=_describe(_bound),
            methods=[_method],
        )
