"""The directory, GitLab REST v4: users, groups, projects, members, application settings and features.

Views stay thin: they parse with marshmallow, call the service (where every permission rule lives) and dump
through a schema. Everything is private, as on an instance whose public visibility level is restricted:
anonymous callers see no groups or projects (404 for one, ``[]`` for a list) and no users (403 for the list,
404 for one, 401 for ``/user``). As in GitLab, writes and the members API need authentication (401).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue

from api.auth import optional_principal, require_admin, require_principal
from api.context import runtime, service
from api.directory_schemas import (
    MAX_ID,
    USER_BASIC_FIELDS,
    ApplicationSettingsSchema,
    ApplicationSettingsUpdateSchema,
    CreatedPersonalAccessTokenSchema,
    FeatureSchema,
    FeatureSetSchema,
    GroupCreateSchema,
    GroupListSchema,
    GroupSchema,
    GroupUpdateSchema,
    MemberCreateSchema,
    MemberSchema,
    MemberUpdateSchema,
    PersonalAccessTokenCreateSchema,
    ProjectCreateSchema,
    ProjectListSchema,
    ProjectSchema,
    ProjectUpdateSchema,
    UserCreateSchema,
    UserListSchema,
    UserSchema,
)
from api.idempotency import idempotency_slot, idempotent, rebuilt
from api.openapi import operation
from api.params import PaginationSchema, load, paginate_list, paginated
from api.resources import group_id, project_id
from deploy_tokens.service import Principal
from domain.deploy_token import HolderKind
from domain.directory import AccessLevel, Group, Project, stream_id
from domain.errors import Conflict, NotFound, ValidationError
from projections.credentials import NamespaceRecord, ProjectRecord
from projections.directory import MemberRecord, PersonalAccessTokenRecord, UserRecord

directory = Blueprint("directory", __name__, url_prefix="/api/v4")

A = TypeVar("A", bound=Aggregate)

_WITH_CONFLICT = (400, 401, 403, 404, 409)


# Representations -----------------------------------------------------------------------------------------


def _url(*parts: str) -> str:
    return "/".join((runtime().settings.external_url, *parts))


def user_fields(user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.user_id,
        "username": user.username,
        "name": user.name,
        "state": user.state,
        "locked": False,
        "avatar_url": None,
        "web_url": _url(user.username),
        "created_at": user.created_at,
        "bot": False,
        "email": user.email,
        "is_admin": user.is_admin,
    }


_USER_BASIC = UserSchema(only=USER_BASIC_FIELDS)


def dump_user(user: UserRecord, viewer: Principal) -> dict[str, Any]:
    """Administrators and the user themselves see everything; others see GitLab's ``UserBasic``."""
    schema = UserSchema() if viewer.user.is_admin or viewer.user.user_id == user.user_id else _USER_BASIC
    body: dict[str, Any] = schema.dump(user_fields(user))
    return body


def pat_fields(token: PersonalAccessTokenRecord) -> dict[str, Any]:
    """GitLab's personal access token; its expiry is a date (the token expires at 00:00 UTC that day)."""
    return {
        "id": token.pat_id,
        "name": token.name,
        "revoked": token.revoked,
        "created_at": token.created_at,
        "description": None,
        "scopes": list(token.scopes),
        "user_id": token.user_id,
        "last_used_at": None,
        "active": token.is_active(runtime().clock.now()),
        "expires_at": token.expires_at.date() if token.expires_at else None,
    }


def _full_name(namespace: NamespaceRecord) -> str:
    names = [_namespace(ancestor).name for ancestor in namespace.ancestor_ids]
    return " / ".join([*names, namespace.name])


def group_fields(group: NamespaceRecord) -> dict[str, Any]:
    return {
        "id": group.namespace_id,
        "web_url": _url("groups", group.full_path),
        "name": group.name,
        "path": group.path,
        "description": "",
        "visibility": "private",
        "full_name": _full_name(group),
        "full_path": group.full_path,
        "parent_id": group.parent_id,
        "avatar_url": None,
        "created_at": group.created_at,
        "dependency_proxy_enabled": group.dependency_proxy_enabled,
    }


