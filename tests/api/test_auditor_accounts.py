"""Auditor accounts (behaviour [auditors]): administrators grant and clear the flag over the users API (and the
CLI); an auditor reads every audit route, export and deploy token of the instance and changes nothing.

The write and audit routes are taken from the OpenAPI document (and the UI's form routes from the URL map), so
a route added later is covered without editing this file.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.openapi import build_spec
from cli.main import build_parser
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from domain.errors import NotFound, PermissionDenied

from ..conftest import T0, World, make_settings
from .conftest import Credentials

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_WRITES = ("post", "put", "patch", "delete")


@cache
def _app_routes() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The OpenAPI document and the UI's form routes, from the real app over an empty store."""
    with tempfile.TemporaryDirectory() as folder:
        settings = make_settings("sqlite", Path(folder), None)
        with Runtime.open(settings, clock=FixedClock(T0)) as runtime:
            app = create_app(runtime)
            document = build_spec(app)
            forms = sorted(
                (rule.rule, method)
                for rule in app.url_map.iter_rules()
                if rule.endpoint.startswith("ui.") and rule.endpoint not in ("ui.sign_in", "ui.sign_out")
                for method in (rule.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}
            )
    return document, forms


def _operations(methods: tuple[str, ...], tag: str | None = None) -> list[tuple[str, str]]:
    """(method, path) of the management API's operations (those a personal access token authenticates)."""
    document, _ = _app_routes()
    return sorted(
        (method, path)
        for path, entries in document["paths"].items()
        for method, entry in entries.items()
        if method in methods
        and {"private_token": []} in entry.get("security", [])
        and (tag is None or tag in entry["tags"])
    )


WRITE_ROUTES = _operations(_WRITES)
AUDIT_ROUTES = _operations(("get",), tag="audit")
UI_FORMS = _app_routes()[1]


def _id(route: tuple[str, str]) -> str:
    return f"{route[0].upper()} {route[1]}"


@pytest.fixture
def token_id(world: World) -> int:
    """A token of a project the auditor is no member of."""
    return world.runtime.tokens.create_token(
        world.admin, "project", world.sibling_project, name="t", scopes=["read_repository"]
    ).token.token_id


@pytest.fixture
def group_token_id(world: World) -> int:
    return world.runtime.tokens.create_token(
        world.admin, "group", world.sibling, name="g", scopes=["read_repository"]
    ).token.token_id


@pytest.fixture
def auditor(world: World) -> dict[str, str]:
    """Headers of a fresh auditor, member of nothing, whose token has every scope (``api`` included): what
    refuses their writes is being an auditor, not the token."""
    record = world.runtime.directory.register_user(
        world.admin, username="audrey", email="audrey@example.com", is_auditor=True
    )
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, record.user_id, name="audit", scopes=["api", "read_api"]
    )
    return {"PRIVATE-TOKEN": issued.value}


def _user_id(world: World, headers: dict[str, str], client: FlaskClient) -> int:
    return int(client.get("/api/v4/user", headers=headers).get_json()["id"])


def _fill(path: str, world: World, request: pytest.FixtureRequest) -> str:
    """Real ids for each placeholder: the refusal must come from the rule, not from a missing resource. Tokens
    are made only for the routes that name one."""
    group = path.startswith("/api/v4/groups/")
    values = {
        "reference": str(world.sibling if group else world.sibling_project),
        "user_id": str(world.users["guest"].user_id),
        "name": "some_feature",
        "dataset": "lifecycle",
        "kind": "csv",
    }
    if "{token_id}" in path:
        values["token_id"] = str(request.getfixturevalue("group_token_id" if group else "token_id"))
    # A placeholder of a route added later (an id of something the world has none of): any number will do.
    return _PLACEHOLDER.sub(lambda found: values.get(found.group(1), "1"), path)


AUDIT_QUERY = {"at": "2030-01-01T00:00:00Z", "action": "git_read"}


# Granting and showing the flag -----------------------------------------------------------------------------


