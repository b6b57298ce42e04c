"""Shared fixtures: a runtime on each backend (SQLite file, real PostgreSQL), a controllable clock."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from deploy_tokens.access import Principal
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock
from infrastructure.settings import DatabaseLocation, Settings

POSTGRES_URL = os.environ.get("DEPLOY_TOKENS_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
TEST_SECRET = "test-secret-key-that-is-long-enough-for-hkdf-0123456789"
T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def require_postgres() -> None:
    if not postgres_reachable():
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not reachable at " + POSTGRES_URL)
        pytest.skip("PostgreSQL is not reachable")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def postgres_schema() -> Iterator[str]:
    """A private schema per test, dropped afterwards, so tests never see each other's events."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    yield schema
    with psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def make_settings(backend: str, tmp_path: Path, schema: str | None) -> Settings:
    env = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "data"), "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET}
    if backend == "postgres":
        env["DEPLOY_TOKENS_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    return Settings.from_env(env)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    schema = request.getfixturevalue("postgres_schema") if backend == "postgres" else None
    return make_settings(backend, tmp_path, schema)


@pytest.fixture
def runtime(settings: Settings, clock: FixedClock) -> Iterator[Runtime]:
    with Runtime.open(settings, clock=clock) as opened:
        yield opened


@pytest.fixture
def pg_runtime(tmp_path: Path, postgres_schema: str, clock: FixedClock) -> Iterator[Runtime]:
    with Runtime.open(make_settings("postgres", tmp_path, postgres_schema), clock=clock) as opened:
        yield opened


class World:
    """A small directory: an admin, a group tree, projects, and users at each access level."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
        self.admin_token = issued.value
        self.admin = runtime.access.authenticate(issued.value).actor
        self.top = runtime.directory.create_group(self.admin, name="Acme", path="acme")
        self.sub = runtime.directory.create_group(
            self.admin, name="Backend", path="backend", parent_id=self.top
        )
        self.subsub = runtime.directory.create_group(
            self.admin, name="Services", path="services", parent_id=self.sub
        )
        self.sibling = runtime.directory.create_group(self.admin, name="Other", path="other")
        self.project = runtime.directory.create_project(self.admin, name="Api", namespace_id=self.top)
        self.deep_project = runtime.directory.create_project(self.admin, name="Db", namespace_id=self.subsub)
        self.sibling_project = runtime.directory.create_project(
            self.admin, name="Elsewhere", namespace_id=self.sibling
        )
        self.users: dict[str, Actor] = {}
        for name in ("guest", "reporter", "developer", "maintainer", "owner", "outsider", "group_maintainer"):
            user = runtime.directory.register_user(self.admin, username=name, email=f"{name}@example.com")
            self.users[name] = Actor.user(user.user_id, user.username)
        for name, level in (("guest", 10), ("reporter", 20), ("developer", 30), ("maintainer", 40)):
            runtime.members.set_member(self.admin, "project", self.project, self.users[name].user_id, level)
        runtime.members.set_member(self.admin, "group", self.top, self.users["owner"].user_id, 50)
        runtime.members.set_member(self.admin, "group", self.top, self.users["group_maintainer"].user_id, 40)

    def principal(self, token: str) -> Principal:
        return self.runtime.access.authenticate(token)


@pytest.fixture
def world(runtime: Runtime) -> World:
    return World(runtime)
