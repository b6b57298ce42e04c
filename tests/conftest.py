"""Shared fixtures: a runtime on each backend (SQLite file, real PostgreSQL), a controllable clock."""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Recording

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Slow tests first: with several workers, a long test that starts near the end is what the run waits for.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


class PostgresJanitor:
    """Drops what tests created on PostgreSQL (schemas, databases) from a thread of its own: a drop waits on
    the server's disk, and no test needs to wait for the one before it to be gone."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="postgres-janitor")
        self._pending: list[Future[None]] = []

    def drop_schema(self, schema: str) -> None:
        self._submit(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def drop_database(self, database: str) -> None:
        # FORCE: a process a test started (a worker, a server) may still hold a connection when it ends.
        self._submit(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def _submit(self, statement: str) -> None:
        self._pending.append(self._executor.submit(_execute_as_admin, statement))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for done in self._pending:
            done.result()  # a drop that failed fails the run rather than leaving debris unnoticed


def _execute_as_admin(statement: str) -> None:
    with _admin_connection() as connection:
        connection.execute(statement)


@pytest.fixture(scope="session")
def postgres_janitor() -> Iterator[PostgresJanitor]:
    if postgres_reachable():
        _drop_databases_of_dead_runs()
    janitor = PostgresJanitor()
    yield janitor
    janitor.close()


@pytest.fixture
def postgres_schema(postgres_janitor: PostgresJanitor) -> Iterator[str]:
    """A private schema per test, dropped afterwards, so tests never see each other's events."""
    require_postgres()
    schema = f"t_{secrets.token_hex(6)}"
    yield schema
    postgres_janitor.drop_schema(schema)