def test_an_administrator_creates_an_auditor_and_administrators_see_the_flag(
    client: FlaskClient, world: World, creds: Credentials
):
    body = {"username": "ann", "email": "ann@example.com", "name": "Ann", "auditor": True}
    created = client.post("/api/v4/users", json=body, headers=creds["admin"])
    assert created.status_code == 201
    assert (created.get_json()["is_auditor"], created.get_json()["is_admin"]) == (True, False)
    user_id = created.get_json()["id"]
    assert client.get(f"/api/v4/users/{user_id}", headers=creds["admin"]).get_json()["is_auditor"] is True
    listed = {
        u["username"]: u["is_auditor"] for u in client.get("/api/v4/users", headers=creds["admin"]).json
    }
    assert listed["ann"] is True
    assert listed["guest"] is False and listed["root"] is False
    # Others see GitLab's UserBasic: no flag.
    assert "is_auditor" not in client.get(f"/api/v4/users/{user_id}", headers=creds["guest"]).get_json()


def test_put_grants_and_clears_the_flag_and_access_follows_at_once(
    client: FlaskClient, world: World, creds: Credentials
):
    guest = world.users["guest"].user_id
    url = f"/api/v4/users/{guest}"
    assert client.get("/api/v4/audit_events", headers=creds["guest"]).status_code == 403
    granted = client.put(url, json={"auditor": True}, headers=creds["admin"])
    assert (granted.status_code, granted.get_json()["is_auditor"]) == (200, True)
    assert client.get("/api/v4/audit_events", headers=creds["guest"]).status_code == 200
    assert client.get("/api/v4/user", headers=creds["guest"]).get_json()["is_auditor"] is True
    cleared = client.put(url, json={"auditor": "false"}, headers=creds["admin"])
    assert (cleared.status_code, cleared.get_json()["is_auditor"]) == (200, False)
    assert client.get("/api/v4/audit_events", headers=creds["guest"]).status_code == 403


def test_putting_the_same_value_records_nothing(client: FlaskClient, world: World, creds: Credentials):
    guest = world.users["guest"].user_id
    head = world.runtime.store.head()
    response = client.put(f"/api/v4/users/{guest}", json={"auditor": False}, headers=creds["admin"])
    assert (response.status_code, response.get_json()["is_auditor"]) == (200, False)
    assert world.runtime.store.head() == head


@pytest.mark.parametrize("role", ["owner", "guest", "auditor"])
def test_only_administrators_set_the_flag(
    client: FlaskClient, world: World, creds: Credentials, auditor: dict[str, str], role: str
):
    headers = auditor if role == "auditor" else creds[role]
    own_id = _user_id(world, headers, client)
    head = world.runtime.store.head()
    body = {"username": "mallory", "email": "mallory@example.com", "name": "M", "auditor": True}
    assert client.post("/api/v4/users", json=body, headers=headers).status_code == 403
    assert client.put(f"/api/v4/users/{own_id}", json={"auditor": True}, headers=headers).status_code == 403
    assert world.runtime.store.head() == head


INVALID = "auditor is invalid"
NUL = "auditor contains a NUL character"
HOSTILE_FLAGS = [
    ("maybe", INVALID),
    ("", INVALID),
    ("true\x00", NUL),
    ("\x00", NUL),
    (2, INVALID),
    (-1, INVALID),
    (10**40, INVALID),
    (1.5, INVALID),
    ([True], INVALID),
    ({"value": True}, INVALID),
    ("t" * 100_000, INVALID),
]


