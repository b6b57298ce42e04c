"""Auth checks through the Flask test client, on both backends: nginx auth_request (Git, packages,
behaviour [api-routes]), the registry token server (/jwt/auth, container registry and dependency proxy),
the JSON check, activity recording and /metrics (behaviour [git], [registry], [dependency-proxy],
[packages], [external-authorization], [activity])."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.activity import install_activity
from api.app import create_app
from api.auth_checks.common import AUTH_CHALLENGE
from api.auth_checks.registry import registry_certificate_pem, registry_signing_key
from api.registry_token import decode_token
from deploy_tokens.runtime import Runtime
from deploy_tokens.tokens import IssuedToken
from domain.clock import FixedClock
from domain.token_values import generate_token
from infrastructure.activity import ActivityEvent, ActivityRecorder, activity_rows
from projections.credential_index import StaleIndex

from ..conftest import T0, World

CLIENT_ADDRESS = "203.0.113.7"
CLONE = "/acme/api.git/info/refs?service=git-upload-pack"
UPLOAD_PACK = "/acme/api.git/git-upload-pack"
GENERIC = "/api/v4/projects/{ref}/packages/generic/tool/1.0.0/tool.tar.gz"


# Helpers -----------------------------------------------------------------------------------------------


def basic(username: str, password: str) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


def git_auth(token: IssuedToken) -> dict[str, str]:
    return basic(token.token.username, token.value)


def nginx(
    client: FlaskClient, uri: str, method: str = "GET", headers: dict[str, str] | None = None
) -> TestResponse:
    """What nginx's auth_request sub-request carries (the headers of tests/e2e/harness.py's nginx configuration)."""
    return client.get(
        "/internal/auth_request",
        headers={
            "X-Original-URI": uri,
            "X-Original-Method": method,
            "X-Original-Remote-Addr": CLIENT_ADDRESS,
            "User-Agent": "git/2.39.5",
            **(headers or {}),
        },
    )


def issue(world: World, kind: str, holder: int, *scopes: str, **options: object) -> IssuedToken:
    return world.runtime.tokens.create_token(
        world.admin,
        "project" if kind == "project" else "group",
        holder,
        name="deploy",
        scopes=list(scopes),
        **options,  # type: ignore[arg-type]
    )


def registry_token(
    client: FlaskClient,
    token: IssuedToken | None,
    *scopes: str,
    service: str = "container_registry",
    username: str | None = None,
) -> TestResponse:
    query = [("service", service), *(("scope", scope) for scope in scopes)]
    headers = {}
    if token is not None:
        headers = basic(username or token.token.username, token.value)
        query.append(("account", token.token.username))
    return client.get("/jwt/auth", query_string=query, headers=headers)


def granted(
    runtime: Runtime, response: TestResponse, service: str = "container_registry"
) -> dict[str, list[str]]:
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    claims = decode_token(
        registry_signing_key(runtime.keys),
        body["token"],
        audience=service,
        issuer="deploy-token-service",
        now=runtime.clock.now(),
    )
    return {entry["name"]: entry["actions"] for entry in claims["access"]}  # type: ignore[attr-defined]


@pytest.fixture
def recorder(app: Flask, runtime: Runtime) -> Iterator[ActivityRecorder]:
    installed = install_activity(app, runtime)
    yield installed
    installed.close()  # before the runtime closes its database


# Git over HTTP (behaviour [git]) --------------------------------------------------------------------------------


def test_git_clone_is_allowed_with_read_repository(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    for uri, method in ((CLONE, "GET"), (UPLOAD_PACK, "POST")):
        response = nginx(client, uri, method, git_auth(token))
        assert response.status_code == 200
        assert response.headers["X-Auth-User"] == token.token.username
        assert response.headers["X-Deploy-Token-Id"] == str(token.token.token_id)
        assert response.get_data() == b""


def test_answers_are_a_status_and_headers_with_no_body_and_no_content_type(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    answers = [
        nginx(client, CLONE, headers=git_auth(token)),  # 200
        nginx(client, CLONE),  # 401
        nginx(client, "/other/project.git/info/refs?service=git-upload-pack", headers=git_auth(token)),  # 403
    ]
    assert [answer.status_code for answer in answers] == [200, 401, 403]
    for answer in answers:
        assert answer.get_data() == b""
        assert answer.headers["Content-Length"] == "0"
        assert "Content-Type" not in answer.headers


def test_project_addressed_without_the_git_suffix_and_case_insensitively(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    assert (
        nginx(client, "/acme/api/info/refs?service=git-upload-pack", headers=git_auth(token)).status_code
        == 200
    )
    assert (
        nginx(client, "/ACME/Api.git/info/refs?service=git-upload-pack", headers=git_auth(token)).status_code
        == 200
    )


def test_custom_username_must_match(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository", username="ci-bot")
    assert nginx(client, CLONE, headers=basic("ci-bot", token.value)).status_code == 200
    assert nginx(client, CLONE, headers=basic("CI-bot", token.value)).status_code == 401  # case-sensitive


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param({"Authorization": "Bearer x"}, id="bearer-is-not-git-auth"),
    ],
)
def test_git_without_basic_credentials_is_challenged(client: FlaskClient, world: World, headers):
    response = nginx(client, CLONE, headers=headers)
    assert response.status_code == 401
    # git sends the user:token of the URL only after this challenge.
    assert response.headers["WWW-Authenticate"] == AUTH_CHALLENGE


def test_wrong_username_is_401(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    response = nginx(client, CLONE, headers=basic("someone-else", token.value))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == AUTH_CHALLENGE
    assert "X-Auth-User" not in response.headers


@pytest.mark.parametrize(
    "password",
    [
        pytest.param(generate_token(), id="well-formed-unknown"),
        pytest.param("gldt-short", id="malformed"),
        pytest.param("glpat-" + "a" * 30, id="personal-access-token-shape"),
        pytest.param("", id="empty"),
    ],
)
def test_unknown_or_malformed_token_is_401(client: FlaskClient, world: World, password: str):
    issue(world, "project", world.project, "read_repository")
    response = nginx(client, CLONE, headers=basic("gitlab+deploy-token-1", password))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == AUTH_CHALLENGE


@pytest.mark.parametrize(
    "header", ["Basic !!!not-base64!!!", "Basic " + base64.b64encode(b"no-colon").decode()]
)
def test_undecodable_basic_header_is_401(client: FlaskClient, world: World, header: str):
    assert nginx(client, CLONE, headers={"Authorization": header}).status_code == 401


def test_another_projects_token_is_403(client: FlaskClient, world: World):
    token = issue(world, "project", world.sibling_project, "read_repository")
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 403


def test_registry_only_token_cannot_clone(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry", "write_registry", "read_package_registry")
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 403


def test_revoked_token_is_refused_right_after_revocation(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 200
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 401


def test_deleted_token_is_401(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    world.runtime.tokens.delete_token(world.admin, "project", world.project, token.token.token_id)
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 401


def test_expired_token_is_401_from_midnight_utc(client: FlaskClient, world: World, clock: FixedClock):
    expiry = date(2026, 2, 1)
    token = issue(world, "project", world.project, "read_repository", expires_at=expiry)
    clock.set(T0.replace(year=2026, month=1, day=31, hour=23, minute=59))
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 200
    clock.set(
        T0.replace(year=2026, month=2, day=1, hour=0, minute=0)
    )  # behaviour [expiry]: now >= expires_at
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 401


@pytest.mark.parametrize(
    ("uri", "method"),
    [
        ("/acme/api.git/info/refs?service=git-receive-pack", "GET"),
        ("/acme/api.git/git-receive-pack", "POST"),
        ("/acme/api/git-receive-pack", "POST"),
        ("/acme/api.git/info/lfs/objects/batch", "POST"),
        ("/acme/api.git/info/refs?service=git-upload-pack&service=git-receive-pack", "GET"),
    ],
)
def test_push_is_never_allowed(client: FlaskClient, world: World, uri: str, method: str):
    token = issue(world, "project", world.project, *("read_repository", "read_registry", "write_registry"))
    assert nginx(client, uri, method, git_auth(token)).status_code == 403


def test_repository_disabled_is_403(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    world.runtime.directory.change_project_features(world.admin, world.project, repository_enabled=False)
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 403


def test_group_token_reaches_projects_two_subgroups_down_and_created_later(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_repository")
    deep = "/acme/backend/services/db.git/info/refs?service=git-upload-pack"
    assert nginx(client, deep, headers=git_auth(token)).status_code == 200
    later = world.runtime.directory.create_project(world.admin, name="Later", namespace_id=world.sub)
    assert later
    assert (
        nginx(client, "/acme/backend/later.git/git-upload-pack", "POST", git_auth(token)).status_code == 200
    )
    sibling = "/other/elsewhere.git/info/refs?service=git-upload-pack"
    assert nginx(client, sibling, headers=git_auth(token)).status_code == 403


def test_subgroup_token_does_not_reach_its_parent(client: FlaskClient, world: World):
    token = issue(world, "group", world.sub, "read_repository")
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 403


@pytest.mark.parametrize(
    ("uri", "served"),
    [
        ("/other/elsewhere.git/../../acme/api.git/info/refs?service=git-upload-pack", "acme"),
        ("/acme/api.git/%2e%2e/%2e%2e/other/elsewhere.git/info/refs?service=git-upload-pack", "other"),
        ("/acme/./api.git/info/refs?service=git-upload-pack", "acme"),
        ("/acme//api.git/info/refs?service=git-upload-pack", "acme"),
        ("/acme/api.git/%2e%2e/%2e%2e/%2e%2e/other/elsewhere.git/info/refs", None),  # above the root: 400
    ],
)
def test_dot_segments_are_read_as_nginx_serves_them(
    client: FlaskClient, world: World, uri: str, served: str | None
):
    """nginx serves the normalised path but sends the raw one: the decision is about the served project."""
    for group, path in ((world.top, "acme"), (world.sibling, "other")):
        token = issue(world, "group", group, "read_repository")
        status = nginx(client, uri, headers=git_auth(token)).status_code
        assert status == (200 if path == served else 401 if served is None else 403), (path, status)


def test_unknown_project_is_403_for_a_valid_token(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_repository")
    assert nginx(client, "/acme/nope.git/info/refs", headers=git_auth(token)).status_code == 403


def test_nginx_may_forward_the_original_method(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    response = client.post(
        "/internal/auth_request",
        headers={"X-Original-URI": UPLOAD_PACK, "X-Original-Method": "POST", **git_auth(token)},
    )
    assert response.status_code == 200


# Package registries (behaviour [packages]) ---------------------------------------------------------------------


@pytest.fixture
def packages(world: World) -> dict[str, IssuedToken]:
    return {
        "read": issue(world, "project", world.project, "read_package_registry"),
        "write": issue(world, "project", world.project, "read_package_registry", "write_package_registry"),
        "registry": issue(world, "project", world.project, "read_registry"),
    }


@pytest.mark.parametrize("ref", ["1", "acme%2Fapi"])
@pytest.mark.parametrize(
    "style",
    ["basic-any-username", "deploy-token-header", "bearer"],
)
def test_package_read_with_every_credential_style(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken], ref: str, style: str
):
    value = packages["read"].value
    headers = {
        "basic-any-username": basic(
            "whatever", value
        ),  # the Basic username is ignored (behaviour [packages])
        "deploy-token-header": {"Deploy-Token": value},
        "bearer": {"Authorization": f"Bearer {value}"},
    }[style]
    uri = GENERIC.format(ref=ref if ref != "1" else str(world.project))
    response = nginx(client, uri, "GET", headers)
    assert response.status_code == 200
    assert response.headers["X-Deploy-Token-Id"] == str(packages["read"].token.token_id)
    assert nginx(client, uri, "HEAD", headers).status_code == 200


@pytest.mark.parametrize("method", ["PUT", "POST", "PATCH", "DELETE"])
def test_package_write_needs_write_package_registry(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken], method: str
):
    uri = GENERIC.format(ref=world.project)
    assert nginx(client, uri, method, {"Deploy-Token": packages["write"].value}).status_code == 200
    assert nginx(client, uri, method, {"Deploy-Token": packages["read"].value}).status_code == 403


def test_missing_original_method_is_treated_as_a_write(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken]
):
    response = client.get(
        "/internal/auth_request",
        headers={"X-Original-URI": GENERIC.format(ref=world.project), "Deploy-Token": packages["read"].value},
    )
    assert response.status_code == 403


def test_basic_password_wins_over_other_headers(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken]
):
    uri = GENERIC.format(ref=world.project)
    good, bad = packages["read"].value, generate_token()
    assert nginx(client, uri, "GET", {**basic("x", good), "Deploy-Token": bad}).status_code == 200
    assert nginx(client, uri, "GET", {**basic("x", bad), "Deploy-Token": good}).status_code == 401
    assert (
        nginx(client, uri, "GET", {"Deploy-Token": good, "Authorization": f"Bearer {bad}"}).status_code == 200
    )


def test_package_statuses(client: FlaskClient, world: World, packages: dict[str, IssuedToken]):
    uri = GENERIC.format(ref=world.project)
    no_credentials = nginx(client, uri)
    assert no_credentials.status_code == 401
    assert no_credentials.headers["WWW-Authenticate"] == AUTH_CHALLENGE
    assert nginx(client, uri, "GET", {"Deploy-Token": generate_token()}).status_code == 401
    assert nginx(client, uri, "GET", {"Deploy-Token": packages["registry"].value}).status_code == 403
    other = GENERIC.format(ref=world.sibling_project)
    assert nginx(client, other, "GET", {"Deploy-Token": packages["read"].value}).status_code == 403


@pytest.mark.parametrize(
    "uri",
    [
        "/api/v4/projects/{project}/packages/pypi/simple/tool/",
        "/api/v4/projects/{project}/packages/maven/com/acme/tool/1.0/tool-1.0.jar",
        "/api/v4/projects/{project}/packages/npm/@acme%2ftool",
        "/api/v4/projects/{project}/packages/nuget/index.json",
    ],
)
def test_any_package_format(client: FlaskClient, world: World, packages: dict[str, IssuedToken], uri: str):
    response = nginx(
        client, uri.format(project=world.project), "GET", {"Deploy-Token": packages["read"].value}
    )
    assert response.status_code == 200


def test_group_level_package_endpoints_accept_the_exact_group_only(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_package_registry")
    headers = {"Deploy-Token": token.value}
    assert (
        nginx(client, f"/api/v4/groups/{world.top}/-/packages/maven/a/b/1/b.pom", "GET", headers).status_code
        == 200
    )
    assert nginx(client, "/api/v4/groups/acme/-/packages/npm/@acme%2ftool", "GET", headers).status_code == 200
    subgroup = "/api/v4/groups/acme%2Fbackend/-/packages/maven/a/b/1/b.pom"
    assert nginx(client, subgroup, "GET", headers).status_code == 403
    # ... while project-level endpoints in subgroups work (behaviour [reach]).
    deep = GENERIC.format(ref="acme%2Fbackend%2Fservices%2Fdb")
    assert nginx(client, deep, "GET", headers).status_code == 200


@pytest.mark.parametrize(
    "uri",
    [
        "/api/v4/projects/{project}",
        "/api/v4/projects/{project}/deploy_tokens",
        "/api/v4/projects/{project}/repository/files/README.md/raw",
        "/api/v4/projects/{project}/packages",
        "/api/v4/projects/{project}/packages/17",
        "/api/v4/projects/{project}/packages/protection/rules",
        "/api/v4/user",
        "/somewhere/else",
        "",
    ],
)
def test_r13_other_api_urls_never_accept_deploy_tokens(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken], uri: str
):
    headers = {"Deploy-Token": packages["write"].value, **basic("x", packages["write"].value)}
    response = nginx(client, uri.format(project=world.project), "GET", headers)
    assert response.status_code == 401  # as GitLab's API: the deploy token is ignored there
    assert "X-Auth-User" not in response.headers


def test_instance_level_package_routes_name_no_project(
    client: FlaskClient, world: World, packages: dict[str, IssuedToken]
):
    headers = {"Deploy-Token": packages["read"].value}
    assert nginx(client, "/api/v4/packages/maven/com/acme/tool/1.0/x.jar", "GET", headers).status_code == 403


# External authorization (behaviour [external-authorization]) ----------------------------------------------------------


def test_external_authorization_refuses_git_and_packages_but_not_the_registry(
    client: FlaskClient, world: World
):
    token = issue(
        world,
        "project",
        world.project,
        "read_repository",
        "read_registry",
        "write_registry",
        "read_package_registry",
    )
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 200
    world.runtime.directory.set_external_authorization(world.admin, True)
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 403
    package = nginx(client, GENERIC.format(ref=world.project), "GET", {"Deploy-Token": token.value})
    assert package.status_code == 403
    response = registry_token(client, token, "repository:acme/api:pull,push")
    assert granted(world.runtime, response) == {"acme/api": ["pull", "push"]}


# Stale credential data: fail closed, nginx-compatible ---------------------------------------------------


@pytest.fixture
def stale(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise StaleIndex("credential data is behind the event log; try again")

    monkeypatch.setattr(runtime.index, "ensure_fresh", refuse)


def test_stale_index_is_a_403_nginx_can_recognise(client: FlaskClient, world: World, stale: None):
    token = issue(world, "project", world.project, "read_repository", "read_registry")
    response = nginx(client, CLONE, headers=git_auth(token))
    # Not 503 (nginx would turn it into a 500) and not 401 (git would erase the stored credential).
    assert response.status_code == 403
    assert response.headers["Retry-After"] == "1"
    assert response.headers["X-Auth-Error"] == "unavailable"
    assert "X-Auth-User" not in response.headers


def test_stale_index_elsewhere_is_503(client: FlaskClient, world: World, stale: None):
    token = issue(world, "project", world.project, "read_registry")
    response = registry_token(client, token, "repository:acme/api:pull")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["errors"][0]["code"] == "UNAVAILABLE"
    check = client.post(
        "/internal/auth/check",
        json={
            "username": token.token.username,
            "token": token.value,
            "action": "registry_pull",
            "project": 1,
        },
    )
    assert check.status_code == 503
    assert check.headers["Retry-After"] == "1"


def test_denials_never_need_the_index_for_malformed_values(client: FlaskClient, world: World, stale: None):
    assert nginx(client, CLONE, headers=basic("u", "not-a-token")).status_code == 401


# Docker registry token server (behaviour [registry]) -----------------------------------------------------------------


def test_registry_grants_exactly_the_allowed_actions(client: FlaskClient, world: World):
    runtime = world.runtime
    read = issue(world, "project", world.project, "read_registry")
    write = issue(world, "project", world.project, "read_registry", "write_registry")
    write_only = issue(world, "project", world.project, "write_registry")
    scope = "repository:acme/api:pull,push"
    assert granted(runtime, registry_token(client, read, scope)) == {"acme/api": ["pull"]}
    assert granted(runtime, registry_token(client, write, scope)) == {"acme/api": ["pull", "push"]}
    # Pushing needs both scopes, and pulling needs read_registry: a write-only token gets nothing here.
    assert granted(runtime, registry_token(client, write_only, scope)) == {}
    # Images below the project: the longest prefix that is a project names it.
    image = "repository:acme/api/app/web:pull"
    assert granted(runtime, registry_token(client, read, image)) == {"acme/api/app/web": ["pull"]}


def test_registry_never_grants_delete_or_star(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry", "write_registry")
    response = registry_token(client, token, "repository:acme/api:delete", "repository:acme/api/app:*")
    assert granted(world.runtime, response) == {}
    mixed = registry_token(client, token, "repository:acme/api:pull,delete,*,push")
    assert granted(world.runtime, mixed) == {"acme/api": ["pull", "push"]}


def test_registry_drops_other_projects_and_other_resource_types(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry", "write_registry")
    response = registry_token(
        client,
        token,
        "repository:other/elsewhere:pull",
        "repository:acme/nope:pull",
        "registry:catalog:*",
        "repository:acme/api:pull",
    )
    assert granted(world.runtime, response) == {"acme/api": ["pull"]}


def test_group_token_on_the_registry_covers_subgroups(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_registry")
    response = registry_token(client, token, "repository:acme/backend/services/db/img:pull")
    assert granted(world.runtime, response) == {"acme/backend/services/db/img": ["pull"]}


def test_registry_disabled_project_is_dropped(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry")
    world.runtime.directory.change_project_features(
        world.admin, world.project, container_registry_enabled=False
    )
    assert granted(world.runtime, registry_token(client, token, "repository:acme/api:pull")) == {}


def test_login_without_scope(client: FlaskClient, world: World):
    registry = issue(world, "project", world.project, "read_registry")
    assert granted(world.runtime, registry_token(client, registry)) == {}  # skopeo login: empty access
    repository_only = issue(world, "project", world.project, "read_repository", "read_package_registry")
    denied = registry_token(client, repository_only)
    assert denied.status_code == 403
    assert denied.get_json() == {"errors": [{"code": "DENIED", "message": "access forbidden"}]}
    # Login needs a registry scope even when a scope is requested (behaviour [registry]).
    assert registry_token(client, repository_only, "repository:acme/api:pull").status_code == 403


@pytest.mark.parametrize("case", ["bad-password", "wrong-username", "anonymous", "revoked"])
def test_registry_bad_credentials_are_401(client: FlaskClient, world: World, case: str):
    token = issue(world, "project", world.project, "read_registry")
    if case == "bad-password":
        response = client.get(
            "/jwt/auth",
            query_string={"service": "container_registry", "scope": "repository:acme/api:pull"},
            headers=basic(token.token.username, generate_token()),
        )
    elif case == "wrong-username":
        response = registry_token(client, token, "repository:acme/api:pull", username="root")
    elif case == "anonymous":
        response = registry_token(client, None, "repository:acme/api:pull")
    else:
        world.runtime.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
        response = registry_token(client, token, "repository:acme/api:pull")
    assert response.status_code == 401
    assert response.get_json()["errors"][0]["code"] == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"] == AUTH_CHALLENGE


def test_registry_claims(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry")
    body = registry_token(client, token, "repository:acme/api:pull").get_json()
    claims = decode_token(
        registry_signing_key(world.runtime.keys),
        body["token"],
        audience="container_registry",
        issuer="deploy-token-service",
        now=world.runtime.clock.now(),
    )
    assert claims["sub"] == token.token.username
    assert claims["auth_type"] == "deploy_token"
    assert claims["user"] == {
        "token_type": "deploy_token",
        "username": token.token.username,
        "deploy_token_id": token.token.token_id,
    }
    assert token.value not in str(claims)


def test_post_form_password_grant(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry", "write_registry")
    # containerd joins scopes with spaces in one value; the "+" of the username must be URL-encoded.
    form = (
        f"grant_type=password&username=gitlab%2Bdeploy-token-{token.token.token_id}&password={token.value}"
        "&service=container_registry"
        "&scope=repository%3Aacme%2Fapi%3Apull%2Cpush+repository%3Aacme%2Fapi%2Fcache%3Apull"
        "&client_id=containerd&access_type=offline"
    )
    response = client.post("/jwt/auth", data=form, content_type="application/x-www-form-urlencoded")
    assert granted(world.runtime, response) == {"acme/api": ["pull", "push"], "acme/api/cache": ["pull"]}
    unencoded = form.replace("gitlab%2Bdeploy", "gitlab+deploy")  # "+" decodes to a space: wrong username
    assert (
        client.post("/jwt/auth", data=unencoded, content_type="application/x-www-form-urlencoded").status_code
        == 401
    )


@pytest.mark.parametrize(
    ("method", "params", "status"),
    [
        ("GET", {"service": "elsewhere"}, 404),
        ("GET", {}, 404),
        ("GET", {"service": "container_registry", "scope": "repository:ACME/Api:pull"}, 400),
        ("GET", {"service": "container_registry", "scope": "nonsense"}, 400),
        ("POST", {"grant_type": "refresh_token", "service": "container_registry"}, 400),
        ("POST", {"service": "container_registry"}, 400),
    ],
)
def test_registry_bad_requests(client: FlaskClient, world: World, method: str, params: dict, status: int):
    token = issue(world, "project", world.project, "read_registry")
    if method == "GET":
        response = client.get("/jwt/auth", query_string=params, headers=git_auth(token))
    else:
        response = client.post("/jwt/auth", data=params, headers=git_auth(token))
    assert response.status_code == status
    assert response.get_json()["errors"][0]["message"]


def test_issuer_is_configurable(runtime: Runtime, world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(
        runtime, "settings", replace(runtime.settings, registry_issuer="registry-auth.example.com")
    )
    app = create_app(runtime)
    token = issue(world, "project", world.project, "read_registry")
    body = registry_token(app.test_client(), token, "repository:acme/api:pull").get_json()
    claims = decode_token(
        registry_signing_key(runtime.keys),
        body["token"],
        audience="container_registry",
        issuer="registry-auth.example.com",
        now=runtime.clock.now(),
    )
    assert claims["iss"] == "registry-auth.example.com"


def test_certificate_endpoint_serves_the_signer_pem(client: FlaskClient, world: World):
    response = client.get("/jwt/certificate")
    assert response.status_code == 200
    assert response.mimetype == "application/x-pem-file"
    assert response.get_data() == registry_signing_key(world.runtime.keys).certificate_pem()
    assert response.get_data().startswith(b"-----BEGIN CERTIFICATE-----")
    # The CLI-free way: the same PEM from the settings alone, no database needed.
    assert response.get_data() == registry_certificate_pem(world.runtime.settings)


# Dependency proxy (behaviour [dependency-proxy]) ----------------------------------------------------------------------

PROXY_IMAGE = "repository:acme/dependency_proxy/containers/alpine:pull"


def test_dependency_proxy_needs_a_group_token_with_both_scopes(client: FlaskClient, world: World):
    runtime = world.runtime
    both = issue(world, "group", world.top, "read_registry", "write_registry")
    virtual = issue(world, "group", world.top, "read_virtual_registry", "write_virtual_registry")
    read_only = issue(world, "group", world.top, "read_registry")
    project = issue(world, "project", world.project, "read_registry", "write_registry")
    for token in (both, virtual):
        response = registry_token(client, token, PROXY_IMAGE, service="dependency_proxy")
        assert granted(runtime, response, "dependency_proxy") == {
            "acme/dependency_proxy/containers/alpine": ["pull"]
        }
        login = registry_token(client, token, service="dependency_proxy")
        assert granted(runtime, login, "dependency_proxy") == {}
    for token in (read_only, project):
        response = registry_token(client, token, PROXY_IMAGE, service="dependency_proxy")
        assert response.status_code == 403
        assert response.get_json()["errors"][0]["code"] == "DENIED"


def test_dependency_proxy_covers_subgroups_only(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_registry", "write_registry")
    response = registry_token(
        client,
        token,
        "repository:acme/backend/dependency_proxy/containers/redis:pull",
        "repository:other/dependency_proxy/containers/redis:pull",
        "repository:acme/dependency_proxy/containers/alpine:delete",
        service="dependency_proxy",
    )
    assert granted(world.runtime, response, "dependency_proxy") == {
        "acme/backend/dependency_proxy/containers/redis": ["pull"]
    }


def test_dependency_proxy_disabled_is_403(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_registry", "write_registry")
    world.runtime.directory.set_dependency_proxy(world.admin, world.top, False)
    assert registry_token(client, token, PROXY_IMAGE, service="dependency_proxy").status_code == 403


def test_dependency_proxy_bad_credentials_are_401(client: FlaskClient, world: World):
    response = client.get(
        "/jwt/auth",
        query_string={"service": "dependency_proxy", "scope": PROXY_IMAGE},
        headers=basic("gitlab+deploy-token-1", generate_token()),
    )
    assert response.status_code == 401


# JSON check for other resource servers ------------------------------------------------------------------


def check(client: FlaskClient, **body: object) -> TestResponse:
    return client.post("/internal/auth/check", json=body)


def test_json_check_answers_allowed_and_denied(client: FlaskClient, world: World):
    token = issue(world, "group", world.top, "read_repository", "read_package_registry")
    username, value, token_id = token.token.username, token.value, token.token.token_id
    allowed = check(
        client, username=username, token=value, action="git_read", project="acme/backend/services/db"
    )
    assert allowed.status_code == 200
    assert allowed.get_json() == {"allowed": True, "reason": "allowed", "token_id": token_id}
    by_id = check(client, username=username, token=value, action="git_read", project=world.project)
    assert by_id.get_json()["allowed"] is True
    denied = check(client, username=username, token=value, action="git_read", project=world.sibling_project)
    assert denied.get_json() == {"allowed": False, "reason": "outside_token_namespace", "token_id": token_id}
    mismatch = check(client, username="nobody", token=value, action="git_read", project=world.project)
    assert mismatch.get_json()["reason"] == "username_mismatch"
    # Packages ignore the username; a group is a group-level endpoint (the exact group only).
    assert check(client, token=value, action="package_read", group="acme").get_json()["allowed"] is True
    subgroup = check(client, token=value, action="package_read", group="acme%2Fbackend").get_json()
    assert subgroup["reason"] == "outside_token_namespace"
    unknown = check(client, username=username, token=generate_token(), action="git_read", project=1)
    assert unknown.get_json() == {"allowed": False, "reason": "unknown_token", "token_id": None}
    api = check(client, token=value, action="api").get_json()
    assert api == {"allowed": False, "reason": "deploy_tokens_not_accepted_here", "token_id": token_id}


@pytest.mark.parametrize(
    "body",
    [
        {"action": "git_read", "project": 1},
        {"token": "", "action": "git_read", "project": 1},
        {"token": "gldt-x", "action": "fly", "project": 1},
        {"token": "gldt-x", "project": 1},
        {"token": "gldt-x", "action": "git_read", "project": 1, "group": 2},
        {"token": "gldt-x", "action": "git_read", "project": True},
        {"token": "gldt-x", "action": "git_read", "project": 0},
        {"token": "gldt-x", "action": "git_read", "project": ["acme"]},
        {"token": 5, "action": "git_read"},
        ["not", "an", "object"],
    ],
)
def test_json_check_bad_input_is_400(client: FlaskClient, world: World, body: object):
    response = client.post("/internal/auth/check", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]


def test_json_check_rejects_a_non_json_body(client: FlaskClient, world: World):
    response = client.post(
        "/internal/auth/check", data="token=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400


# Activity (behaviour [activity], [history]) ---------------------------------------------------------------------------


def test_every_decision_is_recorded_without_token_values(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    runtime = world.runtime
    token = issue(world, "project", world.project, "read_repository", "read_registry")
    unknown = generate_token()
    nginx(client, CLONE, headers=git_auth(token))
    nginx(client, CLONE, headers=basic("gitlab+deploy-token-99", unknown))
    nginx(client, CLONE, headers={**git_auth(token), "User-Agent": f"git/2.39 leaked {token.value}"})
    registry_token(client, token, "repository:acme/api:pull,push")
    check(client, username=token.token.username, token=token.value, action="git_read", project=world.project)
    recorder.flush()

    rows = activity_rows(runtime.db)
    assert [(row.event.endpoint, row.event.action, row.event.allowed, row.event.status) for row in rows] == [
        ("auth_request", "git_read", True, 200),
        ("auth_request", "git_read", False, 401),
        ("auth_request", "git_read", True, 200),
        ("jwt", "registry_login", True, 200),
        ("jwt", "registry_pull", True, 200),
        ("jwt", "registry_push", False, 200),
        ("check", "git_read", True, 200),
    ]
    first, unknown_row = rows[0], rows[1]
    assert first.event.token_id == token.token.token_id
    assert first.event.token_ref is None
    assert (first.event.resource_kind, first.event.resource_ref) == ("project", "acme/api")
    assert first.event.client_addr == CLIENT_ADDRESS
    assert first.event.user_agent == "git/2.39.5"
    assert first.event.occurred_at == T0
    assert unknown_row.event.token_id is None
    assert unknown_row.event.reason == "unknown_token"
    assert unknown_row.event.token_ref == runtime.keys.digest(unknown)[:12]
    assert rows[5].event.reason == "insufficient_scope"
    assert "[REDACTED]" in (rows[2].event.user_agent or "")

    assert [row.id for row in activity_rows(runtime.db, token_id=token.token.token_id)] == [
        row.id for row in rows if row.event.token_id == token.token.token_id
    ]
    assert activity_rows(runtime.db, since=T0 + timedelta(seconds=1)) == []
    assert len(activity_rows(runtime.db, until=T0 + timedelta(seconds=1), limit=3)) == 3
    assert [row.id for row in activity_rows(runtime.db, after_id=rows[4].id)] == [row.id for row in rows[5:]]

    with runtime.db.read() as cursor:
        dump = repr(cursor.execute("SELECT * FROM token_activity").fetchall())
    for secret in (token.value, unknown, token.value[5:], unknown[5:]):
        assert secret not in dump


def test_long_free_text_is_cut_before_it_is_queued(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    token = issue(world, "project", world.project, "read_repository")
    long_path = "/acme/" + "x" * 2000 + ".git/info/refs"
    long_address = "203.0.113.7, " * 400  # a forwarded-for chain as an unchecked proxy might pass it on
    headers = {**git_auth(token), "User-Agent": "a" * 5000, "X-Original-Remote-Addr": long_address}
    nginx(client, long_path, headers=headers)
    queued = list(recorder._queue)
    assert len(queued[-1].user_agent or "") == 512
    assert len(queued[-1].resource_ref or "") == 512
    # Not an IP address: the proxy's claim is not recorded at all, the peer (nginx) is.
    assert queued[-1].client_addr == "127.0.0.1"
    recorder.flush()
    row = activity_rows(world.runtime.db)[-1]
    assert (len(row.event.user_agent or ""), len(row.event.resource_ref or ""), row.event.status) == (
        512,
        512,
        403,
    )


def test_activity_is_written_in_the_background(client: FlaskClient, world: World, recorder: ActivityRecorder):

    token = issue(world, "project", world.project, "read_repository")
    nginx(client, CLONE, headers=git_auth(token))
    deadline = time.monotonic() + 5
    while not activity_rows(world.runtime.db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(activity_rows(world.runtime.db)) == 1


def test_a_large_batch_is_written_whole_and_in_order(app: Flask, world: World):
    # 250 rows: two multi-row chunks of 100 and a remainder of 50, every column in its place.
    recorder = install_activity(app, world.runtime, batch_size=1000, start=False)
    try:
        events = [
            ActivityEvent(
                T0 + timedelta(microseconds=n),
                n if n % 3 else None,
                None if n % 3 else f"ref{n}",
                "auth_request",
                "git_read",
                "project",
                f"acme/p{n}",
                n % 2 == 0,
                "allowed" if n % 2 == 0 else "insufficient_scope",
                200 if n % 2 == 0 else 403,
                f"198.51.100.{n % 250}",
                f"agent/{n}",
            )
            for n in range(250)
        ]
        for event in events:
            recorder.record(event)
        assert recorder.flush() == 250
    finally:
        recorder.close()
    rows = activity_rows(world.runtime.db, limit=1000)
    assert [
        (
            row.event.occurred_at,
            row.event.token_id,
            row.event.token_ref,
            row.event.endpoint,
            row.event.action,
            row.event.resource_kind,
            row.event.resource_ref,
            row.event.allowed,
            row.event.reason,
            row.event.status,
            row.event.client_addr,
            row.event.user_agent,
        )
        for row in rows
    ] == [tuple(event) for event in events]


def test_a_full_queue_drops_and_counts_instead_of_blocking(client: FlaskClient, app: Flask, world: World):
    recorder = install_activity(app, world.runtime, capacity=2, start=False)
    try:
        token = issue(world, "project", world.project, "read_repository")
        for _ in range(5):
            assert nginx(client, CLONE, headers=git_auth(token)).status_code == 200
        assert recorder.stats().dropped == 3
        assert "deploy_tokens_activity_dropped_total 3" in client.get("/metrics").get_data(as_text=True)
        assert recorder.flush() == 2
        assert len(activity_rows(world.runtime.db)) == 2
    finally:
        recorder.close()
    event = ActivityEvent(T0, None, None, "check", "api", None, None, False, "x", 200, None, None)
    recorder.record(event)  # after close: dropped, never queued
    assert recorder.stats().dropped == 4


# Metrics ------------------------------------------------------------------------------------------------


def test_metrics_expose_decisions_latency_lag_and_activity(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    token = issue(world, "project", world.project, "read_repository")
    nginx(client, CLONE, headers=git_auth(token))
    nginx(client, CLONE, headers=git_auth(token))
    nginx(client, CLONE, headers=basic("nobody", token.value))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=0.0.4")
    text = response.get_data(as_text=True)
    assert (
        'deploy_tokens_auth_decisions_total{action="git_read",endpoint="auth_request",'
        'reason="allowed",result="allowed"} 2'
    ) in text
    assert 'reason="username_mismatch",result="denied"} 1' in text
    assert 'deploy_tokens_auth_decision_duration_seconds_count{endpoint="auth_request"} 3' in text
    assert 'deploy_tokens_auth_decision_duration_seconds_bucket{endpoint="auth_request",le="+Inf"} 3' in text
    assert 'deploy_tokens_projection_lag_events{projection="credential_lookup"} 0' in text
    assert "deploy_tokens_projection_status_up 1" in text
    assert "deploy_tokens_activity_dropped_total 0" in text
    assert "deploy_tokens_activity_queue_depth" in text
    assert token.value not in text


def test_metrics_count_stale_answers(client: FlaskClient, world: World, stale: None):
    token = issue(world, "project", world.project, "read_repository")
    nginx(client, CLONE, headers=git_auth(token))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'reason="stale_index",result="unavailable"} 1' in text
