"""Deploy-token endpoints: every status code GitLab answers, fields, pagination, errors."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from ..conftest import World
from .conftest import Credentials

FIELDS = {"id", "name", "username", "expires_at", "scopes", "revoked", "expired"}


def create(client: FlaskClient, headers, kind: str, holder, **body):
    body.setdefault("name", "deploy")
    body.setdefault("scopes", ["read_repository"])
    return client.post(f"/api/v4/{kind}s/{holder}/deploy_tokens", json=body, headers=headers)


def test_create_returns_201_with_the_token_once(client, world: World, creds: Credentials):
    response = create(
        client, creds["maintainer"], "project", world.project, scopes=["read_registry", "read_repository"]
    )
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == FIELDS | {"token"}
    assert re.fullmatch(r"gldt-[A-Za-z0-9_-]{20,}", body["token"])
    assert body["scopes"] == ["read_repository", "read_registry"]
    assert body["username"] == f"gitlab+deploy-token-{body['id']}"
    fetched = client.get(
        f"/api/v4/projects/{world.project}/deploy_tokens/{body['id']}", headers=creds["maintainer"]
    )
    assert fetched.status_code == 200
    assert set(fetched.get_json()) == FIELDS


def test_scopes_as_a_comma_separated_string(client, world: World, creds: Credentials):
    response = create(client, creds["admin"], "project", world.project, scopes="read_registry,write_registry")
    assert response.get_json()["scopes"] == ["read_registry", "write_registry"]


def test_form_encoded_parameters(client, world: World, creds: Credentials):
    response = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens",
        data={"name": "f", "scopes[]": ["read_repository", "read_registry"], "expires_at": "2027-03-15"},
        headers=creds["admin"],
    )
    assert response.status_code == 201
    assert response.get_json()["expires_at"] == "2027-03-15T00:00:00.000Z"


def test_project_addressed_by_url_encoded_path(client, world: World, creds: Credentials):
    response = client.get("/api/v4/projects/acme%2Fapi/deploy_tokens", headers=creds["admin"])
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("kind", "role", "method", "expected"),
    [
        ("project", None, "list", 404),
        ("project", None, "create", 404),
        ("group", None, "list", 403),
        ("group", None, "create", 403),
        ("project", "developer", "list", 403),
        ("project", "developer", "create", 403),
        ("group", "developer", "list", 404),
        ("project", "maintainer", "list", 200),
        ("project", "maintainer", "create", 201),
        ("group", "group_maintainer", "list", 200),
        ("group", "group_maintainer", "create", 403),
        ("group", "owner", "create", 201),
        ("group", "owner", "list", 200),
        ("project", "owner", "create", 201),
    ],
)
def test_status_codes_by_role(client, world: World, creds: Credentials, kind, role, method, expected):
    headers = creds[role] if role else {}
    holder = world.project if kind == "project" else world.top
    if method == "list":
        response = client.get(f"/api/v4/{kind}s/{holder}/deploy_tokens", headers=headers)
    else:
        response = create(client, headers, kind, holder)
    assert response.status_code == expected, response.get_json()


def test_delete_status_codes(client, world: World, creds: Credentials):
    token_id = create(client, creds["admin"], "group", world.top).get_json()["id"]
    url = f"/api/v4/groups/{world.top}/deploy_tokens/{token_id}"
    assert client.delete(url, headers=creds["group_maintainer"]).status_code == 403
    assert client.delete(url, headers=creds["owner"]).status_code == 204
    assert client.delete(url, headers=creds["owner"]).status_code == 404
    project_token = create(client, creds["admin"], "project", world.project).get_json()["id"]
    project_url = f"/api/v4/projects/{world.project}/deploy_tokens/{project_token}"
    assert client.delete(project_url, headers=creds["developer"]).status_code == 403
    assert client.delete(project_url, headers=creds["maintainer"]).status_code == 204


def test_instance_list_codes(client, world: World, creds: Credentials):
    assert client.get("/api/v4/deploy_tokens").status_code == 401
    assert client.get("/api/v4/deploy_tokens", headers=creds["owner"]).status_code == 403
    assert client.get("/api/v4/deploy_tokens", headers=creds["admin"]).status_code == 200


def test_unknown_holder_and_foreign_token_are_404(client, world: World, creds: Credentials):
    assert client.get("/api/v4/projects/999/deploy_tokens", headers=creds["admin"]).status_code == 404
    assert client.get("/api/v4/groups/999/deploy_tokens", headers=creds["admin"]).status_code == 404
    token_id = create(client, creds["admin"], "project", world.project).get_json()["id"]
    foreign = client.get(
        f"/api/v4/projects/{world.deep_project}/deploy_tokens/{token_id}", headers=creds["admin"]
    )
    assert foreign.status_code == 404


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"scopes": ["read_repository"]}, "name is missing"),
        ({"name": "x"}, "scopes is missing"),
        ({"name": "x", "scopes": ["write_repository"]}, "scopes does not have a valid value"),
        (
            {"name": "x", "scopes": ["read_repository"], "expires_at": "tomorrow"},
            "expires_at must be in ISO 8601 format",
        ),
    ],
)
def test_bad_parameters_are_400_with_gitlab_messages(client, world: World, creds: Credentials, body, message):
    response = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens", json=body, headers=creds["admin"]
    )
    assert response.status_code == 400
    assert response.get_json() == {"error": message}


def test_model_errors_are_400_with_field_messages(client, world: World, creds: Credentials):
    response = create(client, creds["admin"], "project", world.project, username="bad name")
    assert response.status_code == 400
    assert response.get_json() == {
        "message": {"username": ["can contain only letters, digits, '_', '-', '+', and '.'"]}
    }


def test_token_appears_only_in_the_create_response(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project).get_json()
    listing = client.get(f"/api/v4/projects/{world.project}/deploy_tokens", headers=creds["admin"])
    assert created["token"] not in listing.get_data(as_text=True)
    assert all("token" not in item for item in listing.get_json())


def test_active_filter_and_pagination_headers(client, world: World, creds: Credentials):
    ids = [
        create(client, creds["admin"], "project", world.project, name=f"t{i}").get_json()["id"]
        for i in range(5)
    ]
    client.post(f"/api/v4/projects/{world.project}/deploy_tokens/{ids[0]}/revoke", headers=creds["admin"])
    url = f"/api/v4/projects/{world.project}/deploy_tokens"
    page = client.get(url, query_string={"per_page": 2, "page": 2}, headers=creds["admin"])
    assert [item["id"] for item in page.get_json()] == ids[2:4]
    assert page.headers["X-Total"] == "5"
    assert page.headers["X-Total-Pages"] == "3"
    assert page.headers["X-Page"] == "2"
    assert page.headers["X-Per-Page"] == "2"
    assert page.headers["X-Next-Page"] == "3"
    assert page.headers["X-Prev-Page"] == "1"
    assert 'rel="next"' in page.headers["Link"]
    active = client.get(url, query_string={"active": "true"}, headers=creds["admin"])
    assert [item["id"] for item in active.get_json()] == ids[1:]


def test_revoke_is_idempotent(client, world: World, creds: Credentials):
    token_id = create(client, creds["admin"], "project", world.project).get_json()["id"]
    url = f"/api/v4/projects/{world.project}/deploy_tokens/{token_id}/revoke"
    assert client.post(url, headers=creds["maintainer"]).get_json()["revoked"] is True
    assert client.post(url, headers=creds["maintainer"]).status_code == 200
    history = client.get(
        f"/api/v4/projects/{world.project}/deploy_tokens/{token_id}/history", headers=creds["admin"]
    )
    assert [entry["event"] for entry in history.get_json()] == ["Created", "Scoped", "Revoked"]


def test_rotate_returns_a_new_value(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project).get_json()
    rotated = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens/{created['id']}/rotate",
        json={"grace_period_seconds": 3600},
        headers=creds["admin"],
    ).get_json()
    assert rotated["token"] != created["token"]
    assert rotated["id"] == created["id"]


def test_revoke_by_value_is_admin_only(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project).get_json()
    assert (
        client.delete(
            "/api/v4/admin/token", json={"token": created["token"]}, headers=creds["owner"]
        ).status_code
        == 403
    )
    assert (
        client.delete(
            "/api/v4/admin/token", json={"token": created["token"]}, headers=creds["admin"]
        ).status_code
        == 204
    )
    got = client.get(
        f"/api/v4/projects/{world.project}/deploy_tokens/{created['id']}", headers=creds["admin"]
    )
    assert got.get_json()["revoked"] is True


def test_deploy_token_is_never_a_management_credential(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project).get_json()
    response = client.get(
        f"/api/v4/projects/{world.project}/deploy_tokens", headers={"PRIVATE-TOKEN": created["token"]}
    )
    assert response.status_code == 401


def test_bearer_authorization_is_accepted(client, world: World):
    response = client.get("/api/v4/deploy_tokens", headers={"Authorization": f"Bearer {world.admin_token}"})
    assert response.status_code == 200


def test_ci_variables(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project, name="gitlab-deploy-token").get_json()
    variables = client.get(
        f"/api/v4/projects/{world.project}/deploy_token_variables", headers=creds["admin"]
    ).get_json()
    assert {v["key"]: v["value"] for v in variables} == {
        "CI_DEPLOY_USER": created["username"],
        "CI_DEPLOY_PASSWORD": created["token"],
    }


@pytest.mark.parametrize("name", ["a\u0000b", "tab\there", "\ud800lone"])
def test_control_characters_and_lone_surrogates_are_refused_and_nothing_is_written(
    client, world: World, creds: Credentials, name: str
):
    head = world.runtime.store.head()
    response = create(client, creds["admin"], "project", world.project, name=name)
    assert response.status_code == 400
    assert world.runtime.store.head() == head
    assert create(client, creds["admin"], "project", world.project, name="ok").status_code == 201


@pytest.mark.parametrize("reference", ["²", "acme%00api"])
def test_odd_references_are_not_found(client, world: World, creds: Credentials, reference: str):
    assert (
        client.get(f"/api/v4/projects/{reference}/deploy_tokens", headers=creds["admin"]).status_code == 404
    )


def test_revoke_by_value_needs_the_api_scope(client, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", world.project).get_json()
    assert world.users and world.admin.user_id is not None
    read_only = world.runtime.directory.create_personal_access_token(
        world.admin, world.admin.user_id, name="ro", scopes=["read_api"]
    ).value
    response = client.delete(
        "/api/v4/admin/token", json={"token": created["token"]}, headers={"PRIVATE-TOKEN": read_only}
    )
    assert response.status_code == 403


@pytest.mark.parametrize("username", ["gitlab+deploy-token-1", "GITLAB+Deploy-Token-42"])
def test_a_custom_username_shaped_like_a_default_is_400(
    client, world: World, creds: Credentials, username: str
):
    """``gitlab+deploy-token-<n>`` belongs to token n: a custom one would pass for it in Git's username check."""
    response = create(client, creds["admin"], "project", world.project, username=username)
    assert response.status_code == 400
    assert response.get_json() == {
        "message": {
            "username": [
                "is reserved for default usernames (gitlab+deploy-token-<id>): leave it empty for the default"
            ]
        }
    }
    listing = client.get(f"/api/v4/projects/{world.project}/deploy_tokens", headers=creds["admin"])
    assert listing.get_json() == []
    default = create(client, creds["admin"], "project", world.project, username="").get_json()
    assert default["username"] == f"gitlab+deploy-token-{default['id']}"
