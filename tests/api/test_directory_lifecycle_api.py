"""GitLab's project and group lifecycle routes (delete, rename, transfer) and unique user emails, through the
Flask app on both backends (behaviour [holder-id], [old-paths], [holder-delete], [holder-lifecycle-roles],
[unique-email], [history-paths])."""

from __future__ import annotations

import base64
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from deploy_tokens.runtime import Runtime
from deploy_tokens.tokens import IssuedToken

from ..conftest import T0, World, backend  # noqa: F401  (both backends: the lifecycle writes to the database)
from .conftest import Credentials


def nginx_clone(client: FlaskClient, token: IssuedToken, path: str) -> TestResponse:
    credentials = base64.b64encode(f"{token.token.username}:{token.value}".encode()).decode()
    return client.get(
        "/internal/auth_request",
        headers={
            "X-Original-URI": f"/{path}.git/info/refs?service=git-upload-pack",
            "X-Original-Method": "GET",
            "X-Original-Remote-Addr": "192.0.2.10",
            "Authorization": f"Basic {credentials}",
        },
    )


def issue(world: World, kind: str, holder: int, name: str = "deploy") -> IssuedToken:
    return world.runtime.tokens.create_token(
        world.admin,
        kind,  # type: ignore[arg-type]
        holder,
        name=name,
        scopes=["read_repository"],
    )


# Deleting ----------------------------------------------------------------------------------------------


def test_delete_project_answers_202_and_the_project_and_its_tokens_are_gone(
    client: FlaskClient, world: World, creds: Credentials
):
    token = issue(world, "project", world.project)
    url = f"/api/v4/projects/{world.project}"
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers=creds["outsider"]).status_code == 404
    assert client.delete(url, headers=creds["maintainer"]).status_code == 403
    answer = client.delete("/api/v4/projects/acme%2Fapi", headers=creds["owner"])
    assert (answer.status_code, answer.get_json()) == (202, {"message": "202 Accepted"})
    assert client.get(url, headers=creds["admin"]).status_code == 404
    assert client.get(f"{url}/deploy_tokens", headers=creds["admin"]).status_code == 404
    assert client.delete(url, headers=creds["admin"]).status_code == 404
    assert nginx_clone(client, token, "acme/api").status_code == 401  # a deleted token is a bad credential
    again = client.post(
        "/api/v4/projects", json={"name": "api", "namespace_id": world.top}, headers=creds["admin"]
    )
    assert again.status_code == 201 and again.get_json()["id"] != world.project


def test_delete_group_answers_202_and_takes_what_is_below_it(
    client: FlaskClient, world: World, creds: Credentials
):
    token = issue(world, "group", world.sub)
    url = f"/api/v4/groups/{world.top}"
    assert client.delete(url, headers=creds["group_maintainer"]).status_code == 403
    answer = client.delete(url, headers=creds["owner"])
    assert (answer.status_code, answer.get_json()) == (202, {"message": "202 Accepted"})
    for gone in (url, f"/api/v4/groups/{world.subsub}", f"/api/v4/projects/{world.deep_project}"):
        assert client.get(gone, headers=creds["admin"]).status_code == 404
    assert nginx_clone(client, token, "acme/backend/services/db").status_code == 401
    paths = [group["full_path"] for group in client.get("/api/v4/groups", headers=creds["admin"]).get_json()]
    assert paths == ["other"]


def test_destructive_routes_take_an_id_or_an_encoded_path_never_bare_slashes(
    client: FlaskClient, world: World, creds: Credentials
):
    assert client.delete("/api/v4/projects/acme/api", headers=creds["admin"]).status_code == 404
    assert client.get(f"/api/v4/projects/{world.project}", headers=creds["admin"]).status_code == 200


# Renaming ----------------------------------------------------------------------------------------------


def test_put_project_renames_it_and_its_token_follows(client: FlaskClient, world: World, creds: Credentials):
    token = issue(world, "project", world.project)
    url = f"/api/v4/projects/{world.project}"
    named = client.put(url, json={"name": "API v2"}, headers=creds["maintainer"])
    assert named.status_code == 200 and named.get_json()["name"] == "API v2"
    assert client.put(url, json={"path": "api-v2"}, headers=creds["maintainer"]).status_code == 403
    moved = client.put(url, json={"path": "api-v2"}, headers=creds["owner"])
    assert moved.status_code == 200
    assert moved.get_json()["path_with_namespace"] == "acme/api-v2"
    assert nginx_clone(client, token, "acme/api-v2").status_code == 200
    assert nginx_clone(client, token, "acme/api").status_code == 403  # no redirect: the old path is nothing
    assert client.get("/api/v4/projects/acme%2Fapi", headers=creds["admin"]).status_code == 404


