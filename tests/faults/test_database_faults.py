"""Chaos: the database freezes and stops under a running service, in both shapes it ships in.

The service (``deploy-tokens serve``, and gunicorn with a separate projector as in the ``Procfile``) talks to
PostgreSQL through a proxy that can stall (a frozen server: connections stay open, nothing answers) and drop
(a stopped server). Meanwhile a client asks ``/internal/auth_request`` every 50 ms and ``/-/health`` every
100 ms. Every auth answer must come within the staleness bound plus a margin; nothing asked later than the
bound after the fault began may be allowed; the answers then say "unavailable"; health always answers;
readiness says not ready; and checks are allowed again within seconds of the database's return, without a
restart.
"""

from __future__ import annotations

import base64
import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from deploy_tokens.runtime import Runtime
from infrastructure.settings import DatabaseLocation

from ..conftest import POSTGRES_URL, TEST_SECRET, World, make_settings
from ..ports import free_port
from .proxy import FaultyProxy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

STALENESS = 2.0  # DEPLOY_TOKENS_AUTH_MAX_STALENESS for the service under test
MARGIN = 1.0  # scheduling, the follower's interval, a loaded CI machine
FAULT_SECONDS = 5.0
RECOVERY_SECONDS = 10.0
CLONE = "/acme/api.git/info/refs?service=git-upload-pack"


@dataclass
class Answer:
    started: float
    elapsed: float
    status: int
    error: str | None


@dataclass
class Client:
    """Asks one path over and over from a thread, recording every answer (a timeout is status 0)."""

    port: int
    path: str
    headers: dict[str, str]
    every: float
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
            try:
                connection.request("GET", self.path, headers=self.headers)
                response = connection.getresponse()
                response.read()
                status, error = response.status, response.getheader("X-Auth-Error")
            except OSError:
                status, error = 0, None
            finally:
                connection.close()
            self.answers.append(Answer(started, time.monotonic() - started, status, error))
            self.stop.wait(self.every)

    def allowed_after(self, moment: float) -> Answer | None:
        return next((a for a in self.answers if a.started >= moment and a.status == 200), None)


def get(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"faults_{secrets.token_hex(6)}"
    yield name
    with psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def prepared_token(tmp_path: Path, schema: str) -> dict[str, str]:
    """A project token, made directly (not through the proxy); returns the Basic auth header for it."""
    with Runtime.open(make_settings("postgres", tmp_path / "setup", schema)) as runtime:
        world = World(runtime)
        issued = runtime.tokens.create_token(
            world.admin, "project", world.project, name="ci", scopes=["read_repository"]
        )
        pair = f"{issued.token.username}:{issued.value}".encode()
    basic = "Basic " + base64.b64encode(pair).decode()
    return {"Authorization": basic, "X-Original-URI": CLONE, "X-Original-Method": "GET"}


def service_env(tmp_path: Path, schema: str, proxy: FaultyProxy) -> dict[str, str]:
    location = DatabaseLocation.parse(POSTGRES_URL)
    url = f"postgresql://{location.user}@127.0.0.1:{proxy.port}/{location.dbname}?schema={schema}"
    return {
        **os.environ,
        "DEPLOY_TOKENS_DATABASE_URL": url,
        "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
        "DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "data"),
        "DEPLOY_TOKENS_AUTH_MAX_STALENESS": str(STALENESS),
        "DEPLOY_TOKENS_LOG_LEVEL": "WARNING",
        "WEB_CONCURRENCY": "2",
        "WEB_THREADS": "8",
    }


def start_shape(shape: str, port: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen[bytes]]:
    bin_dir = Path(sys.executable).parent
    commands: list[list[str]]
    if shape == "serve":
        commands = [[str(bin_dir / "deploy-tokens"), "serve", "--host", "127.0.0.1", "--port", str(port)]]
    else:
        gunicorn = shutil.which("gunicorn", path=str(bin_dir)) or "gunicorn"
        web = [gunicorn, "-c", "python:api.gunicorn_conf", "--bind", f"127.0.0.1:{port}"]
        commands = [[*web, "api.server:wsgi_app()"], [str(bin_dir / "deploy-tokens"), "projector"]]
    processes = []
    for number, command in enumerate(commands):
        with (logs / f"{shape}-{number}.log").open("ab") as out:
            processes.append(
                subprocess.Popen(command, env=env, stdout=out, stderr=out, start_new_session=True)
            )
    return processes


def stop_shape(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_allowed(auth: Client, since: float, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        answer = auth.allowed_after(since)
        if answer is not None:
            return answer.started + answer.elapsed - since
        time.sleep(0.05)
    raise AssertionError(f"no allowed check within {limit} s after {since:.1f}")


@pytest.mark.parametrize("shape", ["serve", "gunicorn"])
def test_auth_answers_within_the_bound_while_the_database_freezes_and_stops(
    shape: str, tmp_path: Path, schema: str
) -> None:
    headers = prepared_token(tmp_path, schema)
    location = DatabaseLocation.parse(POSTGRES_URL)
    with FaultyProxy((location.host, location.port)) as proxy:
        port = free_port()
        processes = start_shape(shape, port, service_env(tmp_path, schema, proxy), tmp_path)
        auth = Client(port, "/internal/auth_request", headers, every=0.05)
        health = Client(port, "/-/health", {}, every=0.1)
        threads = [threading.Thread(target=client.run, daemon=True) for client in (auth, health)]
        try:
            for thread in threads:
                thread.start()
            wait_until_allowed(auth, 0.0, limit=60)
            serving = time.monotonic()  # before this, the server may not even listen yet
            for fault in (proxy.stall, proxy.drop):
                time.sleep(1.0)
                began = time.monotonic()
                fault()
                time.sleep(FAULT_SECONDS / 2)
                readiness, waited = get(port, "/-/readiness")
                assert readiness == 503, fault.__name__
                assert waited <= STALENESS + MARGIN
                time.sleep(FAULT_SECONDS / 2)
                proxy.resume()
                back = time.monotonic()
                late = auth.allowed_after(began + STALENESS + 0.5)
                assert late is None or late.started >= back, f"allowed during {fault.__name__}: {late}"
                during = [a for a in auth.answers if began + STALENESS + 0.5 <= a.started < back]
                assert during, f"no checks answered during {fault.__name__}"
                assert {(a.status, a.error) for a in during} == {(403, "unavailable")}, fault.__name__
                recovered = wait_until_allowed(auth, back, RECOVERY_SECONDS)
                print(
                    f"{shape} {fault.__name__}: allowed again {recovered:.2f} s after the database returned"
                )
        finally:
            for client in (auth, health):
                client.stop.set()
            for thread in threads:
                thread.join(timeout=20)
            stop_shape(processes)
    checks = [a for a in auth.answers if a.started >= serving]
    slowest = max(a.elapsed for a in checks)
    assert slowest <= STALENESS + MARGIN, f"an auth check took {slowest:.2f} s"
    assert {a.status for a in checks} == {200, 403}, {a.status for a in checks}
    probes = [a for a in health.answers if a.started >= serving]
    assert probes and all(a.status == 200 and a.elapsed < 1.0 for a in probes), max(a.elapsed for a in probes)
