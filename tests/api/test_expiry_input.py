"""``expires_at`` as GitLab accepts it (behaviour [expiry]): any ISO 8601 date or date-time, today and the past
included; such a token is simply expired everywhere at once. Invalid strings stay a 400 with GitLab's message."""

from __future__ import annotations

import base64

import pytest
from flask.testing import FlaskClient

from ..conftest import T0, World
from .conftest import Credentials

TODAY = T0.date().isoformat()  # the clock fixture: 2026-01-10 12:00 UTC
PROJECT_TOKENS = "/api/v4/projects/{}/deploy_tokens"


def create(client: FlaskClient, world: World, creds: Credentials, expires_at: object, **body: object):
    return client.post(
        PROJECT_TOKENS.format(world.project),
        json={"name": "deploy", "scopes": ["read_repository"], "expires_at": expires_at, **body},
        headers=creds["maintainer"],
    )


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        (TODAY, "2026-01-10T00:00:00.000Z"),  # python-gitlab's own fixtures send today's date
        ("2026-01-09", "2026-01-09T00:00:00.000Z"),
        ("2026-01-10T11:59:59Z", "2026-01-10T11:59:59.000Z"),
        ("2026-01-10T13:00:00+02:00", "2026-01-10T11:00:00.000Z"),
        ("20260110T120000Z", "2026-01-10T12:00:00.000Z"),  # now exactly: expired (now >= expires_at)
        ("2026-W02-5", "2026-01-09T00:00:00.000Z"),  # a week date
        ("2026-009", "2026-01-09T00:00:00.000Z"),  # an ordinal date
        ("1900-01-01", "1900-01-01T00:00:00.000Z"),
    ],
)
def test_an_expiry_today_or_in_the_past_creates_an_expired_token(
    client: FlaskClient, world: World, creds: Credentials, sent: str, stored: str
):
    response = create(client, world, creds, sent)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert (body["expires_at"], body["expired"], body["revoked"]) == (stored, True, False)
    fetched = client.get(f"{PROJECT_TOKENS.format(world.project)}/{body['id']}", headers=creds["maintainer"])
    assert fetched.get_json()["expired"] is True


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("2026-01-10T12:00:01Z", "2026-01-10T12:00:01.000Z"),
        ("2026-01-10T24:00:00Z", "2026-01-11T00:00:00.000Z"),  # the end of today
        ("9999-12-31", "9999-12-31T00:00:00.000Z"),
    ],
)
def test_an_expiry_after_now_creates_an_active_token(
    client: FlaskClient, world: World, creds: Credentials, sent: str, stored: str
):
    body = create(client, world, creds, sent).get_json()
    assert (body["expires_at"], body["expired"]) == (stored, False)


def test_an_expired_token_is_left_out_of_the_active_list_and_denied_by_every_auth_check(
    client: FlaskClient, world: World, creds: Credentials
):
    created = create(client, world, creds, TODAY).get_json()
    active = client.get(
        PROJECT_TOKENS.format(world.project), query_string={"active": "true"}, headers=creds["maintainer"]
    )
    assert active.get_json() == []
    json_check = client.post(
        "/internal/auth/check",
        json={"username": created["username"], "token": created["token"], "action": "git_read", "project": 1},
    )
    assert json_check.get_json() == {"allowed": False, "reason": "expired", "token_id": created["id"]}
    basic = base64.b64encode(f"{created['username']}:{created['token']}".encode()).decode()
    nginx = client.get(
        "/internal/auth_request",
        headers={
            "Authorization": f"Basic {basic}",
            "X-Original-URI": "/acme/api.git/info/refs?service=git-upload-pack",
            "X-Original-Method": "GET",
        },
    )
    assert nginx.status_code == 401


def test_a_ci_token_expired_at_creation_hands_nothing_to_ci_jobs(
    client: FlaskClient, world: World, creds: Credentials
):
    """behaviour [ci-token]: the recoverable value is never kept for a token that cannot be used."""
    create(client, world, creds, TODAY, name="gitlab-deploy-token")
    variables = client.get(
        f"/api/v4/projects/{world.project}/deploy_token_variables", headers=creds["admin"]
    ).get_json()
    assert variables == []
    assert world.runtime.tokens.vault.get(1) is None


@pytest.mark.parametrize(
    "sent", ["tomorrow", "2026-02-30", "2026-01", "10/01/2026", "2026-01-10T25:00Z", 20260110]
)
def test_a_value_that_is_not_iso_8601_is_400_with_gitlabs_message(
    client: FlaskClient, world: World, creds: Credentials, sent: object
):
    response = create(client, world, creds, sent)
    assert response.status_code == 400
    assert response.get_json() == {"error": "expires_at must be in ISO 8601 format"}


@pytest.mark.parametrize("sent", ["1899-12-31", "0001-01-01T00:00:00+02:00", "9999-12-31T23:00:00-02:00"])
def test_an_instant_outside_the_calendar_range_is_400_never_a_500(
    client: FlaskClient, world: World, creds: Credentials, sent: str
):
    response = create(client, world, creds, sent)
    assert response.status_code == 400
    assert response.get_json() == {"message": {"expires_at": ["must be between 1900-01-01 and 9999-12-31"]}}
