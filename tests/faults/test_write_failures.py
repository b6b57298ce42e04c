"""Writes while the database cannot take them: 503 with Retry-After and a clear message, never a 500, and
readiness says so. On a database of its own (``default_transaction_read_only`` is per database), and through
the faulty proxy for a lost server."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask.testing import FlaskClient

from api.app import create_app
from deploy_tokens.runtime import Runtime
from infrastructure.settings import DatabaseLocation, Settings

from ..conftest import POSTGRES_URL, TEST_SECRET, World
from .proxy import FaultyProxy

pytestmark = pytest.mark.postgres

ADMIN_URL = DatabaseLocation.parse(POSTGRES_URL)


def admin(sql: str) -> None:
    with psycopg.connect(ADMIN_URL.conninfo(), autocommit=True) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


@pytest.fixture
def database() -> Iterator[str]:
    name = f"faults_{secrets.token_hex(5)}"
    admin(f'CREATE DATABASE "{name}"')
    yield name
    admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    admin(f'DROP DATABASE IF EXISTS "{name}"')


def open_runtime(tmp_path: Path, url: str) -> Runtime:
    env = {
        "DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "data"),
        "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
        "DEPLOY_TOKENS_DATABASE_URL": url,
    }
    return Runtime.open(Settings.from_env(env))


def create_token(client: FlaskClient, world: World) -> tuple[int, dict[str, str], dict[str, object]]:
    response = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens",
        json={"name": "ci", "scopes": ["read_repository"]},
        headers={"PRIVATE-TOKEN": world.admin_token},
    )
    return response.status_code, dict(response.headers), response.get_json()


@pytest.mark.slow
def test_a_read_only_database_answers_503_and_readiness_fails(tmp_path: Path, database: str) -> None:
    url = f"postgresql://{ADMIN_URL.user}@{ADMIN_URL.host}:{ADMIN_URL.port}/{database}"
    with open_runtime(tmp_path, url) as runtime:
        world = World(runtime)
        client = create_app(runtime).test_client()
        assert create_token(client, world)[0] == 201
        admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        status, headers, body = create_token(client, world)
        assert (status, headers.get("Retry-After")) == (503, "5")
        assert body == {"message": "503 Service Unavailable - the database is not available; try again"}
        # Right after the connections were cut, the pools may still be reconnecting (readiness then says the
        # database did not answer in time); once connected, it says why writes fail.
        deadline = time.monotonic() + 15
        while True:
            readiness = client.get("/-/readiness")
            assert readiness.status_code == 503
            message = readiness.get_json()["checks"]["database"]["message"]
            if message == "the database refuses writes":
                break
            assert time.monotonic() < deadline, message
            time.sleep(0.2)
        admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off')
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")
        assert create_token(client, world)[0] == 201
        assert client.get("/-/readiness").status_code == 200


@pytest.mark.slow
def test_a_lost_server_answers_503_within_seconds_and_is_logged_once(
    tmp_path: Path, postgres_schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    with FaultyProxy((ADMIN_URL.host, ADMIN_URL.port)) as proxy:
        url = f"postgresql://{ADMIN_URL.user}@127.0.0.1:{proxy.port}/{ADMIN_URL.dbname}?schema={postgres_schema}"
        with open_runtime(tmp_path, url) as runtime:
            world = World(runtime)
            client = create_app(runtime).test_client()
            proxy.drop()
            with caplog.at_level(logging.WARNING, logger="api.errors"):
                for _ in range(2):  # two requests, one log line
                    started = time.monotonic()
                    status, headers, _ = create_token(client, world)
                    assert (status, headers.get("Retry-After")) == (503, "5")
                    assert time.monotonic() - started < 15
            outages = [r for r in caplog.records if "database unavailable" in r.getMessage()]
            assert len(outages) == 1
            proxy.resume()
            deadline = time.monotonic() + 15
            while create_token(client, world)[0] != 201:
                assert time.monotonic() < deadline, "writes did not come back after the server returned"
                time.sleep(0.2)
