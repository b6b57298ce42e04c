"""The trusted OIDC issuers, an instance setting (behaviour [federation]): ``deploy_token_oidc_issuers`` in
GitLab's application settings, read and changed by administrators only; a refused list changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from ..conftest import World
from .conftest import Credentials

URL = "/api/v4/application/settings"
GITLAB = "https://gitlab.example.com"
GITHUB = "https://token.actions.githubusercontent.com"


def issuers(client: FlaskClient, creds: Credentials) -> list[str]:
    response = client.get(URL, headers=creds["admin"])
    assert response.status_code == 200
    found: list[str] = response.get_json()["deploy_token_oidc_issuers"]
    return found


def test_none_are_trusted_until_an_administrator_adds_them(client: FlaskClient, creds: Credentials):
    assert client.get(URL, headers=creds["admin"]).get_json() == {
        "id": 1,
        "external_authorization_service_enabled": False,
        "deploy_token_oidc_issuers": [],
    }


def test_an_administrator_sets_changes_and_clears_the_list(
    client: FlaskClient, world: World, creds: Credentials
):
    changed = client.put(
        URL, json={"deploy_token_oidc_issuers": [GITLAB, GITHUB, GITLAB]}, headers=creds["admin"]
    )
    assert changed.status_code == 200
    assert changed.get_json()["deploy_token_oidc_issuers"] == [
        GITLAB,
        GITHUB,
    ]  # duplicates collapse, order kept
    assert issuers(client, creds) == [GITLAB, GITHUB]
    assert world.runtime.trust_policies.trusted_issuers() == (GITLAB, GITHUB)

    form = client.put(URL, data={"deploy_token_oidc_issuers[]": [GITHUB]}, headers=creds["admin"])
    assert form.get_json()["deploy_token_oidc_issuers"] == [GITHUB]
    joined = client.put(
        URL, data={"deploy_token_oidc_issuers": f"{GITLAB}, {GITHUB}"}, headers=creds["admin"]
    )
    assert joined.get_json()["deploy_token_oidc_issuers"] == [GITLAB, GITHUB]

    cleared = client.put(URL, json={"deploy_token_oidc_issuers": []}, headers=creds["admin"])
    assert cleared.get_json()["deploy_token_oidc_issuers"] == []
    assert issuers(client, creds) == []


def test_the_same_list_again_records_nothing(client: FlaskClient, world: World, creds: Credentials):
    client.put(URL, json={"deploy_token_oidc_issuers": [GITLAB]}, headers=creds["admin"])
    head = world.runtime.store.head()
    again = client.put(URL, json={"deploy_token_oidc_issuers": [GITLAB]}, headers=creds["admin"])
    assert (again.status_code, again.get_json()["deploy_token_oidc_issuers"]) == (200, [GITLAB])
    assert world.runtime.store.head() == head


def test_both_settings_in_one_request(client: FlaskClient, world: World, creds: Credentials):
    body = {"deploy_token_oidc_issuers": [GITLAB], "external_authorization_service_enabled": True}
    changed = client.put(URL, json=body, headers=creds["admin"]).get_json()
    assert changed == {
        "id": 1,
        "external_authorization_service_enabled": True,
        "deploy_token_oidc_issuers": [GITLAB],
    }
    only_flag = client.put(
        URL, json={"external_authorization_service_enabled": False}, headers=creds["admin"]
    )
    assert only_flag.get_json()["deploy_token_oidc_issuers"] == [
        GITLAB
    ]  # a setting not named keeps its value


@pytest.mark.parametrize("role", ["owner", "maintainer", "auditor", None])
def test_only_administrators_read_and_change_the_list(
    client: FlaskClient, world: World, creds: Credentials, role: str | None
):
    if role == "auditor":
        record = world.runtime.directory.register_user(
            world.admin, username="audrey", email="audrey@example.com", is_auditor=True
        )
        issued = world.runtime.directory.create_personal_access_token(
            world.admin, record.user_id, name="audit", scopes=["api"]
        )
        headers = {"PRIVATE-TOKEN": issued.value}
    else:
        headers = creds[role] if role else {}
    expected = 401 if role is None else 403
    head = world.runtime.store.head()
    assert client.get(URL, headers=headers).status_code == expected
    body = {"deploy_token_oidc_issuers": [GITLAB]}
    assert client.put(URL, json=body, headers=headers).status_code == expected
    assert world.runtime.store.head() == head
    assert issuers(client, creds) == []


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (["http://gitlab.example.com"], "is invalid: the scheme must be https"),
        (["gitlab.example.com"], "is invalid: the scheme must be https"),
        (["https://user:pw@gitlab.example.com"], "is invalid: a host and no credentials are required"),
        (["https://gitlab.example.com/?x=1"], "is invalid: no query string or fragment"),
        (["https://gitlab.example.com/é"], "is invalid: only visible ASCII characters are allowed"),
        (["https://" + "a" * 300], "is too long (maximum is 255 characters)"),
        ([f"https://issuer{n}.example.com" for n in range(21)], "is too long (maximum is 20 issuers)"),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_a_refused_list_is_a_400_with_field_messages_and_changes_nothing(
    client: FlaskClient, world: World, creds: Credentials, value: list[str], problem: str
):
    client.put(URL, json={"deploy_token_oidc_issuers": [GITLAB]}, headers=creds["admin"])
    head = world.runtime.store.head()
    # The flag in the same request is not changed either: a refused request changes nothing.
    body = {"deploy_token_oidc_issuers": [GITHUB, *value], "external_authorization_service_enabled": True}
    response = client.put(URL, json=body, headers=creds["admin"])
    assert response.status_code == 400
    messages = response.get_json()["message"]["deploy_token_oidc_issuers"]
    assert any(problem in message for message in messages), messages
    assert world.runtime.store.head() == head
    assert client.get(URL, headers=creds["admin"]).get_json() == {
        "id": 1,
        "external_authorization_service_enabled": False,
        "deploy_token_oidc_issuers": [GITLAB],
    }


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("not a list", None),  # one string is a comma-separated list: then the domain refuses the URL
        ([GITLAB, 5], "deploy_token_oidc_issuers is invalid"),
        ({"url": GITLAB}, "deploy_token_oidc_issuers is invalid"),
        ([[GITLAB]], "deploy_token_oidc_issuers is invalid"),
        ([GITLAB] * 201, "deploy_token_oidc_issuers is too long (maximum is 20 issuers)"),
        ([GITLAB + "\x00"], "deploy_token_oidc_issuers[0] contains a NUL character"),
        (
            [GITLAB + "\ud800"],
            "deploy_token_oidc_issuers[0] contains a lone surrogate, which is not valid Unicode",
        ),
    ],
    ids=lambda value: repr(value)[:40],
)
def test_a_list_that_is_no_list_of_text_is_a_400(
    client: FlaskClient, world: World, creds: Credentials, value: Any, error: str | None
):
    head = world.runtime.store.head()
    response = client.put(URL, json={"deploy_token_oidc_issuers": value}, headers=creds["admin"])
    assert response.status_code == 400
    if error is None:
        assert list(response.get_json()["message"]) == ["deploy_token_oidc_issuers"]
    else:
        assert response.get_json() == {"error": error}
    assert world.runtime.store.head() == head
    assert issuers(client, creds) == []


def test_a_policy_may_name_only_a_trusted_issuer(client: FlaskClient, world: World, creds: Credentials):
    """The setting is what the policies are checked against (behaviour [federation])."""
    policies = f"/api/v4/projects/{world.project}/deploy_token_trust_policies"
    policy = {
        "name": "ci",
        "issuer": GITLAB,
        "audience": "deploy",
        "claims": {"project_path": "acme/api"},
        "scopes": ["read_repository"],
    }
    refused = client.post(policies, json=policy, headers=creds["admin"])
    assert refused.status_code == 400
    assert list(refused.get_json()["message"]) == ["issuer"]
    client.put(URL, json={"deploy_token_oidc_issuers": [GITLAB]}, headers=creds["admin"])
    assert client.post(policies, json=policy, headers=creds["admin"]).status_code == 201
