"""The production shape as the README runs it: ``honcho start`` with the ``Procfile`` (web, projector, worker,
scheduler, streamer) on PostgreSQL and Redis, from the checkout, nothing activated. The service gets ready, a
token made with the CLI is checked (and, revoked, refused) by the web process, the projector keeps the read models
current, the scheduler is registered with the daily scan, and the day's scan runs and is reported."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from infrastructure.settings import DatabaseLocation

from ..conftest import POSTGRES_URL, TEST_SECRET, require_postgres
from ..integration.conftest import REDIS_DB, REDIS_URL
from ..integration.web_process import request
from ..ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
T = TypeVar("T")


def eventually(probe: Callable[[], T | None], seconds: float, what: str, log: Path) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError:
            found = None
        if found is not None and found is not False:
            return found
        time.sleep(0.3)
    raise AssertionError(f"{what} within {seconds} s; honcho's output:\n{log.read_text()[-6000:]}")


@dataclass
class Honcho:
    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    log: Path

    def children(self) -> dict[str, int]:
        """Process name -> pid, from honcho's own "web.1 started (pid=…)" lines."""
        started = re.findall(r"(\w+)\.1 started \(pid=(\d+)\)", self.log.read_text())
        return {name: int(pid) for name, pid in started}

    def cli(self, *args: str, through_honcho: bool = False) -> subprocess.CompletedProcess[str]:
        """``.venv/bin/deploy-tokens …`` from the checkout, as the README writes it (optionally under
        ``honcho run``, which is how the README gives a command the Procfile's environment)."""
        command = [str(BIN / "deploy-tokens"), *args]
        if through_honcho:
            command = [str(BIN / "honcho"), "run", *command]
        return subprocess.run(
            command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def ok(self, *args: str, through_honcho: bool = False) -> str:
        done = self.cli(*args, through_honcho=through_honcho)
        assert done.returncode == 0, (args, done.stderr)
        return done.stdout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def redis_database() -> Iterator[None]:
    connection = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        connection.ping()
    except RedisConnectionError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    assert REDIS_DB != 0
    connection.flushdb()
    try:
        yield
    finally:
        connection.flushdb()
        connection.close()


@pytest.fixture
def schema() -> Iterator[str]:
    require_postgres()
    name = f"procfile_{secrets.token_hex(6)}"
    yield name
    with psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def honcho(schema: str, redis_database: None, tmp_path: Path) -> Iterator[Honcho]:
    port = free_port()
    runtime_dir = Path(tempfile.mkdtemp(prefix="dt-run-", dir="/tmp"))  # a socket path has 107 bytes at most
    (tmp_path / "tmp").mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DEPLOY_TOKENS_", "WEB_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "DEPLOY_TOKENS_DATABASE_URL": f"{POSTGRES_URL}?schema={schema}",
            "DEPLOY_TOKENS_REDIS_URL": REDIS_URL,
            "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
            "DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "data"),
            "WEB_CONCURRENCY": "2",
            "WEB_THREADS": "4",
            "XDG_RUNTIME_DIR": str(runtime_dir),
            "TMPDIR": str(tmp_path / "tmp"),
            "PORT": str(port),  # honcho's base port: web gets it
        }
    )
    log = tmp_path / "honcho.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "honcho"), "start", "--no-colour"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = Honcho(process, port, env, log)
    try:
        yield started
    finally:
        children = started.children()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # honcho stops every process it started
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for pid in children.values():  # each in its own session; only if honcho could not stop them
            if alive(pid):
                os.killpg(pid, signal.SIGKILL)
        shutil.rmtree(runtime_dir, ignore_errors=True)


def test_the_procfile_runs_the_production_shape(honcho: Honcho) -> None:
    log = honcho.log
    eventually(
        lambda: set(honcho.children()) == {"web", "projector", "worker", "scheduler", "streamer"} or None,
        60,
        "5 processes",
        log,
    )
    eventually(lambda: request(honcho.port, "GET", "/-/readiness")[0] == 200, 90, "web ready", log)

    # The CLI on the same store (once through honcho run, as the README shows).
    admin = honcho.ok("bootstrap", "--username", "root", "--email", "root@example.com", through_honcho=True)
    assert admin.strip().startswith("glpat-")
    honcho.ok("groups", "create", "--name", "Acme", "--path", "acme")
    honcho.ok("projects", "create", "--name", "Web", "--namespace", "acme")
    honcho.ok("users", "create", "--username", "alice", "--email", "alice@example.com")
    honcho.ok(
        "projects",
        "members",
        "add",
        "--project",
        "acme/web",
        "--user",
        "alice",
        "--access-level",
        "maintainer",
    )
    token = honcho.ok(
        "tokens", "create", "--project", "acme/web", "--name", "deploy", "--scopes", "read_repository"
    )
    value = token.strip()
    check = {"username": "gitlab+deploy-token-1", "token": value, "action": "git_read", "project": "acme/web"}

    def answer() -> dict[str, Any]:
        status, _, body = request(honcho.port, "POST", "/internal/auth/check", check)
        assert status == 200
        decoded: dict[str, Any] = json.loads(body)
        return decoded

    assert (
        eventually(lambda: answer() if answer()["allowed"] else None, 15, "the token allowed", log)[
            "token_id"
        ]
        == 1
    )
    honcho.ok("tokens", "revoke", "--project", "acme/web", "1")
    assert (
        eventually(
            lambda: answer() if not answer()["allowed"] else None, 15, "the revoked token refused", log
        )["reason"]
        == "revoked"
    )

    # The projector keeps every read model at the head of the log.
    def projected() -> bool:
        rows = [line.split() for line in honcho.ok("projections", "status").splitlines()]
        return len(rows) == 7 and all(row[-1] == "0" for row in rows)

    eventually(projected, 30, "every projection at lag 0", log)

    # The scheduler is registered with the daily scan and its catch-up; the worker runs the day's scan.
    def registered() -> dict[str, Any] | None:
        status: dict[str, Any] = json.loads(honcho.ok("schedule", "--json"))
        return status if status["schedulers"] else None

    status = eventually(registered, 30, "a live scheduler", log)
    assert status["shape"] == "scheduler" and status["next_scan"] is not None
    (scheduler,) = status["schedulers"]
    jobs = {job["name"]: job for job in scheduler["jobs"]}
    assert jobs["deploy-token-expiry-0100"]["cron"] == "0 1 * * *"
    assert jobs["deploy-token-expiry-catch-up"]["interval"] == 900
    text = honcho.ok("schedule")
    assert "Schedulers:  1 running (rq cron)" in text and "deploy-token-expiry-0100 (0 1 * * *): next" in text
    if (
        datetime.now(UTC).hour >= 1
    ):  # the catch-up tick at start enqueues the day's scan once it is past 01:00
        done = eventually(
            lambda: (s := json.loads(honcho.ok("schedule", "--json")))["last_success"] and s,
            60,
            "the day's scan",
            log,
        )
        assert done["last_success"]["source"] == "scheduler"
        assert done["last_success"]["scan_id"] == datetime.now(UTC).strftime("%Y%m%d")
        assert done["todays_scan_started"] is True
        _, _, body = request(honcho.port, "GET", "/metrics")
        assert re.search(
            rb"^deploy_tokens_expiry_scan_last_success_timestamp_seconds [1-9]", body, re.MULTILINE
        )

    _, _, metrics = request(honcho.port, "GET", "/metrics")
    assert (
        b'deploy_tokens_auth_decisions_total{action="git_read",endpoint="check",reason="revoked",result="denied"}'
        in metrics
    )
