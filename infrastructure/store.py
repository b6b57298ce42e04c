"""The event store (an ``eventsourcing`` Application) and integer-id allocation on top of it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import (
    IntegrityError,
    InterfaceError,
    Notification,
    OperationalError,
    Recording,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteCursor, SQLiteFactory
from eventsourcing.utils import Environment, EnvType, retry
from psycopg import Cursor
from psycopg.rows import DictRow, tuple_row

from infrastructure.db import POOL_TIMEOUT, POSTGRES_BOUNDS, portable_cursor, private_sqlite_file
from infrastructure.db import Cursor as PortableCursor
from infrastructure.idempotency import claim_in_postgres, claim_in_sqlite, pending_slot
from infrastructure.settings import DatabaseLocation

# Called inside the transaction that stores events, once they have their positions, with a cursor of that
# transaction and the events as the log will hand them out: what it writes commits with them or not at all.
# The read models use it to apply a command's events in the command's own transaction (projections.base).
InSave = Callable[[PortableCursor, Sequence[Notification]], None]


def _as_notifications(stored: Sequence[StoredEvent], ids: Sequence[int]) -> list[Notification]:
    return [
        Notification(
            id=number,
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=event.topic,
            state=event.state,
        )
        for number, event in zip(ids, stored, strict=True)
    ]


class EventStore(Application[UUID]):
    """Every lifecycle event of tokens and directory, in one totally ordered log."""

    name = "DeployTokens"

    def __init__(self, location: DatabaseLocation) -> None:
        if location.sqlite_path is not None:
            private_sqlite_file(location.sqlite_path)  # before the library's sqlite3 connection creates it
        super().__init__(env=persistence_env(location))

    def run_in_save(self, hook: InSave | None) -> None:
        """Have ``hook`` called inside every transaction that stores events (see ``InSave``); None: nothing."""
        recorder = self.recorder
        assert isinstance(recorder, BoundedPostgresApplicationRecorder | IdempotentSQLiteApplicationRecorder)
        recorder.in_save = hook

    def head(self) -> int:
        """The position of the newest event in the log (0 when empty)."""
        return self.recorder.max_notification_id() or 0

    @property
    def head_sql(self) -> str:
        """A query for what ``head`` answers (NULL when empty), for a reader of the same database to ask in its
        own transaction: the read models and the log then come from one snapshot, in one round trip."""
        recorder = self.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            schema = recorder.datastore.schema.replace('"', '""')
            table = recorder.events_table_name.replace('"', '""')
            return f'SELECT MAX(notification_id) FROM "{schema}"."{table}"'
        assert isinstance(recorder, SQLiteApplicationRecorder)
        return f"SELECT MAX(rowid) FROM {recorder.events_table_name}"

    def position_before_sql(self) -> str:
        """A query for the position of the last event before a given one (one parameter; NULL when none), for
        the transaction that is inserting that one: on PostgreSQL positions can have gaps (a rolled-back insert
        uses its sequence numbers up), so the event before position ``n`` is not always ``n - 1``.

        It answers -1 (no such position) unless the transaction reads committed data afresh for each
        statement: only then does it see every event committed before the insert took the log's lock. Under
        REPEATABLE READ or SERIALIZABLE (a database's or role's default) its snapshot may be older.
        """
        recorder = self.recorder
        if isinstance(recorder, PostgresApplicationRecorder):
            schema = recorder.datastore.schema.replace('"', '""')
            table = recorder.events_table_name.replace('"', '""')
            return (
                "SELECT CASE WHEN current_setting('transaction_isolation') = 'read committed' THEN"
                f' (SELECT MAX(notification_id) FROM "{schema}"."{table}" WHERE notification_id < ?) ELSE -1 END'
            )
        assert isinstance(recorder, SQLiteApplicationRecorder)
        return f"SELECT MAX(rowid) FROM {recorder.events_table_name} WHERE rowid < ?"


def _retried_once(method: Callable[..., Any]) -> Callable[..., Any]:
    """The library retries every storage call ten times, 0.2 s apart. Under bounded waits one more attempt is
    enough to ride over a dropped connection; ten would hold a request for half a minute during an outage,
    when it should answer 503 and let the client retry."""
    undecorated: Callable[..., Any] = method.__wrapped__  # type: ignore[attr-defined]
    retried: Callable[..., Any] = retry((InterfaceError, OperationalError), max_attempts=2, wait=0.2)(
        undecorated
    )
    return retried


class BoundedPostgresApplicationRecorder(PostgresApplicationRecorder):
    in_save: InSave | None = None

    insert_events = _retried_once(PostgresApplicationRecorder.insert_events)
    select_events = _retried_once(PostgresApplicationRecorder.select_events)
    select_notifications = _retried_once(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _retried_once(PostgresApplicationRecorder.max_notification_id)

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        # The library runs this inside the events' transaction, before it locks the table: an Idempotency-Key
        # is recorded atomically with the command's events (see infrastructure.idempotency). The library's
        # database-function path would skip it; POSTGRES_ENABLE_DB_FUNCTIONS stays off (persistence_env).
        slot = pending_slot()
        if slot is not None:
            claim_in_postgres(
                curs, slot, schema=self.datastore.schema, lock_timeout=self.datastore.lock_timeout
            )
        super()._insert_events(curs, stored_events, **kwargs)

    def _fetch_ids_after_insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # The last step of the library's insert, still inside its transaction (and its pipeline), once the
        # events have their positions.
        ids = super()._fetch_ids_after_insert_events(curs, stored_events, **kwargs)
        if self.in_save is not None and ids:
            cursor = curs.connection.cursor(row_factory=tuple_row)
            # The library names its tables with their schema; the read models' statements rely on the path.
            schema = self.datastore.schema.replace('"', '""')
            cursor.execute(f'SET LOCAL search_path TO "{schema}"')
            self.in_save(portable_cursor(cursor, "postgresql"), _as_notifications(stored_events, ids))
        return ids


class BoundedPostgresFactory(PostgresFactory):
    """The library's PostgreSQL infrastructure with every wait bounded (see ``infrastructure.db``)."""

    application_recorder_class = BoundedPostgresApplicationRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        # The library passes no libpq options of its own; its pool is not open yet, so every connection it
        # ever makes carries these.
        kwargs = self.datastore.pool.kwargs
        assert isinstance(kwargs, dict)
        kwargs.update(POSTGRES_BOUNDS)


