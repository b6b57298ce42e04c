"""Idempotency-Key records in the event store's transaction (both backends): a key is recorded with the command's
events or not at all, a taken key rolls the whole command back, the daily scan deletes records past 24 hours,
and a server SIGKILLed mid-creation leaves every retried key with exactly one token whose value the client got.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from domain.errors import ValidationError
from infrastructure.idempotency import TABLE, IdempotencyKeyTaken, IdempotencySlot
from infrastructure.settings import Settings

from ..conftest import TEST_SECRET, World


def slot_for(runtime: Runtime, world: World, key: str, request: str = "the request") -> IdempotencySlot:
    assert world.admin.user_id is not None
    return runtime.idempotency.slot(world.admin.user_id, key, request, runtime.clock.now())


def record_count(runtime: Runtime) -> int:
    with runtime.db.read() as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()
    assert row is not None
    return int(row[0])


def create_token(runtime: Runtime, world: World, slot: IdempotencySlot | None, name: str = "t") -> int:
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name=name, scopes=["read_repository"], idempotency=slot
    )
    return issued.token.token_id


def test_the_record_holds_the_commands_result(world: World):
    runtime = world.runtime
    slot = slot_for(runtime, world, "k")
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"], idempotency=slot
    )

    found = runtime.idempotency.find(slot_for(runtime, world, "k"))

    assert found is not None
    assert found.result == {"token_id": issued.token.token_id, "token": issued.value}
    assert found.response is None  # the answer is kept by the API's second step, not by the command


def test_a_command_that_fails_records_no_key(world: World):
    runtime = world.runtime
    with pytest.raises(ValidationError):
        # The path is taken: the save fails on the claim, after the key's row was written in its transaction.
        runtime.directory.create_group(
            world.admin, name="Acme", path="acme", idempotency=slot_for(runtime, world, "k")
        )
    assert record_count(runtime) == 0


def test_a_taken_key_rolls_the_whole_command_back(world: World):
    runtime = world.runtime
    create_token(runtime, world, slot_for(runtime, world, "k"))
    head = runtime.store.head()

    with pytest.raises(IdempotencyKeyTaken):
        create_token(runtime, world, slot_for(runtime, world, "k"), name="second")

    assert runtime.store.head() == head
    assert record_count(runtime) == 1


def test_a_lost_id_race_records_the_key_with_the_id_finally_used(world: World):
    runtime = world.runtime
    create_token(runtime, world, None)  # this runtime's allocator now believes 1 is the highest id
    with Runtime.open(runtime.settings, clock=runtime.clock) as other:
        create_token(other, world, None)  # another process takes 2
    slot = slot_for(runtime, world, "k")

    token_id = create_token(runtime, world, slot)  # tries 2, loses on the stream, takes 3

    found = runtime.idempotency.find(slot_for(runtime, world, "k"))
    assert token_id == 3
    assert found is not None and found.result is not None
    assert found.result["token_id"] == 3


def test_a_key_is_free_again_after_24_hours_even_before_any_purge(world: World, clock: FixedClock):
    runtime = world.runtime
    create_token(runtime, world, slot_for(runtime, world, "k"))
    clock.set(clock.now() + timedelta(hours=24))

    token_id = create_token(runtime, world, slot_for(runtime, world, "k"), name="again")

    found = runtime.idempotency.find(slot_for(runtime, world, "k"))
    assert found is not None and found.result is not None
    assert found.result["token_id"] == token_id
    assert record_count(runtime) == 1


def test_the_daily_scan_deletes_records_past_24_hours(world: World, clock: FixedClock):
    runtime = world.runtime
    create_token(runtime, world, slot_for(runtime, world, "old"))
    clock.set(clock.now() + timedelta(hours=1))
    create_token(runtime, world, slot_for(runtime, world, "young"), name="u")
    clock.set(clock.now() + timedelta(hours=23))

    report = runtime.expiry_scan.run(lambda token_id, interval: None)

    assert report.idempotency_records_purged == 1
    assert record_count(runtime) == 1
    assert runtime.idempotency.find(slot_for(runtime, world, "young")) is not None


# A real server, SIGKILLed while keyed creations are in flight ------------------------------------------------

REQUESTS = 24


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _server_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    env |= {
        "DEPLOY_TOKENS_DATA_DIR": str(data_dir),
        "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
        "DEPLOY_TOKENS_LOG_LEVEL": "WARNING",
    }
    location = settings.database
    if location.dialect == "postgresql":
        env["DEPLOY_TOKENS_DATABASE_URL"] = (
            f"postgresql://{location.user}@{location.host}:{location.port}/{location.dbname}?schema={location.schema}"
        )
    return env


class Server:
    """``deploy-tokens serve`` (gunicorn, one worker, eight threads) in its own process group."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = _free_port()
        command = [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port)]
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text(errors="replace")
            try:
                if self.request("GET", "/-/health", None, {})[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{log.read_text(errors='replace')}")

    def request(
        self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(
                method, path, body=payload, headers={"Content-Type": "application/json", **headers}
            )
            response = connection.getresponse()
            data = response.read()
            return response.status, dict(response.getheaders()), json.loads(data) if data else None
        finally:
            connection.close()

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.mark.slow
def test_a_killed_server_leaves_every_retried_key_with_exactly_one_token(settings: Settings, tmp_path: Path):
    with Runtime.open(settings) as runtime:
        world = World(runtime)
    url = f"/api/v4/projects/{world.project}/deploy_tokens"
    headers = {"PRIVATE-TOKEN": world.admin_token}
    env = _server_env(settings, tmp_path / "data")
    log = tmp_path / "server.log"

    first: dict[int, tuple[int, dict[str, str], Any] | None] = {}
    answered = threading.Event()

    def create(number: int, server: Server) -> None:
        try:
            outcome = server.request(
                "POST",
                url,
                {"name": f"t{number}", "scopes": ["read_repository"]},
                {**headers, "Idempotency-Key": f"kill-{number}"},
            )
        except (OSError, http.client.HTTPException):
            outcome = None  # the connection died with the server (maybe mid-answer): the answer is lost
        first[number] = outcome
        if outcome is not None:
            answered.set()

    server = Server(env, log)
    try:
        threads = [threading.Thread(target=create, args=(number, server)) for number in range(REQUESTS)]
        for thread in threads:
            thread.start()
        # The first answer means the others are being served or queued: the kill lands among them.
        assert answered.wait(timeout=60)
        server.kill()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        server.stop()
    assert len(first) == REQUESTS

    server = Server(env, log)
    try:
        retried = {
            number: server.request(
                "POST",
                url,
                {"name": f"t{number}", "scopes": ["read_repository"]},
                {**headers, "Idempotency-Key": f"kill-{number}"},
            )
            for number in range(REQUESTS)
        }
    finally:
        server.stop()

    assert all(status == 201 for status, _, _ in retried.values())
    for number, outcome in first.items():
        if outcome is not None and outcome[0] == 201:
            assert retried[number][1].get("Idempotent-Replayed") == "true"
            assert retried[number][2]["token"] == outcome[2]["token"]
    with Runtime.open(settings) as runtime:
        runtime.projector.catch_up()
        page = runtime.read.tokens(
            holder_kind="project",
            holder_id=world.project,
            active_only=False,
            now=runtime.clock.now(),
            per_page=100,
        )
        digests = {record.name: record.digest for record in page.items}
        assert sorted(record.name for record in page.items) == sorted(
            f"t{number}" for number in range(REQUESTS)
        )
        for number, (_, _, body) in retried.items():
            assert digests[f"t{number}"] == runtime.keys.digest(body["token"])
