"""Trust-policy endpoints (behaviour [federation]): CRUD on projects and groups, roles as for deploy tokens
(behaviour [manage], [auditors]), every refused body a 400 that writes nothing (behaviour [input]).

The refused bodies are tried on both backends: a policy's text goes into its event and its read-model row,
and PostgreSQL is the store that refuses what cannot be kept (a NUL)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from domain.clock import FixedClock

from ..conftest import BOTH_BACKENDS, World
from .conftest import Credentials

GITLAB = "https://gitlab.example.com"
GITHUB = "https://token.actions.githubusercontent.com"
FIELDS = {
    "id",
    "name",
    "issuer",
    "audience",
    "claims",
    "claim_patterns",
    "scopes",
    "ttl_seconds",
    "created_at",
    "updated_at",
    "created_by",
}
NOT_FOUND = {"message": "404 Trust policy Not Found"}


@pytest.fixture(autouse=True)
def trusted_issuers(world: World) -> None:
    world.runtime.trust_policies.set_trusted_issuers(world.admin, [GITLAB, GITHUB])


def base(kind: str, holder: int | str) -> str:
    return f"/api/v4/{kind}s/{holder}/deploy_token_trust_policies"


def body(**changes: Any) -> dict[str, Any]:
    """A policy every check accepts: ``changes`` replace (or, as None, drop) its fields."""
    policy: dict[str, Any] = {
        "name": "deploy from main",
        "issuer": GITLAB,
        "audience": "https://deploy-tokens.example.com",
        "claims": {"project_path": "acme/api", "ref_protected": "true"},
        "claim_patterns": {"ref": "release/*"},
        "scopes": ["read_registry", "read_repository"],
        "ttl_seconds": 600,
    }
    policy.update(changes)
    return {key: value for key, value in policy.items() if value is not None}


def create(
    client: FlaskClient, headers: dict[str, str], kind: str, holder: int | str, **changes: Any
) -> TestResponse:
    return client.post(base(kind, holder), json=body(**changes), headers=headers)


def listed(client: FlaskClient, creds: Credentials, kind: str, holder: int) -> list[dict[str, Any]]:
    response = client.get(base(kind, holder), headers=creds["admin"])
    assert response.status_code == 200
    items: list[dict[str, Any]] = response.get_json()
    return items


# The round trip ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "role"), [("project", "maintainer"), ("group", "owner")])
def test_create_get_list_change_delete(
    client: FlaskClient, world: World, creds: Credentials, kind: str, role: str
):
    holder = world.project if kind == "project" else world.top
    headers = creds[role]
    created = create(client, headers, kind, holder)
    assert created.status_code == 201, created.get_json()
    policy = created.get_json()
    assert policy == {
        "id": policy["id"],
        "name": "deploy from main",
        "issuer": GITLAB,
        "audience": "https://deploy-tokens.example.com",
        "claims": {"project_path": "acme/api", "ref_protected": "true"},
        "claim_patterns": {"ref": "release/*"},
        "scopes": ["read_repository", "read_registry"],  # behaviour [scopes]: the canonical order
        "ttl_seconds": 600,
        "created_at": "2026-01-10T12:00:00.000Z",
        "updated_at": "2026-01-10T12:00:00.000Z",
        "created_by": role,
    }
    url = f"{base(kind, holder)}/{policy['id']}"
    assert client.get(url, headers=headers).get_json() == policy
    assert client.get(base(kind, holder), headers=headers).get_json() == [policy]

    changed = client.put(url, json={"name": "deploy from release", "ttl_seconds": 60}, headers=headers)
    assert changed.status_code == 200
    assert changed.get_json() == {**policy, "name": "deploy from release", "ttl_seconds": 60}
    assert client.get(url, headers=headers).get_json() == changed.get_json()

    assert client.delete(url, headers=headers).status_code == 204
    assert client.get(url, headers=headers).get_json() == NOT_FOUND
    assert client.get(url, headers=headers).status_code == 404
    assert client.put(url, json={"name": "again"}, headers=headers).status_code == 404
    assert client.delete(url, headers=headers).status_code == 404
    assert client.get(base(kind, holder), headers=headers).get_json() == []


def test_a_holder_addressed_by_its_url_encoded_path(client: FlaskClient, world: World, creds: Credentials):
    created = create(client, creds["admin"], "project", "acme%2Fapi").get_json()
    assert [p["id"] for p in listed(client, creds, "project", world.project)] == [created["id"]]
    group = client.get(base("group", "acme%2Fbackend"), headers=creds["admin"])
    assert (group.status_code, group.get_json()) == (200, [])


def test_ttl_defaults_to_fifteen_minutes_and_conditions_may_be_exact_only(
    client: FlaskClient, world: World, creds: Credentials
):
    created = create(
        client,
        creds["admin"],
        "project",
        world.project,
        ttl_seconds=None,
        claim_patterns=None,
        claims={"project_id": str(world.project)},
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["ttl_seconds"] == 900
    assert created.get_json()["claims"] == {"project_id": str(world.project)}
    assert created.get_json()["claim_patterns"] == {}


def test_json_booleans_and_integers_in_claims_read_as_the_id_token_s_claims(
    client: FlaskClient, world: World, creds: Credentials
):
    """GitHub sends some claims as JSON booleans and integers; a condition compares them as text."""
    created = create(
        client,
        creds["admin"],
        "project",
        world.project,
        issuer=GITHUB,
        claims={"repository_id": 123456, "ref_protected": True},
        claim_patterns=None,
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["claims"] == {"ref_protected": "true", "repository_id": "123456"}


def test_form_bodies_with_nested_claims_and_repeated_scopes(
    client: FlaskClient, world: World, creds: Credentials
):
    response = client.post(
        base("project", world.project),
        data={
            "name": "form",
            "issuer": GITLAB,
            "audience": "deploy",
            "claims[project_path]": "acme/api",
            "claim_patterns[ref]": "v**",
            "scopes[]": ["read_registry", "write_registry"],
            "ttl_seconds": "120",
        },
        headers=creds["maintainer"],
    )
    assert response.status_code == 201, response.get_json()
    policy = response.get_json()
    assert policy["claims"] == {"project_path": "acme/api"}
    assert policy["claim_patterns"] == {"ref": "v**"}
    assert (policy["scopes"], policy["ttl_seconds"]) == (["read_registry", "write_registry"], 120)
    url = f"{base('project', world.project)}/{policy['id']}"
    changed = client.put(url, data={"claim_patterns[ref]": "release/**"}, headers=creds["maintainer"])
    assert changed.get_json()["claim_patterns"] == {"ref": "release/**"}


def test_unknown_body_fields_are_ignored_as_for_deploy_tokens(
    client: FlaskClient, world: World, creds: Credentials
):
    response = create(client, creds["admin"], "project", world.project, holder_id=999, id=5, color="red")
    assert response.status_code == 201
    assert "color" not in response.get_json()
    assert [p["id"] for p in listed(client, creds, "project", world.project)] == [response.get_json()["id"]]


# Changing ------------------------------------------------------------------------------------------------------


def test_a_change_touches_only_the_fields_it_names(client: FlaskClient, world: World, creds: Credentials):
    policy = create(client, creds["maintainer"], "project", world.project).get_json()
    url = f"{base('project', world.project)}/{policy['id']}"

    exact = client.put(url, json={"claims": {"project_id": str(world.project)}}, headers=creds["maintainer"])
    assert exact.status_code == 200, exact.get_json()
    assert exact.get_json() == {**policy, "claims": {"project_id": str(world.project)}}

    patterns = client.put(url, json={"claim_patterns": {}}, headers=creds["maintainer"])
    assert patterns.get_json() == {**exact.get_json(), "claim_patterns": {}}

    scopes = client.put(url, json={"scopes": "write_registry,read_registry"}, headers=creds["maintainer"])
    assert scopes.get_json() == {**patterns.get_json(), "scopes": ["read_registry", "write_registry"]}
    assert client.get(url, headers=creds["maintainer"]).get_json() == scopes.get_json()


def test_a_change_is_checked_whole_and_a_refused_one_changes_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    policy = create(client, creds["maintainer"], "project", world.project).get_json()
    url = f"{base('project', world.project)}/{policy['id']}"
    head = world.runtime.store.head()
    # Dropping the one identifying claim would leave a policy that trusts every project of the issuer.
    refused = client.put(url, json={"claims": {"ref_protected": "true"}}, headers=creds["maintainer"])
    assert refused.status_code == 400
    assert list(refused.get_json()["message"]) == ["claims"]
    too_short = client.put(url, json={"ttl_seconds": 30, "name": "x"}, headers=creds["maintainer"])
    assert too_short.get_json() == {"message": {"ttl_seconds": ["must be a whole number from 60 to 3600"]}}
    nothing = client.put(url, json={}, headers=creds["maintainer"])
    assert nothing.status_code == 400
    assert "at least one parameter must be provided" in nothing.get_json()["error"]
    assert world.runtime.store.head() == head
    assert client.get(url, headers=creds["maintainer"]).get_json() == policy


def test_the_clock_moves_updated_at_only(
    client: FlaskClient, world: World, creds: Credentials, clock: FixedClock
):
    policy = create(client, creds["admin"], "group", world.top).get_json()
    clock.set(clock.now().replace(hour=13))
    url = f"{base('group', world.top)}/{policy['id']}"
    changed = client.put(url, json={"audience": "other"}, headers=creds["owner"]).get_json()
    assert (changed["created_at"], changed["updated_at"]) == (
        "2026-01-10T12:00:00.000Z",
        "2026-01-10T13:00:00.000Z",
    )


# Who may ------------------------------------------------------------------------------------------------------


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
        ("group", "developer", "create", 404),
        ("project", "maintainer", "list", 200),
        ("project", "maintainer", "create", 201),
        ("project", "owner", "create", 201),
        ("group", "group_maintainer", "list", 200),
        ("group", "group_maintainer", "create", 403),
        ("group", "owner", "list", 200),
        ("group", "owner", "create", 201),
        ("project", "outsider", "list", 404),
        ("group", "outsider", "create", 404),
    ],
)
def test_status_codes_by_role_are_the_deploy_tokens(
    client: FlaskClient,
    world: World,
    creds: Credentials,
    kind: str,
    role: str | None,
    method: str,
    expected: int,
):
    headers = creds[role] if role else {}
    holder = world.project if kind == "project" else world.top
    tokens = f"/api/v4/{kind}s/{holder}/deploy_tokens"
    if method == "list":
        response = client.get(base(kind, holder), headers=headers)
        same_for_tokens = client.get(tokens, headers=headers)
    else:
        response = create(client, headers, kind, holder)
        same_for_tokens = client.post(
            tokens, json={"name": "t", "scopes": ["read_repository"]}, headers=headers
        )
    assert response.status_code == expected, response.get_json()
    assert same_for_tokens.status_code == expected


def test_change_and_delete_need_the_managing_role(client: FlaskClient, world: World, creds: Credentials):
    policy = create(client, creds["admin"], "group", world.top).get_json()
    url = f"{base('group', world.top)}/{policy['id']}"
    head = world.runtime.store.head()
    assert client.get(url, headers=creds["group_maintainer"]).status_code == 200
    assert client.put(url, json={"name": "mine"}, headers=creds["group_maintainer"]).status_code == 403
    assert client.put(url, json={"claims": {}}, headers=creds["group_maintainer"]).status_code == 403
    assert client.delete(url, headers=creds["group_maintainer"]).status_code == 403
    assert client.delete(url, headers=creds["developer"]).status_code == 404
    assert world.runtime.store.head() == head
    assert client.delete(url, headers=creds["owner"]).status_code == 204


@pytest.fixture
def auditor(world: World) -> dict[str, str]:
    record = world.runtime.directory.register_user(
        world.admin, username="audrey", email="audrey@example.com", is_auditor=True
    )
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, record.user_id, name="audit", scopes=["api"]
    )
    return {"PRIVATE-TOKEN": issued.value}


@pytest.mark.parametrize("kind", ["project", "group"])
def test_an_auditor_reads_the_policies_of_any_holder_and_changes_none(
    client: FlaskClient, world: World, creds: Credentials, auditor: dict[str, str], kind: str
):
    holder = world.sibling_project if kind == "project" else world.sibling
    policy = create(client, creds["admin"], kind, holder).get_json()
    url = f"{base(kind, holder)}/{policy['id']}"
    assert client.get(base(kind, holder), headers=auditor).get_json() == [policy]
    assert client.get(url, headers=auditor).get_json() == policy
    head = world.runtime.store.head()
    refused = [
        create(client, auditor, kind, holder),
        client.put(url, json={"name": "audited"}, headers=auditor),
        client.delete(url, headers=auditor),
    ]
    assert [response.status_code for response in refused] == [403, 403, 403]
    assert world.runtime.store.head() == head


def test_a_policy_of_another_holder_is_not_found(client: FlaskClient, world: World, creds: Credentials):
    policy = create(client, creds["admin"], "project", world.project).get_json()
    head = world.runtime.store.head()
    for other in (
        f"{base('project', world.deep_project)}/{policy['id']}",
        f"{base('group', world.top)}/{policy['id']}",  # the project's own group: still another holder
    ):
        assert client.get(other, headers=creds["admin"]).get_json() == NOT_FOUND
        assert client.put(other, json={"name": "stolen"}, headers=creds["admin"]).status_code == 404
        assert client.delete(other, headers=creds["admin"]).status_code == 404
    assert world.runtime.store.head() == head
    assert client.get(f"{base('project', world.project)}/999999", headers=creds["admin"]).status_code == 404
    assert client.get(base("project", 999999), headers=creds["admin"]).get_json() == {
        "message": "404 Project Not Found"
    }


# Refused bodies ---------------------------------------------------------------------------------------------

SEVENTEEN = {"project_path": "acme/api", **{f"claim_{n}": "x" for n in range(16)}}
IDENTIFYING = "must match one of sub, project_id, project_path, namespace_id, namespace_path, repository, "


# Each: the body's changes, the field refused and the start of its message.
MODEL_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"issuer": "https://elsewhere.example.com"}, "issuer", "is not an issuer this instance trusts"),
    ({"issuer": "http://gitlab.example.com"}, "issuer", "is invalid: the scheme must be https"),
    ({"issuer": ""}, "issuer", "can't be blank"),
    ({"audience": "two words"}, "audience", "is invalid: only visible ASCII characters are allowed"),
    ({"ttl_seconds": 30}, "ttl_seconds", "must be a whole number from 60 to 3600"),
    ({"ttl_seconds": 4000}, "ttl_seconds", "must be a whole number from 60 to 3600"),
    ({"claims": SEVENTEEN}, "claims", "is too long (maximum is 16 conditions)"),
    ({"claims": {"project_path": "acme/api", "aud": "x"}}, "claims", "cannot constrain aud"),
    ({"claims": {"ref": "main"}, "claim_patterns": None}, "claims", IDENTIFYING),
    ({"claim_patterns": {"project_path": "acme/*"}, "claims": {"ref": "main"}}, "claims", IDENTIFYING),
    ({"claim_patterns": {"project_path": "acme/*"}}, "claims", "names project_path more than once"),
    ({"claims": {"project_path": "acme/\x01api"}}, "claims", "has control characters in the value"),
    ({"claims": {"project_path": ""}}, "claims", "needs a value for project_path"),
    ({"claims": {"project_path": "a", "bad name": "x"}}, "claims", "has an invalid claim name"),
    ({"name": "n" * 256}, "name", "is too long (maximum is 255 characters)"),
    ({"name": "  "}, "name", "can't be blank"),
    ({"name": "tab\there"}, "name", "contains characters that are not allowed"),
]


@BOTH_BACKENDS
def test_model_errors_are_400_with_field_messages_and_write_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    head = world.runtime.store.head()
    for changes, field, message in MODEL_ERRORS:
        response = create(client, creds["maintainer"], "project", world.project, **changes)
        assert response.status_code == 400, changes
        errors = response.get_json()["message"]
        assert any(text.startswith(message) for text in errors[field]), (changes, errors)
    assert world.runtime.store.head() == head
    assert listed(client, creds, "project", world.project) == []


def test_every_model_error_is_reported_at_once(client: FlaskClient, world: World, creds: Credentials):
    response = create(
        client,
        creds["maintainer"],
        "project",
        world.project,
        name="",
        issuer="http://gitlab.example.com",
        audience="a b",
        claims={"aud": "x"},
        claim_patterns=None,
        ttl_seconds=3601,
    )
    assert response.status_code == 400
    assert set(response.get_json()["message"]) == {"name", "issuer", "audience", "claims", "ttl_seconds"}


# Each: the body's changes and the error naming the field.
PARAMETER_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "name is missing"),
    ({"issuer": None}, "issuer is missing"),
    ({"audience": None}, "audience is missing"),
    ({"scopes": None}, "scopes is missing"),
    ({"scopes": ["write_repository"]}, "scopes does not have a valid value"),
    ({"scopes": []}, "scopes does not have a valid value"),
    ({"scopes": ""}, "scopes does not have a valid value"),
    ({"ttl_seconds": True}, "ttl_seconds must be a whole number from 60 to 3600"),
    ({"ttl_seconds": 900.5}, "ttl_seconds must be a whole number from 60 to 3600"),
    ({"ttl_seconds": "15m"}, "ttl_seconds must be a whole number from 60 to 3600"),
    ({"claims": ["project_path", "acme/api"]}, "claims must be an object of claim names to strings"),
    ({"claims": "project_path=acme/api"}, "claims must be an object of claim names to strings"),
    ({"claims": {"project_path": {"a": "b"}}}, "claims must be an object of claim names to strings"),
    ({"claims": {"project_path": None}}, "claims must be an object of claim names to strings"),
    ({"claims": {"project_path": 1.5}}, "claims must be an object of claim names to strings"),
    ({"claim_patterns": [["ref", "*"]]}, "claim_patterns must be an object of claim names to strings"),
    ({"name": 5}, "name is invalid"),
    ({"name": "n" * 5000}, "name is too long (maximum is 255 characters)"),
    ({"name": "a\x00b"}, "name contains a NUL character"),
    ({"audience": "\x00"}, "audience contains a NUL character"),
    ({"claims": {"project_path": "acme\x00api"}}, "claims.project_path contains a NUL character"),
]


@BOTH_BACKENDS
def test_parameter_errors_are_400_naming_the_field_and_write_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    head = world.runtime.store.head()
    for changes, error in PARAMETER_ERRORS:
        response = create(client, creds["maintainer"], "project", world.project, **changes)
        assert (response.status_code, response.get_json()) == (400, {"error": error}), changes
    assert world.runtime.store.head() == head
    assert listed(client, creds, "project", world.project) == []


UNREADABLE_BODIES: list[str] = [
    json.dumps(body(name="x\ud800y")),  # a lone surrogate, escaped as JSON allows
    json.dumps(body(claims={"project_path": "\udc80"})),
    json.dumps(body(claims={"project_path": "a"}))[:-1] + ', "deep": ' + "[" * 5000 + "]" * 5000 + "}",
    json.dumps(body(claims={"project_path": "a"})).replace('"a"', "[" * 100 + "]" * 100),
]


@BOTH_BACKENDS
def test_unreadable_bodies_are_a_400_and_write_nothing(client: FlaskClient, world: World, creds: Credentials):
    head = world.runtime.store.head()
    headers = {**creds["maintainer"], "Content-Type": "application/json"}
    for raw in UNREADABLE_BODIES:
        response = client.post(base("project", world.project), data=raw, headers=headers)
        assert response.status_code == 400, raw[:80]
        assert "error" in response.get_json()
    assert world.runtime.store.head() == head
    assert listed(client, creds, "project", world.project) == []


def test_change_parameter_errors_are_400_and_write_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    policy = create(client, creds["maintainer"], "project", world.project).get_json()
    url = f"{base('project', world.project)}/{policy['id']}"
    head = world.runtime.store.head()
    for changes, error in (
        ({"ttl_seconds": None}, "ttl_seconds must be a whole number from 60 to 3600"),
        ({"claims": None}, "claims must be an object of claim names to strings"),
        ({"scopes": []}, "scopes does not have a valid value"),
        ({"name": None}, "name is invalid"),
    ):
        response = client.put(url, json=changes, headers=creds["maintainer"])
        assert (response.status_code, response.get_json()) == (400, {"error": error})
    assert world.runtime.store.head() == head