@pytest.mark.parametrize(("value", "error"), HOSTILE_FLAGS, ids=lambda v: repr(v)[:20])
@pytest.mark.parametrize("method", ["post", "put"])
def test_a_hostile_auditor_value_is_a_400_and_writes_nothing(
    client: FlaskClient, world: World, creds: Credentials, value: object, error: str, method: str
):
    head = world.runtime.store.head()
    if method == "post":
        body = {"username": "ann", "email": "ann@example.com", "name": "Ann", "auditor": value}
        response = client.post("/api/v4/users", json=body, headers=creds["admin"])
    else:
        url = f"/api/v4/users/{world.users['guest'].user_id}"
        response = client.put(url, json={"auditor": value, "name": "New"}, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == {"error": error}
    assert world.runtime.store.head() == head


@pytest.mark.parametrize(
    "raw",
    [
        '{"auditor": "\\ud800"}',  # a lone surrogate
        '{"auditor": ' + "[" * 5000 + "]" * 5000 + "}",  # deep JSON
    ],
    ids=["lone-surrogate", "deep"],
)
def test_unreadable_auditor_bodies_are_a_400(client: FlaskClient, world: World, creds: Credentials, raw: str):
    head = world.runtime.store.head()
    url = f"/api/v4/users/{world.users['guest'].user_id}"
    headers = {**creds["admin"], "Content-Type": "application/json"}
    assert client.put(url, data=raw, headers=headers).status_code == 400
    assert world.runtime.store.head() == head


# Reading -----------------------------------------------------------------------------------------------


def test_the_audit_routes_are_found():
    assert len(AUDIT_ROUTES) >= 6  # events, activity, state, who-could, exports, manifests
    assert len(WRITE_ROUTES) >= 25


@pytest.mark.parametrize("route", AUDIT_ROUTES, ids=_id)
def test_an_auditor_reads_every_audit_route_and_export(
    client: FlaskClient,
    world: World,
    auditor: dict[str, str],
    creds: Credentials,
    request: pytest.FixtureRequest,
    route: tuple[str, str],
):
    url = _fill(route[1], world, request)
    response = client.get(url, query_string=AUDIT_QUERY, headers=auditor)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    # The same answer an administrator gets: nothing is filtered for auditors.
    assert response.data == client.get(url, query_string=AUDIT_QUERY, headers=creds["admin"]).data


@pytest.mark.parametrize("route", AUDIT_ROUTES, ids=_id)
def test_anybody_else_is_refused_every_audit_route(
    client: FlaskClient,
    world: World,
    creds: Credentials,
    request: pytest.FixtureRequest,
    route: tuple[str, str],
):
    url = _fill(route[1], world, request)
    assert client.get(url, query_string=AUDIT_QUERY, headers=creds["owner"]).status_code == 403
    assert client.get(url, query_string=AUDIT_QUERY).status_code == 401


def test_an_auditor_reads_the_deploy_tokens_and_history_of_projects_and_groups_they_are_no_member_of(
    client: FlaskClient, world: World, auditor: dict[str, str], token_id: int, group_token_id: int
):
    for base, token in (
        (f"/api/v4/projects/{world.sibling_project}/deploy_tokens", token_id),
        (f"/api/v4/groups/{world.sibling}/deploy_tokens", group_token_id),
    ):
        assert [t["id"] for t in client.get(base, headers=auditor).get_json()] == [token]
        assert client.get(f"{base}/{token}", headers=auditor).get_json()["id"] == token
        history = client.get(f"{base}/{token}/history", headers=auditor)
        assert history.status_code == 200 and history.get_json()
    assert client.get(f"/api/v4/projects/{world.sibling_project}/members", headers=auditor).status_code == 200


def test_an_auditor_lists_every_group_and_project(client: FlaskClient, world: World, auditor: dict[str, str]):
    projects = {p["id"] for p in client.get("/api/v4/projects", headers=auditor).get_json()}
    assert projects == {world.project, world.deep_project, world.sibling_project}
    groups = {g["id"] for g in client.get("/api/v4/groups", headers=auditor).get_json()}
    assert groups == {world.top, world.sub, world.subsub, world.sibling}


def test_an_auditor_does_not_read_the_ci_deploy_password(
    client: FlaskClient, world: World, auditor: dict[str, str]
):
    """Reading is of records, never of secrets: the CI variables carry a token value (administrators only)."""
    url = f"/api/v4/projects/{world.project}/deploy_token_variables"
    assert client.get(url, headers=auditor).status_code == 403


# Writing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", WRITE_ROUTES, ids=_id)
def test_an_auditor_is_refused_every_write_of_the_api(
    client: FlaskClient,
    world: World,
    auditor: dict[str, str],
    request: pytest.FixtureRequest,
    route: tuple[str, str],
):
    method, path = route
    url = _fill(path, world, request)
    head = world.runtime.store.head()
    response = client.open(url, method=method.upper(), json={}, headers=auditor)
    assert response.status_code == 403, response.get_data(as_text=True)[:300]
    assert world.runtime.store.head() == head


def test_the_refusal_says_why(client: FlaskClient, world: World, auditor: dict[str, str]):
    body = {"name": "x", "scopes": ["read_repository"]}
    url = f"/api/v4/projects/{world.sibling_project}/deploy_tokens"
    response = client.post(url, json=body, headers=auditor)
    assert response.get_json() == {"message": "403 Forbidden - auditors have read-only access"}


@pytest.mark.parametrize("route", UI_FORMS, ids=lambda r: f"{r[1]} {r[0]}")
def test_an_auditor_is_refused_every_form_of_the_ui(
    app: Flask,
    world: World,
    auditor: dict[str, str],
    request: pytest.FixtureRequest,
    route: tuple[str, str],
):
    rule, method = route
    group = rule.startswith("/groups/")
    path = rule.replace("<path:full_path>", "other" if group else "other/elsewhere")
    if "<int:token_id>" in path:
        token = request.getfixturevalue("group_token_id" if group else "token_id")
        path = path.replace("<int:token_id>", str(token))
    web = app.test_client()
    page = web.get("/users/sign_in")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert csrf is not None
    signed = web.post(
        "/users/sign_in",
        data={"personal_access_token": auditor["PRIVATE-TOKEN"], "csrf_token": csrf.group(1)},
    )
    assert signed.status_code == 303
    settings = web.get("/other/elsewhere/-/settings/repository")
    assert settings.status_code == 200  # an auditor sees the page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', settings.get_data(as_text=True))
    assert csrf is not None
    head = world.runtime.store.head()
    form = {"csrf_token": csrf.group(1), "name": "x", "scopes": "read_repository"}
    response = web.open(path, method=method, data=form)
    assert response.status_code == 403
    assert world.runtime.store.head() == head


def test_an_administrator_who_is_also_an_auditor_keeps_every_right(
    client: FlaskClient, world: World, creds: Credentials
):
    root = _user_id(world, creds["admin"], client)
    assert (
        client.put(f"/api/v4/users/{root}", json={"auditor": True}, headers=creds["admin"]).status_code == 200
    )
    body = {"name": "still", "scopes": ["read_repository"]}
    created = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens", json=body, headers=creds["admin"]
    )
    assert created.status_code == 201
    assert client.get("/api/v4/deploy_tokens", headers=creds["admin"]).status_code == 200


