"""The real ``python-gitlab`` client, unchanged, against a live server (a WSGI server on a free port).

The directory is built through the client too (users, their access tokens, nested groups, projects,
members), then each role drives the deploy-token endpoints as GitLab's documentation shows them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import gitlab
import pytest
from flask import Flask
from gitlab.const import AccessLevel
from werkzeug.serving import make_server

from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock

from ..conftest import T0


@pytest.fixture
def server(app: Flask, runtime: Runtime) -> Iterator[str]:
    live = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{live.server_port}"
    # The instance's external URL is the one clients use (python-gitlab compares web_url with it).
    runtime.settings = dataclasses.replace(runtime.settings, external_url=url)
    thread = threading.Thread(target=live.serve_forever, name="live-api", daemon=True)
    thread.start()
    try:
        yield url
    finally:
        live.shutdown()
        thread.join(timeout=10)
        live.server_close()


@pytest.fixture
def admin(server: str, runtime: Runtime) -> gitlab.Gitlab:
    _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
    return gitlab.Gitlab(server, private_token=issued.value, retry_transient_errors=False)


@dataclass
class Directory:
    """What the admin set up through python-gitlab, and a client per role."""

    top: int
    sub: int
    project: int
    other_project: int
    maintainer: gitlab.Gitlab
    developer: gitlab.Gitlab
    owner: gitlab.Gitlab
    group_maintainer: gitlab.Gitlab


def client_for(admin: gitlab.Gitlab, username: str) -> tuple[int, gitlab.Gitlab]:
    user = admin.users.create(
        {
            "username": username,
            "email": f"{username}@example.com",
            "name": username.title(),
            "password": "x" * 12,
        }
    )
    token = user.personal_access_tokens.create({"name": "api", "scopes": ["api"]})
    return user.id, gitlab.Gitlab(admin.url, private_token=token.token, retry_transient_errors=False)


@pytest.fixture
def directory(admin: gitlab.Gitlab) -> Directory:
    users = {
        name: client_for(admin, name) for name in ("maintainer", "developer", "owner", "group_maintainer")
    }
    top = admin.groups.create({"name": "Acme", "path": "acme"})
    sub = admin.groups.create({"name": "Backend", "path": "backend", "parent_id": top.id})
    project = admin.projects.create({"name": "Api", "namespace_id": top.id})
    other = admin.projects.create({"name": "Other", "path": "other", "namespace_id": sub.id})
    project.members.create({"user_id": users["maintainer"][0], "access_level": AccessLevel.MAINTAINER})
    project.members.create({"user_id": users["developer"][0], "access_level": AccessLevel.DEVELOPER})
    top.members.create({"user_id": users["owner"][0], "access_level": AccessLevel.OWNER})
    top.members.create({"user_id": users["group_maintainer"][0], "access_level": AccessLevel.MAINTAINER})
    return Directory(
        top.id,
        sub.id,
        project.id,
        other.id,
        maintainer=users["maintainer"][1],
        developer=users["developer"][1],
        owner=users["owner"][1],
        group_maintainer=users["group_maintainer"][1],
    )


def test_directory_through_python_gitlab(admin: gitlab.Gitlab, directory: Directory):
    admin.auth()
    assert admin.user is not None
    assert (admin.user.username, admin.user.is_admin) == ("root", True)

    found = admin.users.list(username="developer")
    assert [user.username for user in found] == ["developer"]
    developer = admin.users.get(found[0].id)
    assert (developer.email, developer.state) == ("developer@example.com", "active")
    assert developer.block() is True
    assert developer.state == "blocked"
    with pytest.raises(gitlab.GitlabAuthenticationError):
        directory.developer.auth()
    assert developer.unblock() is True
    directory.developer.auth()

    group = admin.groups.get("acme/backend")
    assert (group.id, group.full_path, group.parent_id) == (directory.sub, "acme/backend", directory.top)
    top = admin.groups.get(directory.top)
    assert [subgroup.full_path for subgroup in top.subgroups.list(get_all=True)] == ["acme/backend"]
    assert [g.full_path for g in directory.owner.groups.list(get_all=True)] == ["acme", "acme/backend"]

    project = admin.projects.get("acme/api")
    assert (project.id, project.path_with_namespace) == (directory.project, "acme/api")
    assert (project.namespace["id"], project.namespace["kind"]) == (directory.top, "group")
    project.container_registry_access_level = "disabled"
    project.save()
    assert admin.projects.get(project.id).container_registry_enabled is False

    members = {member.username: member.access_level for member in project.members.list(get_all=True)}
    assert members == {"root": 40, "maintainer": 40, "developer": 30}
    member = project.members.get(developer.id)
    member.access_level = AccessLevel.REPORTER
    member.save()
    assert project.members.get(developer.id).access_level == 20
    project.members.delete(developer.id)
    with pytest.raises(gitlab.GitlabGetError) as missing:
        project.members.get(developer.id)
    assert missing.value.response_code == 404
    top.members.create({"user_id": developer.id, "access_level": AccessLevel.DEVELOPER})
    with pytest.raises(gitlab.GitlabCreateError) as duplicate:
        top.members.create({"user_id": developer.id, "access_level": AccessLevel.DEVELOPER})
    assert duplicate.value.response_code == 409

    settings = admin.settings.get()
    assert settings.external_authorization_service_enabled is False
    settings.external_authorization_service_enabled = True
    settings.save()
    assert admin.settings.get().external_authorization_service_enabled is True

    feature = admin.features.set("project_deploy_token_expiring_notifications", False)
    assert (feature.name, feature.state) == ("project_deploy_token_expiring_notifications", "off")
    assert [(f.name, f.state) for f in admin.features.list()] == [
        ("project_deploy_token_expiring_notifications", "off")
    ]
    with pytest.raises(gitlab.GitlabListError) as forbidden:
        directory.owner.features.list()
    assert forbidden.value.response_code == 403


def test_project_deploy_tokens_as_maintainer(directory: Directory, clock: FixedClock):
    project = directory.maintainer.projects.get(directory.project)
    created = project.deploytokens.create(
        {
            "name": "ci",
            "scopes": ["read_repository", "read_registry"],
            "expires_at": "2027-03-15T08:00:00Z",
            "username": "deployer",
        }
    )
    assert created.token.startswith("gldt-")
    assert (created.username, created.expires_at) == ("deployer", "2027-03-15T08:00:00.000Z")
    assert created.scopes == ["read_repository", "read_registry"]
    fetched = project.deploytokens.get(created.id)
    assert fetched.name == "ci"
    assert "token" not in fetched.attributes
    listed = project.deploytokens.list(get_all=True)
    assert [token.id for token in listed] == [created.id]
    project.deploytokens.delete(created.id)
    assert project.deploytokens.list(get_all=True) == []

    ids = [project.deploytokens.create({"name": f"t{i}", "scopes": ["read_repository"]}).id for i in range(5)]
    second_page = project.deploytokens.list(per_page=2, page=2)
    assert [token.id for token in second_page] == ids[2:4]
    walked = project.deploytokens.list(iterator=True, per_page=2)
    assert (walked.total, walked.total_pages, walked.per_page) == (5, 3, 2)
    assert [token.id for token in walked] == ids
    assert [token.id for token in project.deploytokens.list(get_all=True, per_page=2)] == ids

    # The active filter: one token revoked (an extension endpoint), one expired.
    directory.maintainer.http_post(f"/projects/{project.id}/deploy_tokens/{ids[0]}/revoke")
    expiring = project.deploytokens.create(
        {"name": "short", "scopes": ["read_repository"], "expires_at": (T0 + timedelta(days=1)).isoformat()}
    )
    clock.set(T0 + timedelta(days=2))
    assert [token.id for token in project.deploytokens.list(active=True, get_all=True)] == ids[1:]
    everything = {token.id: token for token in project.deploytokens.list(get_all=True)}
    assert everything[ids[0]].revoked is True
    assert everything[expiring.id].expired is True

    token = project.deploytokens.get(ids[1])
    token.delete()
    with pytest.raises(gitlab.GitlabGetError) as gone:
        project.deploytokens.get(ids[1])
    assert gone.value.response_code == 404


def test_group_deploy_tokens_as_owner(directory: Directory):
    group = directory.owner.groups.get(directory.top)
    created = group.deploytokens.create({"name": "group", "scopes": ["read_registry", "write_registry"]})
    assert created.username == f"gitlab+deploy-token-{created.id}"
    assert [token.id for token in group.deploytokens.list(get_all=True)] == [created.id]
    maintained = directory.group_maintainer.groups.get(directory.top, lazy=True)
    assert [token.id for token in maintained.deploytokens.list(get_all=True)] == [created.id]
    with pytest.raises(gitlab.GitlabCreateError) as refused:
        maintained.deploytokens.create({"name": "nope", "scopes": ["read_registry"]})
    assert refused.value.response_code == 403
    with pytest.raises(gitlab.GitlabDeleteError) as not_allowed:
        maintained.deploytokens.delete(created.id)
    assert not_allowed.value.response_code == 403
    group.deploytokens.get(created.id).delete()
    assert group.deploytokens.list(get_all=True) == []


def test_instance_list_as_admin(admin: gitlab.Gitlab, directory: Directory):
    project = directory.maintainer.projects.get(directory.project, lazy=True)
    group = directory.owner.groups.get(directory.top, lazy=True)
    project_token = project.deploytokens.create({"name": "p", "scopes": ["read_repository"]})
    group_token = group.deploytokens.create({"name": "g", "scopes": ["read_repository"]})
    assert [token.id for token in admin.deploytokens.list(get_all=True)] == [project_token.id, group_token.id]
    with pytest.raises(gitlab.GitlabListError) as forbidden:
        directory.owner.deploytokens.list(get_all=True)
    assert forbidden.value.response_code == 403


def test_errors_as_python_gitlab_exceptions(directory: Directory):
    project = directory.maintainer.projects.get(directory.project, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as bad_scope:
        project.deploytokens.create({"name": "x", "scopes": ["write_repository"]})
    assert bad_scope.value.response_code == 400
    assert bad_scope.value.error_message == "scopes does not have a valid value"
    with pytest.raises(gitlab.GitlabCreateError) as missing:
        project.deploytokens.create({"name": "x", "scopes": []})
    assert missing.value.response_code == 400

    as_developer = directory.developer.projects.get(directory.project, lazy=True)
    with pytest.raises(gitlab.GitlabCreateError) as developer_create:
        as_developer.deploytokens.create({"name": "x", "scopes": ["read_repository"]})
    assert developer_create.value.response_code == 403
    with pytest.raises(gitlab.GitlabListError) as developer_list:
        as_developer.deploytokens.list(get_all=True)
    assert developer_list.value.response_code == 403

    owner_group = directory.owner.groups.get(directory.top, lazy=True)
    foreign = owner_group.deploytokens.create({"name": "group", "scopes": ["read_repository"]})
    with pytest.raises(gitlab.GitlabGetError) as not_here:
        project.deploytokens.get(foreign.id)
    assert not_here.value.response_code == 404
    with pytest.raises(gitlab.GitlabDeleteError) as not_deletable:
        project.deploytokens.delete(foreign.id)
    assert not_deletable.value.response_code == 404

    with pytest.raises(gitlab.GitlabGetError) as hidden:
        directory.developer.projects.get(directory.other_project)
    assert hidden.value.response_code == 404
