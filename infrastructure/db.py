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
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import psycopg
from eventsourcing.persistence import InterfaceError as EventStoreInterfaceError
from eventsourcing.persistence import OperationalError as EventStoreOperationalError
from psycopg import pq
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
    # Never open an existing database file here: closing any descriptor of a file drops every POSIX lock this
    # process holds on it, SQLite's own included, and without its shared lock another process may take the
    # file for its own (checkpoint and delete the WAL this process still reads). A new file has no locks yet.
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass
    except OSError:
        return
    for suffix in ("", *_SQLITE_COMPANIONS):
        companion = f"{name}{suffix}"
        try:
            _tighten(os.stat(companion), partial(os.chmod, companion))
        except OSError:  # absent (a companion usually is), or gone meanwhile
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
    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...
    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, Sequence[Any]]: ...
    def timestamp(self, moment: datetime) -> Any: ...
    def empty_derived_table(self, table: str) -> None: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchmany(self, size: int) -> list[tuple[Any, ...]]: ...
    def read_ahead(self, queries: Iterable[tuple[str, Sequence[Any]]]) -> Iterator[list[tuple[Any, ...]]]: ...
    @property
    def rowcount(self) -> int: ...
    def pipelined(self) -> AbstractContextManager[object]: ...
    def settle(self) -> None: ...


@lru_cache(maxsize=1024)
def _postgres_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s").replace("BLOB", "BYTEA")


@lru_cache(maxsize=1024)
def _sqlite_sql(sql: str) -> str:
    # SQLite has no row locks: a write transaction holds the whole database, so a lock clause has nothing to add.
    return (
        sql.replace("TIMESTAMPTZ", "TEXT").replace(" FOR UPDATE SKIP LOCKED", "").replace(" FOR UPDATE", "")
    )