def test_put_project_refuses_a_taken_or_reserved_path_and_writes_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    client.post("/api/v4/projects", json={"path": "taken", "namespace_id": world.top}, headers=creds["admin"])
    url = f"/api/v4/projects/{world.project}"
    taken = client.put(url, json={"path": "taken", "name": "New name"}, headers=creds["owner"])
    assert (taken.status_code, taken.get_json()) == (400, {"message": {"path": ["has already been taken"]}})
    reserved = client.put(url, json={"path": "info"}, headers=creds["owner"])
    assert reserved.status_code == 400 and reserved.get_json()["message"] == {
        "path": ["info is a reserved name"]
    }
    assert client.get(url, headers=creds["owner"]).get_json()["name"] == "Api"


def test_put_group_renames_it_and_everything_below_moves(
    client: FlaskClient, world: World, creds: Credentials
):
    token = issue(world, "project", world.deep_project)
    url = f"/api/v4/groups/{world.top}"
    assert client.put(url, json={"path": "acme-inc"}, headers=creds["group_maintainer"]).status_code == 403
    answer = client.put(url, json={"name": "Acme Inc", "path": "acme-inc"}, headers=creds["owner"])
    assert answer.status_code == 200
    assert (answer.get_json()["name"], answer.get_json()["full_path"]) == ("Acme Inc", "acme-inc")
    project = client.get(f"/api/v4/projects/{world.deep_project}", headers=creds["admin"]).get_json()
    assert project["path_with_namespace"] == "acme-inc/backend/services/db"
    assert nginx_clone(client, token, "acme-inc/backend/services/db").status_code == 200
    taken = client.put(f"/api/v4/groups/{world.sibling}", json={"path": "acme-inc"}, headers=creds["admin"])
    assert (taken.status_code, taken.get_json()) == (400, {"message": {"path": ["has already been taken"]}})


# Transferring ------------------------------------------------------------------------------------------


def test_transfer_project_by_namespace_id_or_path(client: FlaskClient, world: World, creds: Credentials):
    group_token = issue(world, "group", world.top)
    url = f"/api/v4/projects/{world.sibling_project}/transfer"
    assert client.put(url, json={"namespace": world.top}, headers=creds["owner"]).status_code == 404
    moved = client.put(url, json={"namespace": "acme/backend"}, headers=creds["admin"])
    assert moved.status_code == 200
    assert moved.get_json()["path_with_namespace"] == "acme/backend/elsewhere"
    assert moved.get_json()["namespace"]["id"] == world.sub
    assert nginx_clone(client, group_token, "acme/backend/elsewhere").status_code == 200
    back = client.put(url, data={"namespace": str(world.sibling)}, headers=creds["admin"])
    assert back.status_code == 200 and back.get_json()["path_with_namespace"] == "other/elsewhere"
    assert nginx_clone(client, group_token, "other/elsewhere").status_code == 403
    same = client.put(url, json={"namespace": world.sibling}, headers=creds["admin"])
    assert same.status_code == 400
    assert same.get_json() == {
        "message": "Failed to transfer project: Please select a new namespace for your project."
    }
    assert client.put(url, json={"namespace": "nowhere"}, headers=creds["admin"]).status_code == 404
    assert client.put(url, json={}, headers=creds["admin"]).get_json() == {"error": "namespace is missing"}


def test_transfer_group_under_another_group_or_to_the_top_level(
    client: FlaskClient, world: World, creds: Credentials
):
    top_token = issue(world, "group", world.top)
    url = f"/api/v4/groups/{world.sub}/transfer"
    assert client.post(url, json={"group_id": world.sibling}, headers=creds["owner"]).status_code == 404
    moved = client.post(url, json={"group_id": world.sibling}, headers=creds["admin"])
    assert moved.status_code == 201
    assert (moved.get_json()["full_path"], moved.get_json()["parent_id"]) == ("other/backend", world.sibling)
    assert nginx_clone(client, top_token, "other/backend/services/db").status_code == 403
    top_level = client.post(url, headers=creds["admin"])
    assert top_level.status_code == 201 and top_level.get_json()["full_path"] == "backend"
    again = client.post(url, headers=creds["admin"])
    assert (again.status_code, again.get_json()) == (
        400,
        {"message": "Transfer failed: Group is already a root group."},
    )
    into_itself = client.post(
        f"/api/v4/groups/{world.sub}/transfer", json={"group_id": world.subsub}, headers=creds["admin"]
    )
    assert into_itself.status_code == 400