# The CLI -----------------------------------------------------------------------------------------------


def test_the_cli_creates_an_auditor(runtime: Runtime, capsys: pytest.CaptureFixture[str]):
    parser = build_parser()
    args: argparse.Namespace = parser.parse_args(
        ["users", "create", "--username", "ann", "--email", "ann@example.com", "--auditor"]
    )
    assert args.handler(runtime, args) == 0
    assert capsys.readouterr().out.startswith("Created auditor ann <ann@example.com>")
    listing = parser.parse_args(["users", "list", "--json"])
    assert listing.handler(runtime, listing) == 0
    rows = {row["username"]: row["is_auditor"] for row in json.loads(capsys.readouterr().out)}
    assert rows == {"ann": True}


def test_the_services_refuse_an_auditors_commands_whatever_the_entry_point(
    world: World, auditor: dict[str, str], token_id: int, group_token_id: int
):
    """Reading everything never turns into writing: the services decide commands by role alone, so a command
    sent by an auditor's actor (not through the API's write check) is refused as for any non-member."""
    runtime = world.runtime
    actor = runtime.access.authenticate(auditor["PRIVATE-TOKEN"]).actor
    project, group = world.sibling_project, world.sibling
    runtime.tokens.check_token_reader(actor, "project", project)  # reads: yes
    runtime.tokens.check_token_reader(actor, "group", group)
    head = runtime.store.head()
    commands = [
        lambda: runtime.tokens.create_token(actor, "project", project, name="x", scopes=["read_repository"]),
        lambda: runtime.tokens.create_token(actor, "group", group, name="x", scopes=["read_repository"]),
        lambda: runtime.tokens.revoke_token(actor, "project", project, token_id),
        lambda: runtime.tokens.revoke_token(actor, "group", group, group_token_id),
        lambda: runtime.tokens.rotate_token(actor, "project", project, token_id),
        lambda: runtime.tokens.delete_token(actor, "project", project, token_id),
        lambda: runtime.members.set_member(actor, "project", project, world.users["guest"].user_id, 30),
        lambda: runtime.members.remove_member(actor, "group", group, world.users["guest"].user_id),
        lambda: runtime.directory.set_dependency_proxy(actor, group, False),
        lambda: runtime.directory.change_project_features(actor, project, container_registry_enabled=False),
        lambda: runtime.lifecycle.update_project(actor, project, name="Renamed"),
        lambda: runtime.lifecycle.delete_group(actor, group),
        lambda: runtime.directory.set_feature(actor, "project_deploy_token_expiring_notifications", False),
        lambda: runtime.directory.update_user(actor, world.users["guest"].user_id, is_auditor=True),
    ]
    for command in commands:
        with pytest.raises((NotFound, PermissionDenied)):
            command()
    assert runtime.store.head() == head