def namespace_fields(namespace: NamespaceRecord) -> dict[str, Any]:
    if namespace.kind == "user":
        owner = runtime().read.user(namespace.namespace_id)  # a user's namespace shares the user's id
        name, web_url = (owner.name if owner else namespace.name), _url(namespace.full_path)
    else:
        name, web_url = namespace.name, _url("groups", namespace.full_path)
    return {
        "id": namespace.namespace_id,
        "name": name,
        "path": namespace.path,
        "kind": namespace.kind,
        "full_path": namespace.full_path,
        "parent_id": namespace.parent_id,
        "avatar_url": None,
        "web_url": web_url,
    }


def _level_name(enabled: bool) -> str:
    return "enabled" if enabled else "disabled"


def project_fields(project: ProjectRecord) -> dict[str, Any]:
    namespace = namespace_fields(_namespace(project.namespace_id))
    return {
        "id": project.project_id,
        "description": None,
        "name": project.name,
        "name_with_namespace": f"{namespace['name']} / {project.name}",
        "path": project.path,
        "path_with_namespace": project.full_path,
        "created_at": project.created_at,
        "default_branch": None,
        "visibility": "private",
        "web_url": _url(project.full_path),
        "http_url_to_repo": _url(f"{project.full_path}.git"),
        "avatar_url": None,
        "namespace": namespace,
        "repository_access_level": _level_name(project.repository_enabled),
        "container_registry_access_level": _level_name(project.container_registry_enabled),
        "container_registry_enabled": project.container_registry_enabled,
    }


def member_fields(member: MemberRecord, user: UserRecord) -> dict[str, Any]:
    return {
        "id": user.user_id,
        "username": user.username,
        "name": user.name,
        "state": user.state,
        "locked": False,
        "avatar_url": None,
        "web_url": _url(user.username),
        "access_level": member.access_level,
        "expires_at": None,
        "membership_state": "active",
    }


def feature_fields(name: str, enabled: bool) -> dict[str, Any]:
    return {
        "name": name,
        "state": "on" if enabled else "off",
        "gates": [{"key": "boolean", "value": enabled}],
        "definition": None,
    }


def settings_fields() -> dict[str, Any]:
    return {
        "id": 1,
        "external_authorization_service_enabled": runtime().read.instance().external_authorization_enabled,
    }


def _created(body: Any) -> Response:
    response: Response = jsonify(body)
    response.status_code = 201
    return response


# Lookups and visibility (the access levels come from the service) ----------------------------------------


def _stored_id(number: int, what: str) -> int:
    """No stored object has an id beyond 64 bits; refuse it before it reaches SQL."""
    if number > MAX_ID:
        raise NotFound(what)
    return number


def _load(cls: type[A], stream: UUID, what: str) -> A:
    try:
        aggregate: Aggregate = service().store.repository.get(stream)
    except AggregateNotFoundError:
        raise NotFound(what) from None
    if not isinstance(aggregate, cls):
        raise NotFound(what)
    return aggregate


def _group_level(principal: Principal | None, number: int) -> int:
    group = _load(Group, stream_id("namespace", number), "404 Group")
    return 0 if principal is None else service().group_access(principal.actor, group)


def _project_level(principal: Principal | None, number: int) -> int:
    project = _load(Project, stream_id("project", number), "404 Project")
    return 0 if principal is None else service().project_access(principal.actor, project)


def _namespace(number: int) -> NamespaceRecord:
    namespace = runtime().read.namespace(number)
    if namespace is None:
        raise NotFound("404 Namespace")
    return namespace


def visible_group(principal: Principal | None, reference: str) -> NamespaceRecord:
    """Groups are private: without a role there (or above it) a group does not exist (404)."""
    number = group_id(reference)
    if _group_level(principal, number) < AccessLevel.GUEST:
        raise NotFound("404 Group")
    group = runtime().read.namespace(number)
    if group is None or group.kind != "group":
        raise NotFound("404 Group")
    return group


def visible_project(principal: Principal | None, reference: str) -> ProjectRecord:
    number = project_id(reference)
    if _project_level(principal, number) < AccessLevel.GUEST:
        raise NotFound("404 Project")
    project = runtime().read.project(number)
    if project is None:
        raise NotFound("404 Project")
    return project


def _visible_groups(principal: Principal | None, groups: Iterable[NamespaceRecord]) -> list[NamespaceRecord]:
    if principal is None:
        return []
    if principal.user.is_admin:
        return list(groups)
    return [group for group in groups if _group_level(principal, group.namespace_id) >= AccessLevel.GUEST]


