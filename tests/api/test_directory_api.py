"""Directory endpoints (users, groups, projects, members, settings, features): shapes and status codes."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from ..conftest import World
from .conftest import Credentials

USER_BASIC = {"id", "username", "name", "state", "locked", "avatar_url", "web_url"}
USER_FULL = USER_BASIC | {"created_at", "bot", "email", "is_admin", "is_auditor"}  # behaviour [auditors]
GROUP_FIELDS = {
    "id",
    "web_url",
    "name",
    "path",
    "description",
    "visibility",
    "full_name",
    "full_path",
    "parent_id",
    "avatar_url",
    "created_at",
    "dependency_proxy_enabled",
}
MEMBER_FIELDS = {
    "id",
    "username",
    "name",
    "state",
    "locked",
    "avatar_url",
    "web_url",
    "access_level",
    "expires_at",
    "membership_state",
}


def uid(world: World, name: str) -> int:
    user_id = world.users[name].user_id
    assert user_id is not None
    return user_id


def read_only_headers(world: World, name: str) -> dict[str, str]:
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, uid(world, name), name="ro", scopes=["read_api"]
    )
    return {"PRIVATE-TOKEN": issued.value}


# Users ------------------------------------------------------------------------------------------------


def test_create_user_as_admin(client: FlaskClient, creds: Credentials):
    response = client.post(
        "/api/v4/users",
        json={
            "username": "alice",
            "email": "alice@example.com",
            "name": "Alice",
            "password": "ignored-password",
            "skip_confirmation": True,
            "admin": True,
        },
        headers=creds["admin"],
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == USER_FULL
    assert body["username"] == "alice"
    assert body["email"] == "alice@example.com"
    assert body["is_admin"] is True
    assert body["state"] == "active"
    assert body["web_url"].endswith("/alice")
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize(
    ("role", "expected"),
    [(None, 401), ("owner", 403), ("admin", 201)],
    ids=["anonymous", "non-admin", "admin"],
)
def test_create_user_status_codes(client: FlaskClient, creds: Credentials, role, expected):
    headers = creds[role] if role else {}
    body = {"username": "bob", "email": "bob@example.com", "name": "Bob"}
    assert client.post("/api/v4/users", json=body, headers=headers).status_code == expected


def test_create_user_needs_a_writing_token(client: FlaskClient, world: World):
    assert world.admin.user_id is not None
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, world.admin.user_id, name="ro", scopes=["read_api"]
    )
    headers = {"PRIVATE-TOKEN": issued.value}
    body = {"username": "bob", "email": "bob@example.com", "name": "Bob"}
    assert client.post("/api/v4/users", json=body, headers=headers).status_code == 403


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        ({"email": "c@example.com", "name": "C"}, 400, {"error": "username is missing"}),
        ({"username": "c", "name": "C"}, 400, {"error": "email is missing"}),
        ({"username": "c", "email": "c@example.com"}, 400, {"error": "name is missing"}),
        (
            {"username": "c", "email": "c@example.com", "name": "C", "admin": "maybe"},
            400,
            {"error": "admin is invalid"},
        ),
        (
            {"username": "c\x00", "email": "c@example.com", "name": "C"},
            400,
            {"error": "username contains a NUL character"},
        ),
        (
            {"username": "c", "email": "not-an-email", "name": "C"},
            400,
            {"message": {"email": ["is invalid"]}},
        ),
        ({"username": "-c", "email": "c@example.com", "name": "C"}, 400, None),
        (
            {"username": "guest", "email": "g2@example.com", "name": "G"},
            409,
            {"message": "Username has already been taken"},
        ),
    ],
)
def test_create_user_bad_input(client: FlaskClient, creds: Credentials, body, status, answer):
    response = client.post("/api/v4/users", json=body, headers=creds["admin"])
    assert response.status_code == status
    if answer is not None:
        assert response.get_json() == answer


def test_list_users(client: FlaskClient, world: World, creds: Credentials):
    assert client.get("/api/v4/users").status_code == 403
    admin_view = client.get("/api/v4/users", headers=creds["admin"])
    assert admin_view.status_code == 200
    assert all(set(user) == USER_FULL for user in admin_view.get_json())
    assert admin_view.headers["X-Total"] == str(1 + len(world.users))
    member_view = client.get("/api/v4/users", headers=creds["developer"]).get_json()
    others = [user for user in member_view if user["username"] != "developer"]
    assert others and all(set(user) == USER_BASIC for user in others)
    assert next(user for user in member_view if user["username"] == "developer").keys() == USER_FULL


def test_list_users_filters_and_pages(client: FlaskClient, creds: Credentials):
    found = client.get("/api/v4/users", query_string={"username": "Maintainer"}, headers=creds["admin"])
    assert [user["username"] for user in found.get_json()] == ["maintainer"]
    assert (
        client.get("/api/v4/users", query_string={"username": "nobody"}, headers=creds["admin"]).get_json()
        == []
    )
    searched = client.get(
        "/api/v4/users", query_string={"search": "maint"}, headers=creds["admin"]
    ).get_json()
    assert {user["username"] for user in searched} == {"maintainer", "group_maintainer"}
    page = client.get("/api/v4/users", query_string={"per_page": 3, "page": 2}, headers=creds["admin"])
    assert len(page.get_json()) == 3
    assert page.headers["X-Page"] == "2"
    assert page.headers["X-Per-Page"] == "3"
    assert 'rel="next"' in page.headers["Link"]
    bad = client.get("/api/v4/users", query_string={"per_page": 0}, headers=creds["admin"])
    assert bad.status_code == 400
    assert "per_page" in bad.get_json()["error"]


def test_get_user(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/users/{uid(world, 'developer')}"
    assert client.get(url).status_code == 404
    assert set(client.get(url, headers=creds["owner"]).get_json()) == USER_BASIC
    assert set(client.get(url, headers=creds["developer"]).get_json()) == USER_FULL
    assert client.get(url, headers=creds["admin"]).get_json()["email"] == "developer@example.com"
    missing = client.get("/api/v4/users/9999", headers=creds["admin"])
    assert missing.status_code == 404
    assert missing.get_json() == {"message": "404 User Not Found"}
    assert client.get(f"/api/v4/users/{2**70}", headers=creds["admin"]).status_code == 404


def test_current_user(client: FlaskClient, creds: Credentials):
    assert client.get("/api/v4/user").get_json() == {"message": "401 Unauthorized"}
    assert client.get("/api/v4/user").status_code == 401
    assert client.get("/api/v4/user", headers={"PRIVATE-TOKEN": "glpat-bogus"}).status_code == 401
    me = client.get("/api/v4/user", headers=creds["maintainer"]).get_json()
    assert set(me) == USER_FULL
    assert (me["username"], me["is_admin"]) == ("maintainer", False)


def test_block_and_unblock(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/users/{uid(world, 'developer')}"
    assert client.post(f"{url}/block").status_code == 401
    assert client.post(f"{url}/block", headers=creds["owner"]).status_code == 403
    blocked = client.post(f"{url}/block", headers=creds["admin"])
    assert (blocked.status_code, blocked.get_json()) == (201, True)
    assert client.get("/api/v4/user", headers=creds["developer"]).status_code == 401
    assert client.get(url, headers=creds["admin"]).get_json()["state"] == "blocked"
    assert client.post(f"{url}/block", headers=creds["admin"]).status_code == 201  # harmless twice
    unblocked = client.post(f"{url}/unblock", headers=creds["admin"])
    assert (unblocked.status_code, unblocked.get_json()) == (201, True)
    assert client.get("/api/v4/user", headers=creds["developer"]).status_code == 200
    assert client.post("/api/v4/users/9999/block", headers=creds["admin"]).status_code == 404
    assert client.post(f"/api/v4/users/{2**70}/unblock", headers=creds["admin"]).status_code == 404
    assert client.post("/api/v4/users/1/block", headers=creds["admin"]).status_code == 403  # not yourself


def test_personal_access_token_for_a_user(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/users/{uid(world, 'outsider')}/personal_access_tokens"
    body = {"name": "ci", "scopes": ["api", "read_api"], "expires_at": "2027-01-31"}
    assert client.post(url, json=body).status_code == 401
    assert client.post(url, json=body, headers=creds["owner"]).status_code == 403
    response = client.post(url, json=body, headers=creds["admin"])
    assert response.status_code == 201
    assert response.headers["Cache-Control"] == "no-store"
    created = response.get_json()
    assert set(created) == {
        "id",
        "name",
        "revoked",
        "created_at",
        "description",
        "scopes",
        "user_id",
        "last_used_at",
        "active",
        "expires_at",
        "token",
    }
    assert created["scopes"] == ["api", "read_api"]
    assert created["expires_at"] == "2027-01-31"
    assert (created["user_id"], created["active"], created["revoked"]) == (
        uid(world, "outsider"),
        True,
        False,
    )
    me = client.get("/api/v4/user", headers={"PRIVATE-TOKEN": created["token"]}).get_json()
    assert me["username"] == "outsider"
    form = client.post(url, data={"name": "f", "scopes": "read_api"}, headers=creds["admin"])
    assert (form.status_code, form.get_json()["expires_at"]) == (201, None)


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({"scopes": ["api"]}, {"error": "name is missing"}),
        ({"name": "x"}, {"error": "scopes is missing"}),
        ({"name": "x", "scopes": ["write_everything"]}, {"error": "scopes does not have a valid value"}),
        ({"name": "x", "scopes": []}, {"error": "scopes does not have a valid value"}),
        ({"name": "x", "scopes": ["api"], "expires_at": "soon"}, {"error": "expires_at is invalid"}),
        (
            {"name": "x", "scopes": ["api"], "expires_at": "2020-01-01"},
            {"message": {"expires_at": ["must be in the future"]}},
        ),
    ],
)
def test_personal_access_token_bad_input(client: FlaskClient, world: World, creds: Credentials, body, answer):
    url = f"/api/v4/users/{uid(world, 'outsider')}/personal_access_tokens"
    response = client.post(url, json=body, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == answer


def test_personal_access_token_for_an_unknown_user(client: FlaskClient, creds: Credentials):
    body = {"name": "x", "scopes": ["api"]}
    assert (
        client.post(
            "/api/v4/users/9999/personal_access_tokens", json=body, headers=creds["admin"]
        ).status_code
        == 404
    )


# Groups -----------------------------------------------------------------------------------------------


def test_create_group_and_subgroup(client: FlaskClient, creds: Credentials):
    created = client.post("/api/v4/groups", json={"name": "Team", "path": "team"}, headers=creds["outsider"])
    assert created.status_code == 201
    group = created.get_json()
    assert set(group) == GROUP_FIELDS
    assert (group["full_path"], group["parent_id"], group["visibility"]) == ("team", None, "private")
    members = client.get(f"/api/v4/groups/{group['id']}/members", headers=creds["outsider"]).get_json()
    assert [(member["username"], member["access_level"]) for member in members] == [("outsider", 50)]
    sub = client.post(
        "/api/v4/groups",
        json={"name": "Sub", "path": "sub", "parent_id": group["id"]},
        headers=creds["outsider"],
    )
    assert sub.status_code == 201
    body = sub.get_json()
    assert (body["full_path"], body["parent_id"], body["full_name"]) == (
        "team/sub",
        group["id"],
        "Team / Sub",
    )
    assert body["web_url"].endswith("/groups/team/sub")


@pytest.mark.parametrize(
    ("role", "expected"),
    [(None, 401), ("outsider", 404), ("group_maintainer", 403), ("owner", 201), ("admin", 201)],
)
def test_create_subgroup_status_codes(client: FlaskClient, world: World, creds: Credentials, role, expected):
    headers = creds[role] if role else {}
    body = {"name": "New", "path": "new", "parent_id": world.top}
    assert client.post("/api/v4/groups", json=body, headers=headers).status_code == expected


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({"path": "x"}, {"error": "name is missing"}),
        ({"name": "X"}, {"error": "path is missing"}),
        ({"name": "X", "path": "x", "parent_id": "abc"}, {"error": "parent_id is invalid"}),
        ({"name": "X", "path": "x", "parent_id": 0}, {"error": "parent_id does not have a valid value"}),
        ({"name": "X", "path": "acme"}, {"message": {"path": ["has already been taken"]}}),
        ({"name": "X\x00", "path": "x"}, {"error": "name contains a NUL character"}),
        (
            {"name": "X\ud800", "path": "x"},
            {"error": "name contains a lone surrogate, which is not valid Unicode"},
        ),
    ],
)
def test_create_group_bad_input(client: FlaskClient, creds: Credentials, body, answer):
    response = client.post("/api/v4/groups", json=body, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == answer


def test_create_group_with_a_bad_path_is_a_model_error(client: FlaskClient, creds: Credentials):
    response = client.post("/api/v4/groups", json={"name": "X", "path": "-x"}, headers=creds["admin"])
    assert response.status_code == 400
    assert list(response.get_json()["message"]) == ["path"]


def test_list_groups_by_visibility(client: FlaskClient, world: World, creds: Credentials):
    def paths(headers, **query):
        response = client.get("/api/v4/groups", query_string=query, headers=headers)
        assert response.status_code == 200
        return [group["full_path"] for group in response.get_json()]

    assert paths({}) == []
    assert paths(creds["admin"]) == ["acme", "acme/backend", "acme/backend/services", "other"]
    assert paths(creds["owner"]) == ["acme", "acme/backend", "acme/backend/services"]  # inherited
    assert paths(creds["outsider"]) == []
    assert paths(creds["developer"]) == []  # a project member is no group member
    assert paths(creds["admin"], top_level_only="true") == ["acme", "other"]
    assert paths(creds["admin"], search="BACK") == ["acme/backend"]
    page = client.get("/api/v4/groups", query_string={"per_page": 1, "page": 2}, headers=creds["admin"])
    assert [group["id"] for group in page.get_json()] == [world.sub]
    assert (page.headers["X-Total"], page.headers["X-Total-Pages"]) == ("4", "4")


def test_get_group(client: FlaskClient, world: World, creds: Credentials):
    by_id = client.get(f"/api/v4/groups/{world.sub}", headers=creds["owner"])
    assert by_id.status_code == 200
    assert set(by_id.get_json()) == GROUP_FIELDS
    by_path = client.get("/api/v4/groups/acme%2Fbackend", headers=creds["owner"])
    assert by_path.get_json() == by_id.get_json()
    assert by_id.get_json()["full_name"] == "Acme / Backend"


@pytest.mark.parametrize(
    ("reference", "role"),
    [
        ("acme", None),
        ("acme", "outsider"),
        ("acme", "developer"),
        ("9999", "admin"),
        ("nope", "admin"),
        ("1", "admin"),  # the admin's personal namespace is no group
        ("acme%2Fapi", "admin"),  # a project
        ("acme%00", "admin"),
        ("%C2%B2", "admin"),  # a digit to str.isdigit(), but no number
    ],
)
def test_hidden_or_unknown_groups_are_404(client: FlaskClient, creds: Credentials, reference, role):
    response = client.get(f"/api/v4/groups/{reference}", headers=creds[role] if role else {})
    assert response.status_code == 404
    assert response.get_json() == {"message": "404 Group Not Found"}


def test_subgroups(client: FlaskClient, world: World, creds: Credentials):
    response = client.get(f"/api/v4/groups/{world.top}/subgroups", headers=creds["owner"])
    assert response.status_code == 200
    assert [group["id"] for group in response.get_json()] == [world.sub]
    assert client.get(f"/api/v4/groups/{world.subsub}/subgroups", headers=creds["admin"]).get_json() == []
    assert client.get(f"/api/v4/groups/{world.top}/subgroups").status_code == 404
    assert client.get(f"/api/v4/groups/{world.top}/subgroups", headers=creds["outsider"]).status_code == 404
    assert (
        client.get(
            "/api/v4/groups/acme/subgroups", query_string={"page": "x"}, headers=creds["admin"]
        ).status_code
        == 400
    )


def test_update_group_dependency_proxy(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/groups/{world.top}"
    body = {"dependency_proxy_enabled": False}
    assert client.put(url, json=body).status_code == 401
    assert client.put(url, json=body, headers=creds["outsider"]).status_code == 404
    assert client.put(url, json=body, headers=creds["group_maintainer"]).status_code == 403
    response = client.put(url, json=body, headers=creds["owner"])
    assert response.status_code == 200
    assert response.get_json()["dependency_proxy_enabled"] is False
    assert client.get(url, headers=creds["owner"]).get_json()["dependency_proxy_enabled"] is False
    empty = client.put(url, json={"description": "ignored"}, headers=creds["owner"])
    assert empty.status_code == 400
    assert empty.get_json() == {
        "error": "name, path, dependency_proxy_enabled are missing, at least one parameter must be provided"
    }
    assert client.put(url, json={"dependency_proxy_enabled": "x"}, headers=creds["owner"]).status_code == 400


# Projects ---------------------------------------------------------------------------------------------


def test_create_project_in_a_group(client: FlaskClient, world: World, creds: Credentials):
    response = client.post(
        "/api/v4/projects", json={"name": "Web App", "namespace_id": world.sub}, headers=creds["owner"]
    )
    assert response.status_code == 201
    project = response.get_json()
    assert project["path"] == "web-app"
    assert project["path_with_namespace"] == "acme/backend/web-app"
    assert project["name_with_namespace"] == "Backend / Web App"
    assert project["namespace"] == {
        "id": world.sub,
        "name": "Backend",
        "path": "backend",
        "kind": "group",
        "full_path": "acme/backend",
        "parent_id": world.top,
        "avatar_url": None,
        "web_url": project["namespace"]["web_url"],
    }
    assert project["http_url_to_repo"].endswith("/acme/backend/web-app.git")
    assert project["container_registry_access_level"] == "enabled"


def test_create_project_in_own_namespace_with_features(client: FlaskClient, creds: Credentials):
    response = client.post(
        "/api/v4/projects",
        json={"path": "tools", "container_registry_enabled": False, "repository_access_level": "private"},
        headers=creds["developer"],
    )
    assert response.status_code == 201
    project = response.get_json()
    assert (project["name"], project["path_with_namespace"]) == ("tools", "developer/tools")
    assert project["namespace"]["kind"] == "user"
    assert project["namespace"]["name"] == "developer"
    assert project["container_registry_enabled"] is False
    assert project["repository_access_level"] == "enabled"


@pytest.mark.parametrize(
    ("role", "namespace", "expected"),
    [
        (None, "top", 401),
        ("outsider", "top", 404),
        ("developer", "top", 404),
        ("group_maintainer", "top", 201),
        ("admin", "top", 201),
    ],
)
def test_create_project_status_codes(
    client: FlaskClient, world: World, creds: Credentials, role, namespace, expected
):
    headers = creds[role] if role else {}
    body = {"name": "Fresh", "namespace_id": getattr(world, namespace)}
    assert client.post("/api/v4/projects", json=body, headers=headers).status_code == expected


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({}, {"error": "name, path are missing, at least one parameter must be provided"}),
        ({"name": "x", "namespace_id": "a"}, {"error": "namespace_id is invalid"}),
        (
            {"name": "x", "container_registry_access_level": "on"},
            {"error": "container_registry_access_level does not have a valid value"},
        ),
        ({"name": "Api", "namespace_id": 2}, {"message": {"path": ["has already been taken"]}}),
    ],
)
def test_create_project_bad_input(client: FlaskClient, world: World, creds: Credentials, body, answer):
    response = client.post("/api/v4/projects", json=body, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == answer


def test_list_projects_by_visibility(client: FlaskClient, creds: Credentials):
    def paths(headers, **query):
        response = client.get("/api/v4/projects", query_string=query, headers=headers)
        assert response.status_code == 200
        return [project["path_with_namespace"] for project in response.get_json()]

    assert paths({}) == []
    assert paths(creds["admin"]) == ["acme/api", "acme/backend/services/db", "other/elsewhere"]
    assert paths(creds["guest"]) == ["acme/api"]
    assert paths(creds["owner"]) == ["acme/api", "acme/backend/services/db"]
    assert paths(creds["outsider"]) == []
    assert paths(creds["admin"], search="else") == ["other/elsewhere"]
    assert paths(creds["admin"], per_page=1, page=3) == ["other/elsewhere"]


def test_get_project(client: FlaskClient, world: World, creds: Credentials):
    by_id = client.get(f"/api/v4/projects/{world.deep_project}", headers=creds["owner"])
    assert by_id.status_code == 200
    body = by_id.get_json()
    assert body["path_with_namespace"] == "acme/backend/services/db"
    assert {"id", "name", "path", "path_with_namespace", "namespace", "web_url"} <= set(body)
    encoded = client.get("/api/v4/projects/acme%2Fbackend%2Fservices%2Fdb", headers=creds["owner"])
    assert encoded.get_json() == body
    for headers in ({}, creds["outsider"], creds["developer"]):
        hidden = client.get(f"/api/v4/projects/{world.deep_project}", headers=headers)
        assert (hidden.status_code, hidden.get_json()) == (404, {"message": "404 Project Not Found"})
    assert client.get("/api/v4/projects/9999", headers=creds["admin"]).status_code == 404
    assert client.get("/api/v4/projects/acme%2Fnope", headers=creds["admin"]).status_code == 404


def test_update_project_features(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/projects/{world.project}"
    assert client.put(url, json={"container_registry_enabled": False}).status_code == 401
    assert (
        client.put(url, json={"container_registry_enabled": False}, headers=creds["outsider"]).status_code
        == 404
    )
    assert (
        client.put(url, json={"container_registry_enabled": False}, headers=creds["developer"]).status_code
        == 403
    )
    response = client.put(
        url, json={"container_registry_access_level": "disabled"}, headers=creds["maintainer"]
    )
    assert response.status_code == 200
    assert response.get_json()["container_registry_access_level"] == "disabled"
    assert response.get_json()["container_registry_enabled"] is False
    response = client.put(
        url,
        data={"repository_access_level": "disabled", "container_registry_enabled": "true"},
        headers=creds["maintainer"],
    )
    body = response.get_json()
    assert (body["repository_access_level"], body["container_registry_enabled"]) == ("disabled", True)
    assert client.put(url, json={"description": "x"}, headers=creds["maintainer"]).status_code == 400
    assert (
        client.put(url, json={"repository_access_level": "off"}, headers=creds["maintainer"]).status_code
        == 400
    )


# Members ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["project", "group"])
def test_list_and_get_members(client: FlaskClient, world: World, creds: Credentials, kind):
    source, viewer, member = (
        (world.project, "guest", "maintainer")
        if kind == "project"
        else (world.top, "group_maintainer", "owner")
    )
    url = f"/api/v4/{kind}s/{source}/members"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=creds["outsider"]).status_code == 404
    listing = client.get(url, headers=creds[viewer])
    assert listing.status_code == 200
    assert all(set(item) == MEMBER_FIELDS for item in listing.get_json())
    assert listing.headers["X-Total"] == str(len(listing.get_json()))
    one = client.get(f"{url}/{uid(world, member)}", headers=creds[viewer])
    assert one.status_code == 200
    assert one.get_json()["username"] == member
    assert one.get_json()["access_level"] in (40, 50)
    missing = client.get(f"{url}/{uid(world, 'outsider')}", headers=creds[viewer])
    assert (missing.status_code, missing.get_json()) == (404, {"message": "404 Member Not Found"})


def test_project_members_lifecycle(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/projects/{world.project}/members"
    outsider = uid(world, "outsider")
    body = {"user_id": outsider, "access_level": 30}
    assert client.post(url, json=body).status_code == 401
    assert client.post(url, json=body, headers=creds["developer"]).status_code == 403
    added = client.post(url, json=body, headers=creds["maintainer"])
    assert added.status_code == 201
    assert (added.get_json()["id"], added.get_json()["access_level"]) == (outsider, 30)
    again = client.post(url, json=body, headers=creds["maintainer"])
    assert (again.status_code, again.get_json()) == (409, {"message": "Member already exists"})
    assert client.get(f"/api/v4/projects/{world.project}", headers=creds["outsider"]).status_code == 200
    changed = client.put(f"{url}/{outsider}", json={"access_level": 40}, headers=creds["maintainer"])
    assert (changed.status_code, changed.get_json()["access_level"]) == (200, 40)
    assert (
        client.put(f"{url}/{outsider}", json={"access_level": 20}, headers=creds["developer"]).status_code
        == 403
    )
    owner_grant = client.put(f"{url}/{outsider}", json={"access_level": 50}, headers=creds["maintainer"])
    assert owner_grant.status_code == 403
    assert (
        client.put(
            f"{url}/{uid(world, 'owner')}", json={"access_level": 20}, headers=creds["maintainer"]
        ).status_code
        == 404
    )
    assert client.delete(f"{url}/{outsider}", headers=creds["developer"]).status_code == 403
    assert client.delete(f"{url}/{outsider}").status_code == 401
    assert client.delete(f"{url}/{outsider}", headers=creds["maintainer"]).status_code == 204
    assert client.delete(f"{url}/{outsider}", headers=creds["maintainer"]).status_code == 404
    assert client.get(f"/api/v4/projects/{world.project}", headers=creds["outsider"]).status_code == 404


def test_group_members_need_an_owner(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/groups/{world.top}/members"
    body = {"user_id": uid(world, "outsider"), "access_level": 50}
    assert client.post(url, json=body, headers=creds["group_maintainer"]).status_code == 403
    assert client.post(url, json=body, headers=creds["owner"]).status_code == 201
    # Membership is inherited downwards: the new owner sees the deep project.
    assert client.get(f"/api/v4/projects/{world.deep_project}", headers=creds["outsider"]).status_code == 200
    assert client.delete(f"{url}/{uid(world, 'outsider')}", headers=creds["owner"]).status_code == 204


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({"access_level": 30}, {"error": "user_id is missing"}),
        ({"user_id": 11}, {"error": "access_level is missing"}),
        ({"user_id": 11, "access_level": 35}, {"error": "access_level does not have a valid value"}),
        ({"user_id": 11, "access_level": "high"}, {"error": "access_level is invalid"}),
        ({"user_id": "me", "access_level": 30}, {"error": "user_id is invalid"}),
        ({"user_id": 2**70, "access_level": 30}, {"error": "user_id does not have a valid value"}),
    ],
)
def test_add_member_bad_input(client: FlaskClient, world: World, creds: Credentials, body, answer):
    response = client.post(f"/api/v4/projects/{world.project}/members", json=body, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == answer


def test_add_unknown_user_is_404(client: FlaskClient, world: World, creds: Credentials):
    response = client.post(
        f"/api/v4/projects/{world.project}/members",
        json={"user_id": 9999, "access_level": 30},
        headers=creds["admin"],
    )
    assert (response.status_code, response.get_json()) == (404, {"message": "404 User Not Found"})


def test_update_member_bad_input(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/groups/{world.top}/members/{uid(world, 'group_maintainer')}"
    assert client.put(url, json={}, headers=creds["owner"]).get_json() == {"error": "access_level is missing"}
    assert client.put(url, json={"access_level": 60}, headers=creds["owner"]).status_code == 400


# Application settings and features --------------------------------------------------------------------


def test_application_settings(client: FlaskClient, world: World, creds: Credentials):
    url = "/api/v4/application/settings"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=creds["owner"]).status_code == 403
    assert client.get(url, headers=creds["admin"]).get_json() == {
        "id": 1,
        "external_authorization_service_enabled": False,
        "deploy_token_oidc_issuers": [],
    }
    body = {"external_authorization_service_enabled": True}
    assert client.put(url, json=body).status_code == 401
    assert client.put(url, json=body, headers=creds["owner"]).status_code == 403
    changed = client.put(url, json=body, headers=creds["admin"])
    assert (changed.status_code, changed.get_json()["external_authorization_service_enabled"]) == (200, True)
    assert world.runtime.read.instance().external_authorization_enabled is True
    assert client.put(url, json={}, headers=creds["admin"]).status_code == 400
    bad = client.put(url, json={"external_authorization_service_enabled": "perhaps"}, headers=creds["admin"])
    assert bad.get_json() == {"error": "external_authorization_service_enabled is invalid"}


def test_features(client: FlaskClient, world: World, creds: Credentials):
    name = "project_deploy_token_expiring_notifications"
    for url in ("/api/v4/features", "/api/v4/features/"):
        assert client.get(url).status_code == 401
        assert client.get(url, headers=creds["owner"]).status_code == 403
        assert client.get(url, headers=creds["admin"]).get_json() == [
            {"name": name, "state": "on", "gates": [{"key": "boolean", "value": True}], "definition": None}
        ]
    url = f"/api/v4/features/{name}"
    assert client.post(url, json={"value": False}).status_code == 401
    assert client.post(url, json={"value": False}, headers=creds["owner"]).status_code == 403
    switched = client.post(url, json={"value": False}, headers=creds["admin"])
    assert switched.status_code == 201
    assert switched.get_json() == {
        "name": name,
        "state": "off",
        "gates": [{"key": "boolean", "value": False}],
        "definition": None,
    }
    assert world.runtime.read.instance().features[name] is False
    assert client.post(url, data={"value": "true"}, headers=creds["admin"]).get_json()["state"] == "on"


@pytest.mark.parametrize(
    ("name", "body", "answer"),
    [
        ("project_deploy_token_expiring_notifications", {}, {"error": "value is missing"}),
        (
            "project_deploy_token_expiring_notifications",
            {"value": "sometimes"},
            {"error": "value is invalid"},
        ),
        ("no_such_flag", {"value": True}, {"message": {"name": ["is not a known feature: no_such_flag"]}}),
    ],
)
def test_features_bad_input(client: FlaskClient, creds: Credentials, name, body, answer):
    response = client.post(f"/api/v4/features/{name}", json=body, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == answer


def test_read_only_token_cannot_write(client: FlaskClient, world: World):
    headers = read_only_headers(world, "owner")
    assert client.get(f"/api/v4/groups/{world.top}", headers=headers).status_code == 200
    response = client.put(
        f"/api/v4/groups/{world.top}", json={"dependency_proxy_enabled": False}, headers=headers
    )
    assert response.status_code == 403
    assert "insufficient_scope" in response.get_json()["message"]


def test_an_encoded_path_ending_like_a_subresource_names_the_project(client, world, creds):
    project_id = world.runtime.directory.create_project(
        world.admin, name="deploy_tokens", path="deploy_tokens", namespace_id=world.top
    )
    response = client.get("/api/v4/projects/acme%2Fdeploy_tokens", headers=creds["admin"])
    assert response.status_code == 200
    assert response.get_json()["id"] == project_id
    tokens = client.get("/api/v4/projects/acme%2Fdeploy_tokens/deploy_tokens", headers=creds["admin"])
    assert tokens.status_code == 200


# Reserved names and the role guard on members ------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["api", "API", "internal", "metrics", "static", "users", "v2", "favicon.ico"]
)
def test_top_level_group_paths_owned_by_routes_are_400(client: FlaskClient, creds: Credentials, path: str):
    response = client.post("/api/v4/groups", json={"name": "X", "path": path}, headers=creds["owner"])
    assert response.status_code == 400
    assert response.get_json() == {"message": {"path": [f"{path} is a reserved name"]}}
    assert path.lower() not in [
        group["path"].lower() for group in client.get("/api/v4/groups", headers=creds["admin"]).get_json()
    ]


def test_every_top_level_route_of_the_app_is_reserved(client: FlaskClient, creds: Credentials):
    """Derived from the routes themselves, so a route added later cannot be shadowed by a group or a user."""
    prefixes = {rule.rule.split("/")[1] for rule in client.application.url_map.iter_rules()}
    literal = sorted(prefix for prefix in prefixes if prefix and not prefix.startswith("<"))
    assert {"-", "api", "groups", "internal", "jwt", "metrics", "static", "users"} <= set(literal)
    for prefix in literal:
        group = client.post("/api/v4/groups", json={"name": "X", "path": prefix}, headers=creds["admin"])
        user = client.post(
            "/api/v4/users",
            json={"username": prefix, "email": f"{prefix}@example.com", "name": "X"},
            headers=creds["admin"],
        )
        assert (prefix, group.status_code, user.status_code) == (prefix, 400, 400)
        if prefix != "-":  # "-" already fails the format rule, which GitLab reports first
            assert group.get_json() == {"message": {"path": [f"{prefix} is a reserved name"]}}
            assert user.get_json() == {"message": {"username": [f"{prefix} is a reserved name"]}}


def test_a_subgroup_may_take_a_top_level_name(client: FlaskClient, world: World, creds: Credentials):
    top = client.post("/api/v4/groups", json={"name": "Users", "path": "users"}, headers=creds["owner"])
    assert top.status_code == 400
    body = {"name": "Users", "path": "users", "parent_id": world.top}
    created = client.post("/api/v4/groups", json=body, headers=creds["owner"])
    assert (created.status_code, created.get_json()["full_path"]) == (201, "acme/users")


def test_reserved_usernames_are_400(client: FlaskClient, creds: Credentials):
    body = {"username": "Admin", "email": "admin@example.com", "name": "Admin"}
    response = client.post("/api/v4/users", json=body, headers=creds["admin"])
    assert (response.status_code, response.get_json()) == (
        400,
        {"message": {"username": ["Admin is a reserved name"]}},
    )


@pytest.mark.parametrize(
    "path", ["info", "HEAD", "objects", "git-upload-pack", "git-receive-pack", "tree", "raw"]
)
def test_project_paths_owned_by_git_or_ui_routes_are_400(
    client: FlaskClient, world: World, creds: Credentials, path: str
):
    body = {"name": "P", "path": path, "namespace_id": world.top}
    response = client.post("/api/v4/projects", json=body, headers=creds["owner"])
    assert (response.status_code, response.get_json()) == (
        400,
        {"message": {"path": [f"{path} is a reserved name"]}},
    )


def test_a_maintainer_cannot_demote_or_remove_an_owner(client: FlaskClient, world: World, creds: Credentials):
    url = f"/api/v4/projects/{world.project}/members"
    outsider = uid(world, "outsider")
    assert (
        client.post(url, json={"user_id": outsider, "access_level": 50}, headers=creds["admin"]).status_code
        == 201
    )
    demoted = client.put(f"{url}/{outsider}", json={"access_level": 30}, headers=creds["maintainer"])
    removed = client.delete(f"{url}/{outsider}", headers=creds["maintainer"])
    forbidden = {"message": "403 Forbidden - you cannot change a member whose role is above your own"}
    assert (demoted.status_code, demoted.get_json()) == (403, forbidden)
    assert (removed.status_code, removed.get_json()) == (403, forbidden)
    assert client.get(f"{url}/{outsider}", headers=creds["maintainer"]).get_json()["access_level"] == 50


def test_the_last_owner_of_a_group_stays(client: FlaskClient, world: World, creds: Credentials):
    created = client.post("/api/v4/groups", json={"name": "Mine", "path": "mine"}, headers=creds["outsider"])
    url = f"/api/v4/groups/{created.get_json()['id']}/members/{uid(world, 'outsider')}"
    last_owner = {"message": "403 Forbidden - the last Owner of a group cannot be removed or demoted"}
    for headers in (creds["admin"], creds["outsider"]):
        demoted = client.put(url, json={"access_level": 40}, headers=headers)
        removed = client.delete(url, headers=headers)
        assert (demoted.status_code, demoted.get_json()) == (403, last_owner)
        assert (removed.status_code, removed.get_json()) == (403, last_owner)
    assert client.get(url, headers=creds["outsider"]).get_json()["access_level"] == 50
