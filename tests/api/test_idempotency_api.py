"""``Idempotency-Key`` on the creating POSTs, over HTTP, on both backends: a retry after a lost answer replays it
and creates nothing; the key is bound to one request of one caller for 24 hours; records are encrypted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from api.idempotency import canonical_request
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from infrastructure.idempotency import TABLE

from ..conftest import (
    POSTGRES_ONLY,
    World,
    backend,  # noqa: F401  (both backends: keys are stored in the events' transaction)
)
from .conftest import Credentials

# How a request and its key are read is decided before anything is stored: one backend is enough there.
READING_ONLY = pytest.mark.parametrize("backend", ["sqlite"])
# Every creating route hands its key to the same store, which the other tests here prove on both backends: the
# route-by-route tests check the wiring of each route, once.
ROUTE_BY_ROUTE = pytest.mark.parametrize("backend", ["sqlite"])

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
TOKEN_BODY = {"name": "deploy", "scopes": ["read_repository"]}


def tokens_url(world: World) -> str:
    return f"/api/v4/projects/{world.project}/deploy_tokens"


def keyed(headers: dict[str, str], key: str = KEY) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def project_tokens(runtime: Runtime, world: World) -> list[str]:
    page = runtime.read.tokens(
        holder_kind="project",
        holder_id=world.project,
        active_only=False,
        now=runtime.clock.now(),
        per_page=100,
    )
    return [record.name for record in page.items]


def stored_rows(runtime: Runtime) -> list[tuple[Any, ...]]:
    with runtime.db.read() as cursor:
        return cursor.execute(f"SELECT * FROM {TABLE}").fetchall()


def test_a_retry_after_a_lost_answer_returns_the_same_token_and_creates_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    runtime = world.runtime
    first = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["maintainer"]))
    assert first.status_code == 201
    events_after_first = runtime.store.head()

    retried = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["maintainer"]))

    assert retried.status_code == 201
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json()["token"] == first.get_json()["token"]
    assert retried.get_data() == first.get_data()
    assert retried.headers["Cache-Control"] == "no-store"
    assert project_tokens(runtime, world) == ["deploy"]
    assert runtime.store.head() == events_after_first


def _one_runtime_per_worker(runtime: Runtime, count: int) -> list[Runtime]:
    # Separate runtimes model separate processes: each has its own id allocator and connections.
    return [Runtime.open(runtime.settings, clock=runtime.clock) for _ in range(count)]


def test_concurrent_requests_with_one_key_create_one_token_and_all_get_its_value(
    world: World, creds: Credentials
):
    runtime = world.runtime
    others = _one_runtime_per_worker(runtime, 3)
    clients = [create_app(opened).test_client() for opened in [runtime, *others]]
    workers = 12
    start = threading.Barrier(workers)
    answers: list[TestResponse] = []
    lock = threading.Lock()

    def post(client: FlaskClient) -> None:
        start.wait()
        answer = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["maintainer"]))
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=post, args=(clients[i % len(clients)],)) for i in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for opened in others:
            opened.close()

    assert [answer.status_code for answer in answers] == [201] * workers
    assert len({answer.get_json()["token"] for answer in answers}) == 1
    assert sum(answer.headers.get("Idempotent-Replayed") == "true" for answer in answers) == workers - 1
    runtime.projector.catch_up()
    assert project_tokens(runtime, world) == ["deploy"]


@READING_ONLY
def test_the_same_key_with_another_request_is_422_and_creates_nothing(
    client: FlaskClient, world: World, creds: Credentials
):
    runtime = world.runtime
    assert client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"])).status_code == 201
    events = runtime.store.head()

    other_body = client.post(
        tokens_url(world), json={**TOKEN_BODY, "name": "other"}, headers=keyed(creds["admin"])
    )
    other_path = client.post("/api/v4/groups", json={"name": "G", "path": "g"}, headers=keyed(creds["admin"]))

    for answer in (other_body, other_path):
        assert answer.status_code == 422
        assert answer.get_json() == {
            "message": "422 Unprocessable Entity - Idempotency-Key was already used for a different request"
        }
    assert runtime.store.head() == events


@READING_ONLY
def test_the_same_parameters_as_json_or_form_are_the_same_request(
    client: FlaskClient, world: World, creds: Credentials
):
    first = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"]))
    as_form = client.post(
        tokens_url(world),
        data={"name": "deploy", "scopes[]": ["read_repository"]},
        headers=keyed(creds["admin"]),
    )
    assert as_form.status_code == 201
    assert as_form.get_json()["token"] == first.get_json()["token"]


@READING_ONLY
def test_a_key_is_the_callers_own(client: FlaskClient, world: World, creds: Credentials):
    mine = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["maintainer"]))
    theirs = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["owner"]))
    mine_again = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["maintainer"]))

    assert theirs.status_code == 201
    assert "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["token"] != mine.get_json()["token"]
    assert mine_again.get_json()["token"] == mine.get_json()["token"]


@READING_ONLY
def test_a_structured_field_string_names_the_same_key(client: FlaskClient, world: World, creds: Credentials):
    bare = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"], 'a"b'))
    quoted = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"], r'"a\"b"'))
    assert quoted.headers["Idempotent-Replayed"] == "true"
    assert quoted.get_json()["token"] == bare.get_json()["token"]


def test_a_rotation_retried_with_its_key_rotates_once(client: FlaskClient, world: World, creds: Credentials):
    runtime = world.runtime
    token_id = client.post(tokens_url(world), json=TOKEN_BODY, headers=creds["admin"]).get_json()["id"]
    url = f"{tokens_url(world)}/{token_id}/rotate"

    first = client.post(url, json={}, headers=keyed(creds["admin"]))
    retried = client.post(url, json={}, headers=keyed(creds["admin"]))

    assert (first.status_code, retried.status_code) == (200, 200)
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_json()["token"] == first.get_json()["token"]
    events = [entry["event"] for entry in runtime.tokens.history(token_id)]
    assert events.count("Rotated") == 1


CreatingRequest = Callable[[World], tuple[str, dict[str, Any]]]
CREATING_REQUESTS: dict[str, CreatingRequest] = {
    "user": lambda world: (
        "/api/v4/users",
        {"username": "newbie", "email": "newbie@example.com", "name": "N"},
    ),
    "group": lambda world: ("/api/v4/groups", {"name": "Fresh", "path": "fresh"}),
    "project": lambda world: ("/api/v4/projects", {"name": "Fresh", "namespace_id": world.top}),
    "group member": lambda world: (
        f"/api/v4/groups/{world.sibling}/members",
        {"user_id": world.users["outsider"].user_id, "access_level": 30},
    ),
    "project member": lambda world: (
        f"/api/v4/projects/{world.project}/members",
        {"user_id": world.users["outsider"].user_id, "access_level": 30},
    ),
    "personal access token": lambda world: (
        f"/api/v4/users/{world.users['outsider'].user_id}/personal_access_tokens",
        {"name": "ci", "scopes": ["read_api"]},
    ),
    "group deploy token": lambda world: (f"/api/v4/groups/{world.top}/deploy_tokens", TOKEN_BODY),
    "project deploy token": lambda world: (tokens_url(world), TOKEN_BODY),
    "rotation": lambda world: (f"{tokens_url(world)}/{_a_token(world)}/rotate", {"grace_period_seconds": 60}),
}


def _a_token(world: World) -> int:
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="rotated", scopes=["read_repository"]
    )
    return issued.token.token_id


@ROUTE_BY_ROUTE
@pytest.mark.parametrize("kind", sorted(CREATING_REQUESTS))
def test_every_creating_post_replays_a_retry_and_creates_nothing(
    client: FlaskClient, world: World, creds: Credentials, kind: str
):
    url, body = CREATING_REQUESTS[kind](world)
    first = client.post(url, json=body, headers=keyed(creds["admin"]))
    assert first.status_code in (200, 201), first.get_json()
    events = world.runtime.store.head()

    retried = client.post(url, json=body, headers=keyed(creds["admin"]))

    assert retried.status_code == first.status_code
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_data() == first.get_data()
    assert world.runtime.store.head() == events


@ROUTE_BY_ROUTE
@pytest.mark.parametrize("kind", sorted(CREATING_REQUESTS))
def test_every_creating_post_rebuilds_an_answer_that_was_never_kept(
    client: FlaskClient, world: World, creds: Credentials, kind: str
):
    url, body = CREATING_REQUESTS[kind](world)
    first = client.post(url, json=body, headers=keyed(creds["admin"]))
    with world.runtime.db.transaction() as cursor:  # as if the process died before the second step
        cursor.execute(f"UPDATE {TABLE} SET response_nonce = NULL, response = NULL")
    events = world.runtime.store.head()

    rebuilt = client.post(url, json=body, headers=keyed(creds["admin"]))

    assert rebuilt.status_code == first.status_code
    assert rebuilt.headers["Idempotent-Replayed"] == "true"
    assert rebuilt.get_json() == first.get_json()
    assert world.runtime.store.head() == events


def test_the_api_document_offers_the_header_on_every_creating_post(client: FlaskClient):
    document = client.get("/api/v4/openapi.json").get_json()
    offered = {
        (method, path)
        for path, methods in document["paths"].items()
        for method, entry in methods.items()
        if any(
            parameter["name"] == "Idempotency-Key" and parameter["in"] == "header"
            for parameter in entry["parameters"]
        )
    }
    creating = {"/users", "/groups", "/projects", "/users/{user_id}/personal_access_tokens"}
    for holder in ("projects", "groups"):
        creating |= {
            f"/{holder}/{{reference}}/deploy_tokens",
            f"/{holder}/{{reference}}/deploy_tokens/{{token_id}}/rotate",
            f"/{holder}/{{reference}}/members",
        }
    assert offered == {("post", f"/api/v4{path}") for path in creating}


@READING_ONLY
@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "tab\there", "delete\x7f", "caf\xe9", '"unterminated', r'"bad\escape"'],
    ids=["empty", "256 characters", "tab", "DEL", "latin-1", "open quote", "bad escape"],
)
def test_a_malformed_key_is_400_and_creates_nothing(
    client: FlaskClient, world: World, creds: Credentials, key: str
):
    events = world.runtime.store.head()
    answer = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"], key))
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "Idempotency-Key must be 1 to 255 printable ASCII characters"}
    assert world.runtime.store.head() == events


@READING_ONLY
def test_a_key_of_255_printable_characters_is_accepted(client: FlaskClient, world: World, creds: Credentials):
    key = "".join(chr(32 + i % 95) for i in range(255))
    first = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"], key))
    retried = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"], key))
    assert first.status_code == 201
    assert retried.get_json()["token"] == first.get_json()["token"]


@READING_ONLY
def test_without_the_header_nothing_is_recorded_or_replayed(
    client: FlaskClient, world: World, creds: Credentials
):
    first = client.post(tokens_url(world), json=TOKEN_BODY, headers=creds["admin"])
    second = client.post(tokens_url(world), json=TOKEN_BODY, headers=creds["admin"])

    assert (first.status_code, second.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in second.headers
    assert first.get_json()["token"] != second.get_json()["token"]
    assert project_tokens(world.runtime, world) == ["deploy", "deploy"]
    assert stored_rows(world.runtime) == []


def test_after_24_hours_the_record_is_deleted_when_a_new_key_arrives(
    client: FlaskClient, world: World, creds: Credentials, clock: FixedClock
):
    client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"]))
    assert len(stored_rows(world.runtime)) == 1

    clock.set(clock.now() + timedelta(hours=24))
    client.post(
        tokens_url(world), json={**TOKEN_BODY, "name": "later"}, headers=keyed(creds["admin"], "other")
    )

    rows = stored_rows(world.runtime)
    assert len(rows) == 1
    assert world.runtime.keys.idempotency_digest("key\nother") in rows[0]


def test_after_24_hours_the_key_may_be_used_afresh(
    client: FlaskClient, world: World, creds: Credentials, clock: FixedClock
):
    first = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"]))
    clock.set(clock.now() + timedelta(hours=23, minutes=59))
    assert client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"])).headers.get(
        "Idempotent-Replayed"
    )

    clock.set(clock.now() + timedelta(minutes=1))
    again = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"]))

    assert again.status_code == 201
    assert "Idempotent-Replayed" not in again.headers
    assert again.get_json()["token"] != first.get_json()["token"]
    assert project_tokens(world.runtime, world) == ["deploy", "deploy"]


def test_a_replay_rebuilds_the_answer_when_the_process_died_before_keeping_it(
    client: FlaskClient, world: World, creds: Credentials
):
    runtime = world.runtime
    assert world.admin.user_id is not None
    # What a process does before it dies between the commit and the answer: the command with its slot, and
    # nothing after it (the second step, keeping the answer, never runs).
    request = canonical_request("POST", tokens_url(world), TOKEN_BODY)
    slot = runtime.idempotency.slot(world.admin.user_id, KEY, request, runtime.clock.now())
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="deploy", scopes=["read_repository"], idempotency=slot
    )
    events = runtime.store.head()

    replayed = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"]))

    assert replayed.status_code == 201
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.headers["Cache-Control"] == "no-store"
    assert replayed.get_json()["token"] == issued.value
    assert replayed.get_json()["id"] == issued.token.token_id
    assert runtime.store.head() == events


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes | memoryview):
        return bytes(value)
    return str(value).encode()


def test_neither_the_value_nor_the_key_is_stored_in_plaintext(
    client: FlaskClient, world: World, creds: Credentials
):
    value = client.post(tokens_url(world), json=TOKEN_BODY, headers=keyed(creds["admin"])).get_json()["token"]
    rows = stored_rows(world.runtime)
    assert len(rows) == 1
    cells = [_as_bytes(cell) for cell in rows[0]]

    assert all(value.encode() not in cell for cell in cells)
    assert all(KEY.encode() not in cell for cell in cells)
    assert all(b"read_repository" not in cell for cell in cells)  # the kept answer is encrypted as a whole


@POSTGRES_ONLY
def test_a_key_held_by_a_running_transaction_is_409(world: World):
    """PostgreSQL: the request that holds the key is still inside its transaction past the lock bound."""
    pg_runtime = world.runtime
    client = create_app(pg_runtime).test_client()
    headers = keyed({"PRIVATE-TOKEN": world.admin_token})
    assert world.admin.user_id is not None
    slot = pg_runtime.idempotency.slot(
        world.admin.user_id,
        KEY,
        canonical_request("POST", tokens_url(world), TOKEN_BODY),
        pg_runtime.clock.now(),
    )
    location = pg_runtime.settings.database
    with psycopg.connect(location.conninfo()) as holder:  # a transaction, left open while the request runs
        holder.execute(
            f'INSERT INTO "{location.schema}".{TABLE} VALUES (%s, %s, %s, %s, %s, %s, %s, NULL, NULL)',
            (
                slot.user_id,
                slot.key_digest,
                slot.request_digest,
                slot.created_at,
                slot.expires_at,
                b"n",
                b"r",
            ),
        )
        answer = client.post(tokens_url(world), json=TOKEN_BODY, headers=headers)
        holder.rollback()

    assert answer.status_code == 409
    assert answer.headers["Retry-After"] == "1"
    assert answer.get_json()["message"].startswith("409 Conflict - a request with this Idempotency-Key")
    assert project_tokens(pg_runtime, world) == []