def make_settings(backend: str, tmp_path: Path, schema: str | None) -> Settings:
    env = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "data"), "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET}
    if backend == "postgres":
        env["DEPLOY_TOKENS_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
    return Settings.from_env(env)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# For one test in a module that runs on one backend (tests/api, tests/ui): behaviour that depends on the database.
BOTH_BACKENDS = pytest.mark.parametrize("backend", ["sqlite", "postgres"])
# Real concurrency is PostgreSQL's: SQLite serialises every writer of the file.
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"])


@pytest.fixture
def settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    if "world" in request.fixturenames:
        stored: StoredWorlds = request.getfixturevalue("stored_worlds")
        return stored.copy(backend, tmp_path, request, with_credentials="creds" in request.fixturenames)
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


def save_unprojected(runtime: Runtime, *aggregates: Aggregate) -> list[Recording[Any]]:
    """Store events as a save that did not project them in its own transaction: another process's save of
    more events than that takes, a deferring thread's, or one made while a projection was behind. The read
    models do not hold them until a catch-up."""
    runtime.store.run_in_save(None)
    try:
        return runtime.store.save(*aggregates)
    finally:
        runtime.store.run_in_save(runtime.projector.project_in_save)


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

    def bound_to(self, runtime: Runtime) -> World:
        """This world as a runtime opened on a copy of its stored state sees it (the same ids and values)."""
        bound = copy.copy(self)
        bound.runtime = runtime
        return bound


class Credentials:
    """PRIVATE-TOKEN headers for the world's users, by role name ("admin", "maintainer", ...)."""

    def __init__(self, world: World) -> None:
        self.headers = {"admin": {"PRIVATE-TOKEN": world.admin_token}}
        for name, actor in world.users.items():
            assert actor.user_id is not None
            issued = world.runtime.directory.create_personal_access_token(
                world.admin, actor.user_id, name="api", scopes=["api"]
            )
            self.headers[name] = {"PRIVATE-TOKEN": issued.value}

    def __getitem__(self, role: str) -> dict[str, str]:
        return self.headers[role]


@dataclass
class StoredWorld:
    """A world recorded once: where its state lies and what the test needs to know of it (ids, token values)."""

    world: World
    credentials: Credentials | None
    sqlite_data: Path | None = None
    postgres_database: str | None = None


class StoredWorlds:
    """Builds the World once per backend in each test process; every test that asks for ``world`` opens its
    runtime on a copy of that stored state: the SQLite data folder copied, or a PostgreSQL database cloned
    from a template database. Opening a runtime on a copy is what a restarted process does, and costs a
    fraction of the two dozen commands that build the world (seconds each on PostgreSQL under load)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stored: dict[tuple[str, bool], StoredWorld] = {}
        self._databases: list[str] = []

    def copy(
        self, backend: str, tmp_path: Path, request: pytest.FixtureRequest, *, with_credentials: bool
    ) -> Settings:
        stored = self._stored.get((backend, with_credentials))
        if stored is None:
            stored = self._stored[(backend, with_credentials)] = self._record(backend, with_credentials)
        request.node.stash[_STORED_WORLD] = stored
        if stored.sqlite_data is not None:
            shutil.copytree(stored.sqlite_data, tmp_path / "data")
            return make_settings("sqlite", tmp_path, None)
        assert stored.postgres_database is not None
        database = _database_name("t")
        with _admin_connection() as connection:
            connection.execute(f'CREATE DATABASE "{database}" TEMPLATE "{stored.postgres_database}"')
        janitor: PostgresJanitor = request.getfixturevalue("postgres_janitor")
        request.addfinalizer(lambda: janitor.drop_database(database))
        # The first session of a new database builds the server's catalog cache for it; done here, with no
        # deadline, so that the runtime's connections (bounded at 2 s, as in production) find it warm even
        # on a loaded machine.
        settings = _postgres_settings(tmp_path, database)
        with psycopg.connect(settings.database.conninfo()):
            pass
        return settings

    def _record(self, backend: str, with_credentials: bool) -> StoredWorld:
        folder = Path(tempfile.mkdtemp(prefix=f"world-{backend}-", dir=self.folder))
        database = None
        if backend == "postgres":
            require_postgres()
            database = _database_name("w")
            self._databases.append(database)
            with _admin_connection() as connection:
                connection.execute(f'CREATE DATABASE "{database}"')
            settings = _postgres_settings(folder, database)
        else:
            settings = make_settings("sqlite", folder, None)
        # Closed before it is copied: a template database must have no connections, a file no writer.
        with Runtime.open(settings, clock=FixedClock(T0)) as runtime:
            world = World(runtime)
            credentials = Credentials(world) if with_credentials else None
        return StoredWorld(world, credentials, None if database else folder / "data", database)

    def world(self, request: pytest.FixtureRequest, runtime: Runtime) -> World:
        return request.node.stash[_STORED_WORLD].world.bound_to(runtime)

    def credentials(self, request: pytest.FixtureRequest) -> Credentials:
        credentials = request.node.stash[_STORED_WORLD].credentials
        assert credentials is not None
        return credentials

    def close(self, janitor: PostgresJanitor) -> None:
        for database in self._databases:
            janitor.drop_database(database)


_STORED_WORLD = pytest.StashKey[StoredWorld]()
# A copy is named after the test process, so a later run can drop what a killed run left behind.
_DATABASE_PREFIX = "dt_test_"


def _database_name(kind: str) -> str:
    return f"{_DATABASE_PREFIX}{os.getpid()}_{kind}_{secrets.token_hex(4)}"


def _admin_connection() -> psycopg.Connection[Any]:
    return psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True)


def _postgres_settings(folder: Path, database: str) -> Settings:
    location = DatabaseLocation.parse(POSTGRES_URL)
    return Settings.from_env(
        {
            "DEPLOY_TOKENS_DATA_DIR": str(folder / "data"),
            "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
            "DEPLOY_TOKENS_DATABASE_URL": f"postgresql://{location.user}@{location.host}:{location.port}"
            f"/{database}?schema=world",
        }
    )


def _drop_databases_of_dead_runs() -> None:
    with _admin_connection() as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (_DATABASE_PREFIX + "%",)
            )
        ]
        for name in names:
            pid = int(name.removeprefix(_DATABASE_PREFIX).split("_")[0])
            if not _alive(pid):
                connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def stored_worlds(
    tmp_path_factory: pytest.TempPathFactory, postgres_janitor: PostgresJanitor
) -> Iterator[StoredWorlds]:
    stored = StoredWorlds(tmp_path_factory.mktemp("worlds"))
    yield stored
    stored.close(postgres_janitor)


@pytest.fixture
def world(runtime: Runtime, stored_worlds: StoredWorlds, request: pytest.FixtureRequest) -> World:
    return stored_worlds.world(request, runtime)
