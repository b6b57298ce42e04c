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
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import psycopg
from eventsourcing.persistence import InterfaceError as EventStoreInterfaceError
from eventsourcing.persistence import OperationalError as EventStoreOperationalError
from psycopg_pool import ConnectionPool

from infrastructure.settings import DatabaseLocation

T = TypeVar("T")
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


# Every wait on PostgreSQL is bounded, so that no caller hangs on a stopped, frozen or unreachable server: a
# pooled connection within POOL_TIMEOUT, a new one within CONNECT_TIMEOUT; a statement within 15 s (server
# side); and a peer that stopped acknowledging (a black-holed network) is noticed by TCP keepalives and
# tcp_user_timeout within about 10 s. A *frozen* server still acknowledges at the TCP level and cannot enforce
# its own statement timeout, so a statement already sent waits for it to wake; that is why nothing on the auth
# path ever waits on the database (projections/credential_index.py).
POOL_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2
POSTGRES_BOUNDS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": 10_000,  # milliseconds
    "options": "-c statement_timeout=15000",
}


def database_unavailable(error: BaseException) -> bool:
    """True when the database cannot serve now (try again later), False when the data is at fault.

    Down, unreachable, closed or exhausted pool, statement or lock timeout, serialization failure, locked,
    read-only, disk full, table missing: psycopg's and sqlite3's ``OperationalError``, ``InterfaceError`` and
    ``InternalError``, server-side ``ProgrammingError`` (it has a SQLSTATE: undefined table, permission denied)
    and ``OSError``. The data is at fault when the driver or the database rejects a value: ``DataError`` (a NUL
    on PostgreSQL, a number out of range), ``IntegrityError``, client-side binding errors, ``UnicodeEncodeError``
    and the like. The event store's own exceptions wrap the driver's: the wrapped one decides.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg.Error):
            if isinstance(current, psycopg.DataError | psycopg.IntegrityError):
                return False
            if isinstance(current, psycopg.ProgrammingError):
                return current.sqlstate is not None
            return True
        if isinstance(current, sqlite3.Error):
            row_errors = (
                sqlite3.DataError | sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError
            )
            return not isinstance(current, row_errors)
        if isinstance(current, OSError | MemoryError):
            return True
        current = current.__cause__
    # The event store's connection errors carry no driver exception when they are its own (a closed pool).
    return isinstance(error, EventStoreOperationalError | EventStoreInterfaceError)


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
                timeout=POOL_TIMEOUT,
                # A pooled connection is checked before use: after a restart or a failover every pooled
                # connection is dead, and each would otherwise fail one request before being replaced.
                check=ConnectionPool.check_connection,
                kwargs={"autocommit": True, **POSTGRES_BOUNDS},
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

    def accepts_writes(self) -> bool:
        """Whether a write would be accepted now: PostgreSQL neither read-only nor a standby; SQLite's file and
        folder writable (WAL needs both)."""
        if self._pool is not None:
            with self._pool.connection() as connection:
                row = connection.execute(
                    "SELECT current_setting('transaction_read_only') = 'off' AND NOT pg_is_in_recovery()"
                ).fetchone()
            return bool(row and row[0])
        path = self.location.sqlite_path
        assert path is not None
        return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            for connection in self._sqlite_connections:
                connection.close()
            self._sqlite_connections.clear()
        self._local = threading.local()


class DatabaseProbe:
    """Asks the database a question from a thread of its own and waits at most ``deadline`` for the answer.

    A frozen server keeps acknowledging at the TCP level, so a statement already sent can wait for as long as
    the freeze lasts; readiness and metrics must answer anyway. One question at a time: while an earlier one
    still hangs, the next caller is told at once (``TimeoutError``) instead of stranding another thread.
    """

    def __init__(self, deadline: float = 2.0) -> None:
        self.deadline = deadline
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="database-probe")
        self._pending: Future[Any] | None = None

    def ask(self, question: Callable[[], T]) -> T:
        with self._lock:
            if self._pending is not None and not self._pending.done():
                raise TimeoutError("the database has not answered an earlier probe yet")
            future = self._executor.submit(question)
            self._pending = future
        try:
            return future.result(timeout=self.deadline)
        except FutureTimeout:
            raise TimeoutError(f"the database did not answer within {self.deadline:g} s") from None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
