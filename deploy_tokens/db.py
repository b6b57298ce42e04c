"""One small SQL layer over SQLite (sqlite3) and PostgreSQL (psycopg 3) for the read models.

SQL is written once with ``?`` placeholders and portable types; ``TIMESTAMPTZ`` and ``BLOB`` are mapped to
SQLite's TEXT and PostgreSQL's BYTEA here. Timestamps are stored in SQLite as fixed-width UTC ISO strings so
that they sort and compare like instants. Write transactions serialise writers: ``BEGIN IMMEDIATE`` on SQLite;
on PostgreSQL callers lock the rows they depend on (``FOR UPDATE``).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, Protocol, cast

from psycopg_pool import ConnectionPool

from deploy_tokens.settings import DatabaseLocation

Dialect = Literal["sqlite", "postgresql"]

# Files SQLite keeps beside the database; it creates them with the database file's own permissions.
_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def private_sqlite_file(path: Path) -> None:
    """Make sure the SQLite database file exists with mode 0600 before anything opens it.

    The file holds token digests, the CI vault's ciphertext and web sessions: no other local user may read
    it. sqlite3 would create it with 0644 (less the umask); SQLite gives its ``-wal``, ``-shm`` and
    ``-journal`` files the database file's permissions, so creating the database file 0600 first keeps all
    of them private whatever the umask. A database file or companion left group/other-readable by an older
    version is tightened when this process owns it. Failing to create the file is left to sqlite3 to report
    (it names the problem when it connects).
    """
    name = str(path)
    if name in ("", ":memory:"):  # sqlite3's in-memory databases (no URI mode here: "file:" is a file name)
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return
    try:
        _tighten(os.fstat(fd), lambda mode: os.fchmod(fd, mode))
    finally:
        os.close(fd)
    for suffix in _SQLITE_COMPANIONS:
        companion = f"{name}{suffix}"
        try:
            _tighten(os.stat(companion), partial(os.chmod, companion))
        except OSError:  # absent (the usual case), or gone meanwhile
            continue


def _tighten(status: os.stat_result, chmod: Callable[[int], None]) -> None:
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077 and status.st_uid == os.geteuid():
        chmod(mode & 0o700)


def _adapt_datetime(moment: datetime) -> str:
    # isoformat, not strftime: the same text for years 1000-9999 at half the cost (every activity row has one)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


sqlite3.register_adapter(datetime, _adapt_datetime)


def to_datetime(value: Any) -> datetime | None:
    """Read a timestamp column the same way on both backends."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)


def as_utc_text(moment: datetime) -> str:
    return _adapt_datetime(moment)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...
    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    @property
    def rowcount(self) -> int: ...
    def pipelined(self) -> AbstractContextManager[object]: ...


@lru_cache(maxsize=1024)
def _postgres_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s").replace("BLOB", "BYTEA")


@lru_cache(maxsize=1024)
def _sqlite_sql(sql: str) -> str:
    return sql.replace("TIMESTAMPTZ", "TEXT").replace(" FOR UPDATE", "")


class _PortableCursor:
    """Presents one cursor API; translates placeholders and types for the dialect."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self._raw = raw
        self._dialect = dialect
        self._translate = _postgres_sql if dialect == "postgresql" else _sqlite_sql

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _PortableCursor:
        self._raw.execute(self._translate(sql), tuple(params))
        return self

    def executemany(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if params:
            self._raw.executemany(self._translate(sql), [tuple(row) for row in params])

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._raw.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._raw.fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)

    def pipelined(self) -> AbstractContextManager[object]:
        """Send statements without waiting for each reply (PostgreSQL pipeline mode); a no-op on SQLite.

        A projection batch is hundreds of small writes: on PostgreSQL one network round trip each would
        dominate, so they are pipelined. A read inside the block still works (it syncs the pipeline).
        """
        if self._dialect == "postgresql":
            return cast(AbstractContextManager[object], self._raw.connection.pipeline())
        return nullcontext()


class Database:
    """Connections to the service's database; the event store lives in the same database."""

    def __init__(self, location: DatabaseLocation, *, pool_size: int = 4) -> None:
        self.location = location
        self.dialect: Dialect = "sqlite" if location.dialect == "sqlite" else "postgresql"
        self._local = threading.local()
        self._sqlite_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        if location.sqlite_path is not None:
            # Here, not only on the first connection: the event store opens the same file, maybe first.
            private_sqlite_file(location.sqlite_path)
        if self.dialect == "postgresql":
            self._pool = ConnectionPool(
                conninfo=self.conninfo(),
                min_size=1,
                max_size=pool_size,
                kwargs={"autocommit": True},
                open=True,
                configure=self._configure_postgres,
                name="deploy-tokens-read-models",
            )

    def conninfo(self) -> str:
        return self.location.conninfo()

    def _configure_postgres(self, connection: Any) -> None:
        schema = self.location.schema
        connection.execute(f'SET search_path TO "{schema}"')

    def _sqlite_connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            assert self.location.sqlite_path is not None
            private_sqlite_file(self.location.sqlite_path)  # again: the file may have been removed meanwhile
            connection = sqlite3.connect(
                self.location.sqlite_path, timeout=30, isolation_level=None, check_same_thread=False
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._lock:
                self._sqlite_connections.append(connection)
        return connection

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """A write transaction; commits on success, rolls back on any exception."""
        if self._pool is not None:
            with self._pool.connection() as connection, connection.transaction():
                yield _PortableCursor(connection.cursor(), "postgresql")
            return
        lite = self._sqlite_connection()
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield _PortableCursor(lite.cursor(), "sqlite")
        except BaseException:
            lite.execute("ROLLBACK")
            raise
        lite.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Cursor]:
        """A consistent read (one snapshot) of the read models."""
        if self._pool is not None:
            with self._pool.connection() as connection, connection.transaction():
                connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                yield _PortableCursor(connection.cursor(), "postgresql")
            return
        lite = self._sqlite_connection()
        lite.execute("BEGIN")
        try:
            yield _PortableCursor(lite.cursor(), "sqlite")
        finally:
            lite.execute("COMMIT")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for connection in self._sqlite_connections:
                connection.close()
            self._sqlite_connections.clear()
        self._local = threading.local()