_COPY_FROM_ROWS = 8
_SECURE_DELETE_MODES = {0: "OFF", 1: "ON", 2: "FAST"}  # what ``PRAGMA secure_delete`` says -> how to set it


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

    def insert_many(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` (values in the order of ``columns``) into ``table``, in bulk.

        PostgreSQL: one ``COPY``, several times cheaper per row than even a pipelined ``executemany`` of
        INSERTs (no statement to bind or execute per row). COPY has no pipeline mode, so inside a pipeline (a
        command's events projected in the event store's transaction) the rows go as INSERTs, whatever their
        number. SQLite: ``executemany`` of one prepared INSERT. ``table`` and ``columns`` are the caller's
        identifiers, never data.
        """
        if not rows:
            return
        names = ", ".join(columns)
        # A few rows (a command's own events) go as INSERTs: a COPY costs more round trips to set up.
        if (
            self._dialect == "postgresql"
            and len(rows) > _COPY_FROM_ROWS
            and self._raw.connection.info.pipeline_status == pq.PipelineStatus.OFF
        ):
            with self._raw.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            return
        # Straight to the driver: sqlite3 binds any sequence, and a copy of each row costs more than binding it.
        self._raw.executemany(
            self._translate(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"), rows
        )

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, Sequence[Any]]:
        """The condition "``column`` is one of ``values``" and its parameters, for a WHERE clause.

        PostgreSQL: ``= ANY(?)`` with one array parameter, one plan whatever the number of values (an IN list
        of hundreds of parameters is planned afresh each time). SQLite: ``IN (?, ...)``.
        """
        if self._dialect == "postgresql":
            return f"{column} = ANY(?)", (list(values),)
        return f"{column} IN ({', '.join('?' * len(values))})", tuple(values)

    def timestamp(self, moment: datetime) -> Any:
        """What to bind for ``moment`` in a ``TIMESTAMPTZ`` column: the value the driver would bind for it.

        On SQLite, the UTC text its registered adapter gives, worked out here: sqlite3's lookup of an adapter
        costs several times the formatting, once per value (bulk inserts of rows with a time). PostgreSQL binds
        the instant itself.
        """
        return moment if self._dialect == "postgresql" else _adapt_datetime(moment)

    def empty_derived_table(self, table: str) -> None:
        """Delete every row of ``table``, a read model's: rows derived from the event log, about to be derived
        again (a projection's rebuild).

        PostgreSQL: ``TRUNCATE``, in the caller's transaction (rolled back with it). A DELETE would leave every
        row behind as a dead tuple until a vacuum, in the table and in each index, where the rebuild's inserts
        step over them. Like any DDL it waits for the table's readers and holds them back until the commit.

        SQLite as most distributions build it zeroes every page a delete frees (``secure_delete``), and WAL
        mode writes each zeroed page twice (the log, then the checkpoint): emptying the audit trail wrote a
        third of its rebuild's bytes. Here freed pages are left as they are (``secure_delete = FAST``: content
        is still purged from the pages that stay in use), for this statement only. Nothing is exposed by it:
        the event log in the same file holds everything the rows were derived from, and the rebuild that
        follows writes the same rows again, over these very pages (freed pages are the first reused).
        """
        if self._dialect == "postgresql":
            self._raw.execute(f"TRUNCATE {table}")
            return
        row = self._raw.execute("PRAGMA secure_delete").fetchone()
        mode = _SECURE_DELETE_MODES.get(row[0] if row else 1, "ON")
        self._raw.execute("PRAGMA secure_delete = FAST")
        try:
            self._raw.execute(f"DELETE FROM {table}")
        finally:
            self._raw.execute(f"PRAGMA secure_delete = {mode}")

    def fetchone(self) -> tuple[Any, ...] | None:
        row = self._raw.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self._raw.fetchall()]

    def fetchmany(self, size: int) -> list[tuple[Any, ...]]:
        """The next ``size`` rows (fewer at the end). SQLite steps through the result as it goes; psycopg's
        client-side cursor has received the whole result already."""
        return [tuple(row) for row in self._raw.fetchmany(size)]

    def read_ahead(self, queries: Iterable[tuple[str, Sequence[Any]]]) -> Iterator[list[tuple[Any, ...]]]:
        """Each query's rows, in order. PostgreSQL: the next query is sent before this one's rows are handed
        over (pipeline mode), so the server works on it while the caller works on these: a load of many pages
        costs about the larger of the two, not their sum. SQLite: one after the other."""
        if self._dialect != "postgresql":
            for sql, params in queries:
                yield self.execute(sql, params).fetchall()
            return
        connection = self._raw.connection
        waiting: deque[Any] = deque()
        with connection.pipeline():
            for sql, params in queries:
                cursor = connection.cursor()
                cursor.execute(_postgres_sql(sql), tuple(params))
                waiting.append(cursor)
                if len(waiting) > 1:
                    yield [tuple(row) for row in waiting.popleft().fetchall()]
            while waiting:
                yield [tuple(row) for row in waiting.popleft().fetchall()]

    @property
    def rowcount(self) -> int:
        return int(self._raw.rowcount)

    def pipelined(self) -> AbstractContextManager[object]:
        """Send statements without waiting for each reply (PostgreSQL pipeline mode); a no-op on SQLite.

        A projection batch is hundreds of small writes: on PostgreSQL one network round trip each would
        dominate, so they are pipelined. A read inside the block still works (it syncs the pipeline).
        """
        if self._dialect == "postgresql":
            connection = self._raw.connection
            if connection.info.pipeline_status != pq.PipelineStatus.OFF:
                # Already pipelined (a projection inside the event store's pipeline): a nested block would
                # sync at its end, one round trip more for nothing; the outer block syncs and reports errors.
                return nullcontext()
            return cast(AbstractContextManager[object], connection.pipeline())
        return nullcontext()

    def settle(self) -> None:
        """Wait for every statement sent so far, raising the first one's error (in a pipeline they are only
        sent); SQLite runs each as it comes, so there is nothing to wait for."""
        if self._dialect == "postgresql":
            connection = self._raw.connection
            if connection.info.pipeline_status != pq.PipelineStatus.OFF:
                with connection.pipeline() as pipeline:
                    pipeline.sync()


def portable_cursor(raw: Any, dialect: Dialect) -> Cursor:
    """The read models' cursor API over a driver cursor of another transaction: the event store's own, so
    that rows written through it commit with the events (``infrastructure.store.InSave``)."""
    return _PortableCursor(raw, dialect)


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
    def transaction(self, *, durable: bool = True) -> Iterator[Cursor]:
        """A write transaction; commits on success, rolls back on any exception.

        ``durable=False`` (PostgreSQL): the commit returns before its WAL reaches the disk. A server crash may
        then lose the last such commits, whole and in order, never part of one; only for writes that can be
        redone from the event log (a projection's batch and its tracking position roll back together).
        """
        if self._pool is not None:
            with self._pool.connection() as connection, connection.transaction():
                if not durable:
                    connection.execute("SET LOCAL synchronous_commit = off")
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

    def read_each(self, queries: Sequence[tuple[str, Sequence[Any]]]) -> list[list[tuple[Any, ...]]]:
        """Every row of each query (SQL and parameters), in order, all from one snapshot, as ``read`` gives.

        PostgreSQL: the transaction's BEGIN, the queries and its COMMIT go in one pipeline, so the whole read
        is one network round trip (the credential index reads what changed this way after every command).
        """
        if self._pool is None:
            with self.read() as cursor:
                return [cursor.execute(sql, params).fetchall() for sql, params in queries]
        with self._pool.connection() as connection:
            cursors = []
            try:
                with connection.pipeline():
                    connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    for sql, params in queries:
                        raw = connection.cursor()
                        raw.execute(_postgres_sql(sql), tuple(params))
                        cursors.append(raw)
                    connection.execute("COMMIT")
            except BaseException:
                # A failed statement leaves the transaction open and aborted: end it before the pool has it.
                if connection.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    with suppress(psycopg.Error):  # a broken connection: the pool discards it
                        connection.execute("ROLLBACK")
                raise
            return [[tuple(row) for row in raw.fetchall()] for raw in cursors]

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