class IdempotentSQLiteApplicationRecorder(SQLiteApplicationRecorder):
    in_save: InSave | None = None

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        # Inside the events' transaction, as on PostgreSQL: the key's record commits with the events or not
        # at all.
        slot = pending_slot()
        if slot is not None:
            claim_in_sqlite(c, slot)
        ids = super()._insert_events(c, stored_events, **kwargs)
        if self.in_save is not None and ids:
            cursor = c.sqlite_cursor.connection.cursor()
            self.in_save(portable_cursor(cursor, "sqlite"), _as_notifications(stored_events, ids))
        return ids


class IdempotentSQLiteFactory(SQLiteFactory):
    """The library's SQLite infrastructure, recording Idempotency-Keys with the events."""

    application_recorder_class = IdempotentSQLiteApplicationRecorder


def persistence_env(location: DatabaseLocation) -> dict[str, str]:
    if location.dialect == "sqlite":
        return {
            "PERSISTENCE_MODULE": f"{__name__}:{IdempotentSQLiteFactory.__name__}",
            "SQLITE_DBNAME": str(location.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    return {
        "PERSISTENCE_MODULE": f"{__name__}:{BoundedPostgresFactory.__name__}",
        "POSTGRES_DBNAME": location.dbname,
        "POSTGRES_HOST": location.host,
        "POSTGRES_PORT": str(location.port),
        "POSTGRES_USER": location.user,
        "POSTGRES_PASSWORD": location.password,
        "POSTGRES_SCHEMA": location.schema,
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        # The library's name for how long a caller waits for a pooled connection.
        "POSTGRES_CONNECT_TIMEOUT": str(int(POOL_TIMEOUT)),
        # Check a pooled connection before use: after an outage every pooled connection is dead, and without
        # the check each would fail one request before being replaced.
        "POSTGRES_PRE_PING": "yes",
        "POSTGRES_LOCK_TIMEOUT": "5",
        # Leave POSTGRES_ENABLE_DB_FUNCTIONS off: in 9.5.6 it skips the table lock and loses events.
    }


class IdAllocator:
    """Allocates dense integer ids by claiming the stream ``stream_of(n)`` in the event store.

    The first event of stream ``n`` can be stored only once (the store's primary key), so two processes that
    pick the same ``n`` cannot both succeed: the loser retries with ``n + 1``. Ids are never reused because
    streams are never deleted. Because ids are dense, the highest one is found by exponential and binary
    search over stream existence when a process first allocates.
    """

    def __init__(self, store: EventStore, stream_of: Callable[[int], UUID]) -> None:
        self._store = store
        self._stream_of = stream_of
        self._lock = threading.Lock()
        self._highest: int | None = None

    def _exists(self, number: int) -> bool:
        return self._stream_of(number) in self._store.repository

    def _find_highest(self, known: int = 0) -> int:
        """The highest allocated id, given that ``known`` is allocated (0: nothing known)."""
        if known == 0:
            if not self._exists(1):
                return 0
            known = 1
        low, high = known, known * 2
        while self._exists(high):
            low, high = high, high * 2
        while high - low > 1:  # invariant: low exists, high does not
            middle = (low + high) // 2
            if self._exists(middle):
                low = middle
            else:
                high = middle
        return low

    def save_new(
        self, build: Callable[[int], Sequence[Aggregate]], *, attempts: int = 1000
    ) -> tuple[int, list[Recording[Any]]]:
        """Build the aggregates for the next free id and save them atomically; return the id used.

        ``build`` may raise a domain error, which propagates. An IntegrityError that is not about the id
        (a claimed path, for instance) propagates too.
        """
        with self._lock:
            if self._highest is None:
                self._highest = self._find_highest()
            number = self._highest + 1
            for _ in range(attempts):
                aggregates = build(number)
                try:
                    recordings = self._store.save(*aggregates)
                except IntegrityError:
                    if not self._exists(number):
                        raise
                    number = self._find_highest(number) + 1
                    continue
                self._highest = number
                return number, recordings
        raise RuntimeError("could not allocate an id: too much contention")