# Users' emails -----------------------------------------------------------------------------------------


def test_an_email_another_user_has_is_a_conflict_as_in_gitlab(
    client: FlaskClient, world: World, creds: Credentials
):
    body = {"username": "twin", "name": "Twin", "email": "GUEST@example.com", "password": "x" * 12}
    created = client.post("/api/v4/users", json=body, headers=creds["admin"])
    assert (created.status_code, created.get_json()) == (409, {"message": "Email has already been taken"})
    outsider = world.users["outsider"].user_id
    url = f"/api/v4/users/{outsider}"
    assert client.put(url, json={"email": "guest@example.com"}, headers=creds["admin"]).status_code == 409
    assert client.put(url, json={"email": "new@example.com"}, headers=creds["outsider"]).status_code == 403
    changed = client.put(url, json={"email": "new@example.com", "name": "New"}, headers=creds["admin"])
    assert changed.status_code == 200
    assert (changed.get_json()["email"], changed.get_json()["name"]) == ("new@example.com", "New")
    reuse = {**body, "email": "outsider@example.com"}
    assert client.post("/api/v4/users", json=reuse, headers=creds["admin"]).status_code == 201


# History -----------------------------------------------------------------------------------------------


def test_point_in_time_answers_name_the_path_of_that_moment(
    client: FlaskClient, world: World, creds: Credentials
):
    clock = world.runtime.clock
    clock.set(T0 + timedelta(hours=1))  # type: ignore[attr-defined]
    token = issue(world, "project", world.project)
    clock.set(T0 + timedelta(hours=2))  # type: ignore[attr-defined]
    client.put(f"/api/v4/projects/{world.project}", json={"path": "renamed"}, headers=creds["admin"])
    before = "2026-01-10T13:30:00Z"
    state = client.get(
        f"/api/v4/deploy_tokens/{token.token.token_id}/state",
        query_string={"at": before},
        headers=creds["admin"],
    ).get_json()
    assert (state["holder_path"], state["holder_deleted"]) == ("acme/api", False)
    then = client.get(
        "/api/v4/projects/acme%2Fapi/deploy_token_access",
        query_string={"at": before, "action": "git_read"},
        headers=creds["admin"],
    )
    assert then.status_code == 200
    assert [(row["token_id"], row["holder_path"]) for row in then.get_json()] == [
        (token.token.token_id, "acme/api")
    ]
    now = client.get(
        "/api/v4/projects/acme%2Fapi/deploy_token_access",
        query_string={"at": "2026-01-10T14:30:00Z", "action": "git_read"},
        headers=creds["admin"],
    )
    assert now.status_code == 404


def test_an_export_finds_a_deleted_project_by_the_path_it_had(
    client: FlaskClient, world: World, creds: Credentials
):
    token = issue(world, "project", world.project)
    client.delete(f"/api/v4/projects/{world.project}", headers=creds["admin"])
    export = client.get(
        "/api/v4/audit/exports/lifecycle.jsonl", query_string={"project": "acme/api"}, headers=creds["admin"]
    )
    assert export.status_code == 200
    types = [line for line in export.get_data(as_text=True).splitlines() if str(token.token.token_id) in line]
    assert any('"deploy_token_destroyed"' in line for line in types)


def test_a_second_app_on_the_same_database_refuses_a_deleted_project_token_at_once(
    client: FlaskClient, world: World, creds: Credentials, runtime: Runtime
):
    token = issue(world, "project", world.project)
    with Runtime.open(runtime.settings, clock=runtime.clock) as other:
        second: Flask = create_app(other)
        other_client = second.test_client()
        assert nginx_clone(other_client, token, "acme/api").status_code == 200
        client.delete(f"/api/v4/projects/{world.project}", headers=creds["admin"])
        other.index.refresh()  # what its follower does when the projector's notification arrives
        assert nginx_clone(other_client, token, "acme/api").status_code == 401