def _visible_projects(principal: Principal | None, projects: Iterable[ProjectRecord]) -> list[ProjectRecord]:
    if principal is None:
        return []
    if principal.user.is_admin:
        return list(projects)
    return [
        project for project in projects if _project_level(principal, project.project_id) >= AccessLevel.GUEST
    ]


def _matches(search: str | None, *values: str) -> bool:
    return search is None or any(search.lower() in value.lower() for value in values)


def _user(user_id: int) -> UserRecord:
    user = runtime().read.user(_stored_id(user_id, "404 User"))
    if user is None:
        raise NotFound("404 User")
    return user


def _admin_writer() -> Principal:
    """An administrator whose token may write (scope ``api``)."""
    require_principal(writes=True)
    return require_admin()


# Users -----------------------------------------------------------------------------------------------------


def _recreated_user(result: Mapping[str, Any]) -> Response:
    principal = require_principal()
    return _created(dump_user(rebuilt(runtime().read.user(int(result["user_id"]))), principal))


@directory.post("/users")
@operation(
    "Create a user (administrators)",
    tag="users",
    body=UserCreateSchema,
    response=UserSchema,
    status=201,
    errors=_WITH_CONFLICT,
)
@idempotent(_recreated_user)
def create_user() -> ResponseReturnValue:
    principal = _admin_writer()
    params = load(UserCreateSchema())
    try:
        user = service().register_user(
            principal.actor,
            username=params["username"],
            email=params["email"],
            name=params["name"],
            is_admin=params["admin"],
            idempotency=idempotency_slot(),
        )
    except ValidationError as error:
        if error.errors.get("username") == ["has already been taken"]:
            raise Conflict("Username has already been taken") from None  # GitLab answers 409 here
        raise
    return _created(dump_user(user, principal))


@directory.get("/users")
@operation("List users", tag="users", query=UserListSchema, response=UserSchema, many=True)
def list_users() -> ResponseReturnValue:
    principal = require_principal(anonymous="403")
    params = load(UserListSchema())
    users = [
        user
        for user in runtime().read.users()
        if (params["username"] is None or user.username.lower() == params["username"].lower())
        and _matches(params["search"], user.username, user.name, user.email)
    ]
    page = paginate_list(users, params["page"], params["per_page"])
    return paginated(page, [dump_user(user, principal) for user in page.items])


@directory.get("/users/<int:user_id>")
@operation("Get a user", tag="users", response=UserSchema)
def get_user(user_id: int) -> ResponseReturnValue:
    principal = optional_principal()
    if principal is None:
        raise NotFound("404 User")
    return jsonify(dump_user(_user(user_id), principal))


@directory.get("/user")
@operation("The current user", tag="users", response=UserSchema, errors=(401,))
def current_user() -> ResponseReturnValue:
    principal = require_principal()
    return jsonify(dump_user(_user(principal.user.user_id), principal))


def _set_blocked(user_id: int, blocked: bool) -> ResponseReturnValue:
    principal = _admin_writer()
    service().set_user_blocked(principal.actor, _stored_id(user_id, "404 User"), blocked)
    return _created(True)


@directory.post("/users/<int:user_id>/block")
@operation("Block a user (administrators); answers true", tag="users", status=201)
def block_user(user_id: int) -> ResponseReturnValue:
    return _set_blocked(user_id, True)


@directory.post("/users/<int:user_id>/unblock")
@operation("Unblock a user (administrators); answers true", tag="users", status=201)
def unblock_user(user_id: int) -> ResponseReturnValue:
    return _set_blocked(user_id, False)


def _created_pat(token: PersonalAccessTokenRecord, value: str) -> Response:
    response = _created(CreatedPersonalAccessTokenSchema().dump({**pat_fields(token), "token": value}))
    response.headers["Cache-Control"] = "no-store"  # the one response that carries the secret
    return response


def _recreated_pat(result: Mapping[str, Any], *_: Any, **__: Any) -> Response:
    value = str(result["token"])
    found = rebuilt(runtime().read.personal_access_token(runtime().keys.digest(value)))
    return _created_pat(found[0], value)


