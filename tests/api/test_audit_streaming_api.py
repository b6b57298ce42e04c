"""behaviour [audit-streaming]: the destinations API (create, list, delete), who may use it, and hostile input."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from domain.audit_streaming import AUDIT_STREAMING_ID, AuditStreaming

from ..conftest import World
from .conftest import Credentials

URL = "/api/v4/admin/audit_events/streaming/destinations"
GOOD = {"name": "siem", "destination_url": "https://siem.example.com/intake"}
BASE58_24 = re.compile(r"\A[1-9A-HJ-NP-Za-km-z]{24}\Z")


def _create(client: FlaskClient, creds: Credentials, **body: Any) -> Any:
    return client.post(URL, json={**GOOD, **body}, headers=creds["admin"])


def _auditor_headers(world: World) -> dict[str, str]:
    auditor = world.runtime.directory.register_user(
        world.admin, username="inspector", email="inspector@example.com", is_auditor=True
    )
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, auditor.user_id, name="read", scopes=["api"]
    )
    return {"PRIVATE-TOKEN": issued.value}


def test_create_list_delete(client: FlaskClient, world: World, creds: Credentials):
    created = _create(client, creds)
    assert created.status_code == 201
    assert created.headers["Cache-Control"] == "no-store"
    body = created.get_json()
    assert body["id"] == 1
    assert (body["name"], body["destination_url"], body["start"]) == (
        "siem",
        GOOD["destination_url"],
        "now",
    )
    assert BASE58_24.match(body["verification_token"]), "generated as GitLab does: 24 characters"

    listed = client.get(URL, headers=creds["admin"]).get_json()
    assert listed == [body]

    assert client.delete(f"{URL}/1", headers=creds["admin"]).status_code == 204
    assert client.get(URL, headers=creds["admin"]).get_json() == []
    again = client.delete(f"{URL}/1", headers=creds["admin"])
    assert (again.status_code, again.get_json()) == (404, {"message": "404 Destination Not Found"})


def test_a_given_token_and_start_are_kept(client: FlaskClient, world: World, creds: Credentials):
    body = _create(client, creds, verification_token="s3cret-token-0123456789", start="beginning").get_json()
    assert (body["verification_token"], body["start"]) == ("s3cret-token-0123456789", "beginning")


def test_ids_are_never_reused(client: FlaskClient, world: World, creds: Credentials):
    assert _create(client, creds).get_json()["id"] == 1
    client.delete(f"{URL}/1", headers=creds["admin"])
    assert _create(client, creds).get_json()["id"] == 2, "a deleted destination's name is free, its id is not"


@pytest.mark.parametrize("role", ["owner", "maintainer", "outsider"])
def test_only_administrators_manage_destinations(client: FlaskClient, world: World, creds: Credentials, role):
    _create(client, creds)
    assert client.post(URL, json=GOOD, headers=creds[role]).status_code == 403
    assert client.get(URL, headers=creds[role]).status_code == 403
    assert client.delete(f"{URL}/1", headers=creds[role]).status_code == 403
    assert client.post(URL, json=GOOD).status_code == 401
    assert client.get(URL).status_code == 401
    assert client.delete(f"{URL}/1").status_code == 401
    assert len(client.get(URL, headers=creds["admin"]).get_json()) == 1


def test_auditors_list_without_tokens_and_change_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    _create(client, creds)
    auditor = _auditor_headers(world)
    listed = client.get(URL, headers=auditor)
    assert listed.status_code == 200
    assert [(d["name"], d["verification_token"]) for d in listed.get_json()] == [("siem", None)]
    assert client.post(URL, json={**GOOD, "name": "other"}, headers=auditor).status_code == 403
    assert client.delete(f"{URL}/1", headers=auditor).status_code == 403
    assert len(client.get(URL, headers=creds["admin"]).get_json()) == 1


def test_names_are_unique_without_regard_to_case(client: FlaskClient, world: World, creds: Credentials):
    _create(client, creds)
    taken = _create(client, creds, name="SIEM", destination_url="https://other.example.com/")
    assert (taken.status_code, taken.get_json()) == (400, {"message": {"name": ["has already been taken"]}})
    client.delete(f"{URL}/1", headers=creds["admin"])
    assert _create(client, creds, name="SIEM").status_code == 201, "a deleted destination frees its name"


def test_at_most_five_destinations(client: FlaskClient, world: World, creds: Credentials):
    for number in range(5):
        assert _create(client, creds, name=f"d{number}").status_code == 201
    refused = _create(client, creds, name="d5")
    assert refused.status_code == 400
    assert refused.get_json() == {"message": {"base": ["Maximum number of destinations (5) reached"]}}


BAD_INPUT: list[tuple[dict[str, Any], str, str]] = [
    (
        {"destination_url": "ftp://siem.example.com/"},
        "destination_url",
        "Only allowed schemes are http, https",
    ),
    ({"destination_url": "javascript:alert(1)"}, "destination_url", "Only allowed schemes"),
    ({"destination_url": "siem.example.com/intake"}, "destination_url", "Only allowed schemes"),
    ({"destination_url": "http:///intake"}, "destination_url", "URI is invalid"),
    ({"destination_url": "https://"}, "destination_url", "URI is invalid"),
    ({"destination_url": "http://exa_mple..com/"}, "destination_url", "URI is invalid"),
    ({"destination_url": "http://siem.example.com:99999/"}, "destination_url", "URI is invalid"),
    ({"destination_url": "http://siem.example.com:0/"}, "destination_url", "URI is invalid"),
    ({"destination_url": "http://[::1/"}, "destination_url", "URI is invalid"),
    ({"destination_url": "https://siem.example.com/in?api_key=s3cret"}, "destination_url", "Query strings"),
    ({"destination_url": "http://siem.example.com/in"}, "destination_url", "Only allowed schemes are https"),
    ({"destination_url": "https://169.254.169.254/latest/meta-data"}, "destination_url", "local network"),
    ({"destination_url": "https://localhost:5432/"}, "destination_url", "local network"),
    ({"destination_url": "https://[v1.x]/"}, "destination_url", "URI is invalid"),
    ({"destination_url": "https://siem.example.com/#x"}, "destination_url", "URI is invalid"),
    ({"destination_url": "https://alice:pw@siem.example.com/"}, "destination_url", "Username and password"),
    ({"destination_url": "https://siem.example.com/a b"}, "destination_url", "visible ASCII"),
    ({"destination_url": "https://siem.example.com/\r\nX: y"}, "destination_url", "visible ASCII"),
    ({"destination_url": "https://sïem.example.com/"}, "destination_url", "visible ASCII"),
    (
        {"destination_url": "https://s.example.com/" + "a" * 240},
        "destination_url",
        "too long (maximum is 255",
    ),
    ({"destination_url": ""}, "destination_url", "can't be blank"),
    ({"destination_url": "x" * 100_000}, "destination_url", "Longer than maximum length"),
    ({"name": ""}, "name", "can't be blank"),
    ({"name": "   "}, "name", "can't be blank"),
    ({"name": "n" * 73}, "name", "too long (maximum is 72"),
    ({"name": "tab\there"}, "name", "control characters"),
    ({"name": "bidi\x7f"}, "name", "control characters"),
    ({"verification_token": "short"}, "verification_token", "wrong length (should be 16 to 24"),
    ({"verification_token": "t" * 25}, "verification_token", "wrong length"),
    ({"verification_token": "with a space 0123456"}, "verification_token", "visible ASCII"),
    ({"verification_token": "ünïcode-0123456789ab"}, "verification_token", "visible ASCII"),
    ({"verification_token": "line\r\nX-Injected: 1"}, "verification_token", "visible ASCII"),
    ({"start": "yesterday"}, "start", "Must be one of"),
    ({"start": 0}, "start", "Not a valid string"),
    ({"name": 42}, "name", "Not a valid string"),
    ({"name": ["siem"]}, "name", "Not a valid string"),
    ({"destination_url": {"url": "https://x.example.com"}}, "destination_url", "Not a valid string"),
    ({"verification_token": True}, "verification_token", "Not a valid string"),
    ({"name": None}, "name", "is missing"),
]


@pytest.mark.parametrize(("change", "field", "message"), BAD_INPUT, ids=[f for _, f, _ in BAD_INPUT])
def test_bad_input_is_a_400_naming_the_field_and_writes_nothing(
    client: FlaskClient, world: World, creds: Credentials, change, field, message
):
    head = world.runtime.store.head()
    response = client.post(URL, json={**GOOD, **change}, headers=creds["admin"])
    assert response.status_code == 400, response.get_json()
    answer = response.get_json()
    text = json.dumps(answer["message"][field]) if "message" in answer else answer["error"]
    assert field in (answer.get("message") or {}) or answer.get("error", "").startswith(field), answer
    assert message in text, answer
    assert world.runtime.store.head() == head, "nothing recorded"
    assert client.get(URL, headers=creds["admin"]).get_json() == []


@pytest.mark.parametrize("missing", ["name", "destination_url"])
def test_missing_fields(client: FlaskClient, world: World, creds: Credentials, missing):
    body = {key: value for key, value in GOOD.items() if key != missing}
    response = client.post(URL, json=body, headers=creds["admin"])
    assert (response.status_code, response.get_json()) == (400, {"error": f"{missing} is missing"})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name": "a\\u0000b", "destination_url": "https://x.example.com/"}',
        b'{"name": "\\ud800", "destination_url": "https://x.example.com/"}',
        b'{"name": "siem", "destination_url": "https://x.example.com/\\udc80"}',
        b"[" * 100 + b"]" * 100,
        b'{"name": "siem", "destination_url": "https://x.example.com/", "x": ' + b"[" * 60 + b"]" * 60 + b"}",
        b"\xff\xfe not json",
    ],
    ids=["nul", "lone-surrogate", "surrogate-in-url", "deep", "deep-in-object", "not-utf8"],
)
def test_hostile_bodies_are_refused(client: FlaskClient, world: World, creds: Credentials, raw: bytes):
    response = client.post(URL, data=raw, content_type="application/json", headers=creds["admin"])
    assert response.status_code == 400
    assert client.get(URL, headers=creds["admin"]).get_json() == []


def test_huge_body_is_refused(client: FlaskClient, world: World, creds: Credentials):
    response = client.post(URL, json={**GOOD, "name": "n" * (2 * 1024 * 1024)}, headers=creds["admin"])
    assert response.status_code == 413


def test_hostile_ids_are_not_found(client: FlaskClient, world: World, creds: Credentials):
    for path in (f"{URL}/0", f"{URL}/99999999999999999999", f"{URL}/-1", f"{URL}/abc", f"{URL}/%00"):
        assert client.delete(path, headers=creds["admin"]).status_code == 404, path


def test_the_verification_token_is_in_no_event_read_model_or_log(
    client: FlaskClient, world: World, creds: Credentials, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG)
    token = _create(client, creds).get_json()["verification_token"]
    register = world.runtime.store.repository.get(AUDIT_STREAMING_ID)
    assert isinstance(register, AuditStreaming)
    stored = world.runtime.store.recorder.select_events(AUDIT_STREAMING_ID)
    assert stored and all(token.encode() not in event.state for event in stored)
    with world.runtime.db.read() as cursor:
        rows = cursor.execute("SELECT * FROM audit_destinations").fetchall()
        sealed = cursor.execute("SELECT nonce, ciphertext FROM audit_destination_tokens").fetchall()
    assert rows and token not in repr(rows)
    assert len(sealed) == 1 and token.encode() not in bytes(sealed[0][1]), "kept encrypted"
    assert token not in caplog.text


def test_deleting_destroys_the_token_in_the_vault(client: FlaskClient, world: World, creds: Credentials):
    _create(client, creds)
    client.delete(f"{URL}/1", headers=creds["admin"])
    with world.runtime.db.read() as cursor:
        assert cursor.execute("SELECT COUNT(*) FROM audit_destination_tokens").fetchone() == (0,)


def test_lag_and_failures_are_in_metrics(client: FlaskClient, world: World, creds: Credentials):
    _create(client, creds, start="beginning")
    world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    audit_rows = len(
        client.get(
            URL.replace("admin/audit_events/streaming/destinations", "audit_events"),
            query_string={"per_page": 1000},
            headers=creds["admin"],
        ).get_json()
    )
    text = client.get("/metrics").get_data(as_text=True)
    assert "deploy_tokens_audit_stream_status_up 1.0" in text
    assert (
        f'deploy_tokens_audit_stream_lag_events{{destination="siem",destination_id="1"}} {audit_rows}.0'
        in text
    )
    assert 'deploy_tokens_audit_stream_failures_total{destination="siem",destination_id="1"} 0.0' in text


def test_form_parameters_are_accepted_as_gitlab_does(client: FlaskClient, world: World, creds: Credentials):
    response = client.post(URL, data={**GOOD, "start": "beginning"}, headers=creds["admin"])
    assert response.status_code == 201
    assert response.get_json()["start"] == "beginning"
    nul = client.post(URL, data={**GOOD, "name": "a\x00b"}, headers=creds["admin"])
    assert nul.status_code == 400
