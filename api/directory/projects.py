"""Projects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import require_principal
from api.context import runtime
from api.directory.blueprint import accepted, created, directory, viewer
from api.directory.representations import project_fields
from api.directory.schemas import (
    ProjectCreateSchema,
    ProjectListSchema,
    ProjectSchema,
    ProjectTransferSchema,
    ProjectUpdateSchema,
)
from api.idempotency import idempotency_slot, idempotent, rebuilt
from api.openapi import operation
from api.params import load, paginate_list, paginated
from api.resources import one_segment, project_id


def _feature_switches(params: dict[str, Any]) -> dict[str, bool | None]:
    """GitLab's ``*_access_level`` ("enabled"/"private"/"disabled") and the older ``container_registry_enabled``."""
    repository = params["repository_access_level"]
    registry = params["container_registry_access_level"]
    registry_enabled = params["container_registry_enabled"]
    return {
        "repository_enabled": None if repository is None else repository != "disabled",
        "container_registry_enabled": (registry != "disabled" if registry is not None else registry_enabled),
    }


def _recreated_project(result: Mapping[str, Any]) -> Response:
    return created(
        ProjectSchema().dump(project_fields(rebuilt(runtime().read.project(int(result["project_id"])))))
    )


@directory.post("/projects")
@operation(
    "Create a project (in the caller's namespace unless namespace_id is given)",
    tag="projects",
    body=ProjectCreateSchema,
    response=ProjectSchema,
    status=201,
)
@idempotent(_recreated_project)
def create_project() -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(ProjectCreateSchema())
    # A feature not asked for keeps the service's default (both on).
    switches = {key: value for key, value in _feature_switches(params).items() if value is not None}
    number = runtime().directory.create_project(
        principal.actor,
        name=params["name"] or params["path"],
        path=params["path"],
        namespace_id=params["namespace_id"],
        repository_enabled=switches.get("repository_enabled", True),
        container_registry_enabled=switches.get("container_registry_enabled", True),
        idempotency=idempotency_slot(),
    )
    project = runtime().read.project(number)
    assert project is not None  # the service has caught the read model up with its own write
    return created(ProjectSchema().dump(project_fields(project)))


@directory.get("/projects")
@operation(
    "List the projects the caller can see",
    tag="projects",
    query=ProjectListSchema,
    response=ProjectSchema,
    many=True,
)
def list_projects() -> ResponseReturnValue:
    params = load(ProjectListSchema())
    projects = runtime().directory.projects(viewer(), search=params["search"])
    page = paginate_list(projects, params["page"], params["per_page"])
    return paginated(page, ProjectSchema(many=True).dump([project_fields(project) for project in page.items]))


@directory.get("/projects/<path:reference>")
@operation("Get a project by id or URL-encoded full path", tag="projects", response=ProjectSchema)
def get_project(reference: str) -> ResponseReturnValue:
    project = runtime().directory.project(viewer(), project_id(reference))
    return jsonify(ProjectSchema().dump(project_fields(project)))


@directory.put("/projects/<path:reference>")
@operation(
    "Update a project: name (Maintainer), path (Owner; the project's deploy tokens follow it), repository "
    "and container registry switches (Maintainer)",
    tag="projects",
    body=ProjectUpdateSchema,
    response=ProjectSchema,
)
def update_project(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(ProjectUpdateSchema())
    number = project_id(reference)
    runtime().lifecycle.update_project(
        principal.actor, number, name=params["name"], path=params["path"], **_feature_switches(params)
    )
    return _project(number)


@directory.put("/projects/<path:reference>/transfer")
@operation(
    "Transfer a project to another namespace, by id or full path (Owner, and Maintainer in a target group)",
    tag="projects",
    body=ProjectTransferSchema,
    response=ProjectSchema,
)
def transfer_project(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    params = load(ProjectTransferSchema())
    number = project_id(one_segment(reference))
    runtime().lifecycle.transfer_project(principal.actor, number, params["namespace"])
    return _project(number)


@directory.delete("/projects/<path:reference>")
@operation(
    "Delete a project, its deploy tokens and their CI variables (Owner); its path is free again",
    tag="projects",
    status=202,
)
def delete_project(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    runtime().lifecycle.delete_project(principal.actor, project_id(one_segment(reference)))
    return accepted()


def _project(number: int) -> Response:
    project = runtime().read.project(number)
    assert project is not None  # the service has caught the read model up with its own write
    return jsonify(ProjectSchema().dump(project_fields(project)))