@directory.post("/users/<int:user_id>/personal_access_tokens")
@operation(
    "Create a personal access token for a user (administrators; the value is in this response only)",
    tag="users",
    body=PersonalAccessTokenCreateSchema,
    response=CreatedPersonalAccessTokenSchema,
    status=201,
)
@idempotent(_recreated_pat)
def create_personal_access_token(user_id: int) -> ResponseReturnValue:
    principal = _admin_writer()
    params = load(PersonalAccessTokenCreateSchema())
    issued = service().create_personal_access_token(
        principal.actor,
        _stored_id(user_id, "404 User"),
        name=params["name"],
        scopes=params["scopes"],
        expires_at=params["expires_at"],
        idempotency=idempotency_slot(),
    )
    return _created_pat(issued.token, issued.value)


# Groups ----------------------------------------------------------------------------------------------------


def _created_group(number: int) -> Response:
    return _created(GroupSchema().dump(group_fields(_namespace(number))))


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
    number = service().create_group(
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
    groups = [
        group
        for group in runtime().read.groups()
        if (group.parent_id is None or not params["top_level_only"])
        and _matches(params["search"], group.name, group.path)
    ]
    page = paginate_list(_visible_groups(optional_principal(), groups), params["page"], params["per_page"])
    return paginated(page, GroupSchema(many=True).dump([group_fields(group) for group in page.items]))


@directory.get("/groups/<path:reference>")
@operation("Get a group by id or URL-encoded full path", tag="groups", response=GroupSchema)
def get_group(reference: str) -> ResponseReturnValue:
    return jsonify(GroupSchema().dump(group_fields(visible_group(optional_principal(), reference))))


@directory.put("/groups/<path:reference>")
@operation(
    "Update a group: the dependency proxy switch (Owner)",
    tag="groups",
    body=GroupUpdateSchema,
    response=GroupSchema,
)
def update_group(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    group = visible_group(principal, reference)
    params = load(GroupUpdateSchema())
    service().set_dependency_proxy(principal.actor, group.namespace_id, params["dependency_proxy_enabled"])
    return jsonify(GroupSchema().dump(group_fields(_namespace(group.namespace_id))))


@directory.get("/groups/<path:reference>/subgroups")
@operation(
    "List a group's direct subgroups", tag="groups", query=GroupListSchema, response=GroupSchema, many=True
)
def list_subgroups(reference: str) -> ResponseReturnValue:
    principal = optional_principal()
    parent = visible_group(principal, reference)
    params = load(GroupListSchema())
    children = [
        group
        for group in runtime().read.groups(parent_id=parent.namespace_id, only_children=True)
        if _matches(params["search"], group.name, group.path)
    ]
    page = paginate_list(_visible_groups(principal, children), params["page"], params["per_page"])
    return paginated(page, GroupSchema(many=True).dump([group_fields(group) for group in page.items]))


# Projects --------------------------------------------------------------------------------------------------


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
    return _created(
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
    number = service().create_project(
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
    return _created(ProjectSchema().dump(project_fields(project)))


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
    projects = [
        project
        for project in runtime().read.projects()
        if _matches(params["search"], project.name, project.path, project.full_path)
    ]
    page = paginate_list(
        _visible_projects(optional_principal(), projects), params["page"], params["per_page"]
    )
    return paginated(page, ProjectSchema(many=True).dump([project_fields(project) for project in page.items]))


@directory.get("/projects/<path:reference>")
@operation("Get a project by id or URL-encoded full path", tag="projects", response=ProjectSchema)
def get_project(reference: str) -> ResponseReturnValue:
    return jsonify(ProjectSchema().dump(project_fields(visible_project(optional_principal(), reference))))


@directory.put("/projects/<path:reference>")
@operation(
    "Switch a project's repository or container registry on or off (Maintainer)",
    tag="projects",
    body=ProjectUpdateSchema,
    response=ProjectSchema,
)
def update_project(reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    project = visible_project(principal, reference)
    params = load(ProjectUpdateSchema())
    service().change_project_features(principal.actor, project.project_id, **_feature_switches(params))
    updated = runtime().read.project(project.project_id)
    assert updated is not None
    return jsonify(ProjectSchema().dump(project_fields(updated)))


# Members of groups and projects ----------------------------------------------------------------------------


def _source(kind: str, principal: Principal | None, reference: str) -> int:
    if kind == "project":
        return visible_project(principal, reference).project_id
    return visible_group(principal, reference).namespace_id


def _members(kind: str, source: int) -> dict[int, tuple[MemberRecord, UserRecord]]:
    return {user.user_id: (member, user) for member, user in runtime().read.members(kind, source)}


def _member(kind: str, source: int, user_id: int) -> dict[str, Any]:
    found = _members(kind, source).get(user_id)
    if found is None:
        raise NotFound("404 Member")
    body: dict[str, Any] = MemberSchema().dump(member_fields(*found))
    return body


def list_members(kind: str, reference: str) -> ResponseReturnValue:
    source = _source(kind, require_principal(), reference)
    params = load(PaginationSchema())
    page = paginate_list(list(_members(kind, source).values()), params["page"], params["per_page"])
    return paginated(page, MemberSchema(many=True).dump([member_fields(*found) for found in page.items]))


def get_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    source = _source(kind, require_principal(), reference)
    return jsonify(_member(kind, source, user_id))


def _recreated_member(result: Mapping[str, Any], kind: str, reference: str) -> Response:
    source = project_id(reference) if kind == "project" else group_id(reference)
    return _created(_member(kind, source, int(result["user_id"])))


@idempotent(_recreated_member)
def add_member(kind: str, reference: str) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    params = load(MemberCreateSchema())
    # Anyone who can see the source can list its members, so saying "already a member" reveals nothing.
    if params["user_id"] in _members(kind, source):
        raise Conflict("Member already exists")
    service().set_member(
        principal.actor,
        _holder(kind),
        source,
        params["user_id"],
        params["access_level"],
        idempotency=idempotency_slot(),
    )
    return _created(_member(kind, source, params["user_id"]))


def update_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    params = load(MemberUpdateSchema())
    _member(kind, source, user_id)  # GitLab finds the member (404) before it checks the caller's role (403)
    service().set_member(principal.actor, _holder(kind), source, user_id, params["access_level"])
    return jsonify(_member(kind, source, user_id))


def remove_member(kind: str, reference: str, user_id: int) -> ResponseReturnValue:
    principal = require_principal(writes=True)
    source = _source(kind, principal, reference)
    service().remove_member(principal.actor, _holder(kind), source, user_id)
    return "", 204


def _holder(kind: str) -> HolderKind:
    return "project" if kind == "project" else "group"


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
            errors=_WITH_CONFLICT,
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


# Application settings and features -------------------------------------------------------------------------


@directory.get("/application/settings")
@operation("Application settings (administrators)", tag="settings", response=ApplicationSettingsSchema)
def get_settings() -> ResponseReturnValue:
    require_admin()
    return jsonify(ApplicationSettingsSchema().dump(settings_fields()))


@directory.put("/application/settings")
@operation(
    "Change application settings: external authorization (administrators)",
    tag="settings",
    body=ApplicationSettingsUpdateSchema,
    response=ApplicationSettingsSchema,
)
def update_settings() -> ResponseReturnValue:
    principal = _admin_writer()
    params = load(ApplicationSettingsUpdateSchema())
    service().set_external_authorization(principal.actor, params["external_authorization_service_enabled"])
    return jsonify(ApplicationSettingsSchema().dump(settings_fields()))


# python-gitlab lists ``/features/`` (its path ends in a slash), so the rule accepts both spellings.
@directory.route("/features", methods=["GET"], strict_slashes=False)
@operation("List feature flags (administrators)", tag="features", response=FeatureSchema, many=True)
def list_features() -> ResponseReturnValue:
    require_admin()
    features = runtime().read.instance().features
    return jsonify(
        FeatureSchema(many=True).dump([feature_fields(*item) for item in sorted(features.items())])
    )


@directory.post("/features/<name>")
@operation(
    "Switch a feature flag on or off (administrators)",
    tag="features",
    body=FeatureSetSchema,
    response=FeatureSchema,
    status=201,
)
def set_feature(name: str) -> ResponseReturnValue:
    principal = _admin_writer()
    params = load(FeatureSetSchema())
    service().set_feature(principal.actor, name, params["value"])
    enabled = runtime().read.instance().features.get(name, False)
    return _created(FeatureSchema().dump(feature_fields(name, enabled)))
