"""Groups and subgroups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_principal
from api.context import runtime
from api.directory.blueprint import accepted, created, directory, viewer
from api.directory.representations import group_fields, group_fields_of
from api.directory.schemas import (
    GroupCreateSchema,
    GroupListSchema,
    GroupSchema,
    GroupTransferSchema,
    GroupUpdateSchema,
)
from api.idempotency import idempotency_slot, idempotent
from api.openapi import operation
from api.params import load, paginate_list, paginated
from api.resources import group_id, one_segment


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
    "Update a group (Owner): name, path (everything below it moves, deploy tokens follow by id), and the "
    "dependency proxy switch",
    tag="groups",
    body=GroupUpdateSchema,
    response=GroupSchema,
)
def update_group(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(GroupUpdateSchema())
    number = group_id(reference)
    runtime().lifecycle.update_group(
        principal.actor,
        number,
        name=params["name"],
        path=params["path"],
        dependency_proxy_enabled=params["dependency_proxy_enabled"],
    )
    return jsonify(GroupSchema().dump(group_fields_of(number)))


@directory.post("/groups/<path:reference>/transfer")
@operation(
    "Transfer a group under another group, or to the top level without group_id (Owner of both)",
    tag="groups",
    body=GroupTransferSchema,
    response=GroupSchema,
    status=201,
)
def transfer_group(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(GroupTransferSchema())
    number = group_id(one_segment(reference))
    runtime().lifecycle.transfer_group(principal.actor, number, params["group_id"])
    return _created_group(number)


@directory.delete("/groups/<path:reference>")
@operation(
    "Delete a group with its subgroups and projects, their deploy tokens and CI variables (Owner)",
    tag="groups",
    status=202,
)
def delete_group(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    runtime().lifecycle.delete_group(principal.actor, group_id(one_segment(reference)))
    return accepted()


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
