"""How the directory's records read in GitLab's REST v4: the fields of users, tokens, groups, projects,
namespaces, members, features and settings, before a schema dumps them."""

from __future__ import annotations

from typing import Any

from api.context import runtime
from api.directory.schemas import USER_BASIC_FIELDS, UserSchema
from domain.actors import Actor
from domain.errors import NotFound
from projections.credentials import NamespaceRecord, ProjectRecord
from projections.directory import MemberRecord, PersonalAccessTokenRecord, UserRecord


def _url(*parts: str) -> str:
    return "/".join((runtime().settings.external_url, *parts))


def user_fields(user: UserRecord, *, is_auditor: bool = False) -> dict[str, Any]:
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
        "is_auditor": is_auditor,
    }


_USER_BASIC = UserSchema(only=USER_BASIC_FIELDS)
_USER_WHOLE = UserSchema()


def dump_user(user: UserRecord, viewer: Actor | None) -> dict[str, Any]:
    """Every field, or GitLab's ``UserBasic``, as the access rules let the viewer see the user."""
    return dump_users([user], viewer)[0]


def dump_users(users: list[UserRecord], viewer: Actor | None) -> list[dict[str, Any]]:
    """Each user as ``dump_user`` has it; the auditor flags of those seen whole are read in one go."""
    access = runtime().access
    whole = {user.user_id for user in users if access.sees_whole_profile(viewer, user.user_id)}
    auditors = runtime().directory.auditor_ids(whole) if whole else set()
    return [
        _USER_WHOLE.dump(user_fields(user, is_auditor=user.user_id in auditors))
        if user.user_id in whole
        else _USER_BASIC.dump(user_fields(user))
        for user in users
    ]


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


def _namespace(number: int) -> NamespaceRecord:
    namespace = runtime().read.namespace(number)
    if namespace is None:
        raise NotFound("404 Namespace")
    return namespace


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


def group_fields_of(number: int) -> dict[str, Any]:
    """A group as the read model has it now (after a write: the service has caught it up)."""
    return group_fields(_namespace(number))


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
        "deploy_token_oidc_issuers": list(runtime().trust_policies.trusted_issuers()),
    }
