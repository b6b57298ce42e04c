"""Groups and subgroups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_principal
from api.context import runtime
from api.directory.blueprint import created, directory, viewer
from api.directory.representations import group_fields, group_fields_of
from api.directory.schemas import GroupCreateSchema, GroupListSchema, GroupSchema, GroupUpdateSchema
from api.idempotency import idempotency_slot, idempotent
from api.openapi import operation
from api.params import load, paginate_list, paginated
from api.resources import group_id


def _created_group(number: int) -> Response:
    return created(GroupSchema().dump(group_fields_of(number)))


def _recreated_group(result: Mapping[str, Any]) -> Response:
    return _created_group(int(result["group_id"]))


@directory.post("/groups")
@operation(
    "Create a group or subgroup", tag="groups", body=GroupCreateSchema, response=GroupSchema, status=201
)
@idempotent(_recreated_group)
def create_group() -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(GroupCreateSchema())
    number = runtime().directory.create_group(
        principal.actor,
        name=params["name"],
        path=params["path"],
        parent_id=params["parent_id"],
        idempotency=idempotency_slot(),
    )
    return _created_group(number)


@directory.get("/groups")
@operation(
    "List the groups the caller can see", tag="groups", query=GroupListSchema, response=GroupSchema, many=True
)
def list_groups() -> ResponseReturnValue:
    params = load(GroupListSchema())
    groups = runtime().directory.groups(
        viewer(), search=params["search"], top_level_only=params["top_level_only"]
    )
    page = paginate_list(groups, params["page"], params["per_page"])
    return paginated(page, GroupSchema(many=True).dump([group_fields(group) for group in page.items]))


@directory.get("/groups/<path:reference>")
@operation("Get a group by id or URL-encoded full path", tag="groups", response=GroupSchema)
def get_group(reference: str) -> ResponseReturnValue:
    group = runtime().directory.group(viewer(), group_id(reference))
    return jsonify(GroupSchema().dump(group_fields(group)))


@directory.put("/groups/<path:reference>")
@operation(
    "Update a group: the dependency proxy switch (Owner)",
    tag="groups",
    body=GroupUpdateSchema,
    response=GroupSchema,
)
def update_group(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    group = runtime().directory.group(principal.actor, group_id(reference))
    params = load(GroupUpdateSchema())
    runtime().directory.set_dependency_proxy(
        principal.actor, group.namespace_id, params["dependency_proxy_enabled"]
    )
    return jsonify(GroupSchema().dump(group_fields_of(group.namespace_id)))


@directory.get("/groups/<path:reference>/subgroups")
@operation(
    "List a group's direct subgroups", tag="groups", query=GroupListSchema, response=GroupSchema, many=True
)
def list_subgroups(reference: str) -> ResponseReturnValue:
    caller = viewer()
    parent = runtime().directory.group(caller, group_id(reference))
    params = load(GroupListSchema())
    children = runtime().directory.subgroups(caller, parent.namespace_id, search=params["search"])
    page = paginate_list(children, params["page"], params["per_page"])
    return paginated(page, GroupSchema(many=True).dump([group_fields(group) for group in page.items]))
