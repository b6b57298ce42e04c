"""The auditors' API: audit events, activity, point-in-time answers, streamed exports with manifests."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from ..conftest import T0, World
from .conftest import Credentials


def _token(world: World) -> int:
    return world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id


def test_audit_events_filtered_by_token(client, world: World, creds: Credentials):
    token_id = _token(world)
    response = client.get("/api/v4/audit_events", query_string={"token_id": token_id}, headers=creds["admin"])
    assert response.status_code == 200
    assert [e["event_type"] for e in response.get_json()] == ["deploy_token_created", "deploy_token_scoped"]


def test_auditor_endpoints_are_admin_only(client, world: World, creds: Credentials):
    token_id = _token(world)
    for url in (
        "/api/v4/audit_events",
        f"/api/v4/deploy_tokens/{token_id}/activity",
        f"/api/v4/deploy_tokens/{token_id}/state?at=2030-01-01",
        "/api/v4/audit/exports/lifecycle.csv",
    ):
        assert client.get(url, headers=creds["owner"]).status_code == 403, url
        assert client.get(url).status_code == 401, url


def test_token_state_and_access_at_an_instant(client, world: World, creds: Credentials):
    world.runtime.clock.set(T0 + timedelta(hours=1))  # type: ignore[attr-defined]
    token_id = _token(world)
    world.runtime.clock.set(T0 + timedelta(hours=2))  # type: ignore[attr-defined]
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    between = (T0 + timedelta(hours=1, minutes=30)).isoformat()
    state = client.get(
        f"/api/v4/deploy_tokens/{token_id}/state", query_string={"at": between}, headers=creds["admin"]
    )
    assert state.get_json()["revoked"] is False
    access = client.get(
        "/api/v4/projects/acme%2Fapi/deploy_token_access",
        query_string={"action": "git_read", "at": between},
        headers=creds["admin"],
    )
    assert [(a["token_id"], a["created_by"]) for a in access.get_json()] == [(token_id, "root")]
    later = client.get(
        f"/api/v4/projects/{world.project}/deploy_token_access",
        query_string={"action": "git_read", "at": (T0 + timedelta(hours=3)).isoformat()},
        headers=creds["admin"],
    )
    assert later.get_json() == []


def test_streamed_export_matches_its_manifest(client, world: World, creds: Credentials):
    _token(world)
    response = client.get("/api/v4/audit/exports/lifecycle.jsonl", headers=creds["admin"])
    assert response.status_code == 200
    body = response.get_data()
    upto = response.headers["X-Export-Upto"]
    manifest = client.get(
        "/api/v4/audit/exports/lifecycle.jsonl/manifest", query_string={"upto": upto}, headers=creds["admin"]
    ).get_json()
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["rows"] == len(body.decode().splitlines())
    assert all(json.loads(line)["position"] <= int(upto) for line in body.decode().splitlines())


def test_bad_auditor_input_is_400(client, world: World, creds: Credentials):
    assert client.get("/api/v4/deploy_tokens/1/state", headers=creds["admin"]).status_code == 400
    response = client.get(
        "/api/v4/projects/1/deploy_token_access",
        query_string={"action": "fly", "at": "2030-01-01"},
        headers=creds["admin"],
    )
    assert response.status_code == 400
    assert client.get("/api/v4/audit_events?namespace_id=3", headers=creds["admin"]).status_code == 400


def test_numbers_beyond_bigint_name_nothing(client, world: World, creds: Credentials):
    huge = 10**22
    assert client.get(f"/api/v4/deploy_tokens/{huge}/activity", headers=creds["admin"]).status_code == 404
    assert client.get(f"/api/v4/projects/1/deploy_tokens/{huge}", headers=creds["admin"]).status_code == 404
    assert (
        client.get(f"/api/v4/audit_events?after_position={huge}", headers=creds["admin"]).status_code == 400
    )


def test_set_aside_activity_exports_by_time_only(client, world: World, creds: Credentials):
    url = "/api/v4/audit/exports/usage_set_aside.jsonl"
    assert client.get(url, headers=creds["admin"]).status_code == 200
    refused = client.get(url, query_string={"token_id": 1}, headers=creds["admin"])
    assert refused.status_code == 400
    assert "time only" in refused.get_json()["error"]
