"""Projection plumbing: one design for SQLite and PostgreSQL, exactly-once by transactional tracking.

A projection applies events to its own tables. The projector reads the log in batches after the projection's
tracking position and, in ONE transaction, applies the batch and moves the position. A crash rolls both
back; a repeated delivery finds the position already moved. The tracking row is locked first (``FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so any process may call ``catch_up`` (the projector process,
or an API process wanting read-your-writes) and no two apply the same batch.

The library's ``ProjectionRunner`` cannot follow a SQLite application (no subscriptions there), and it
commits once per event; this pull loop works on both backends and batches (eventsourcing-notes §6, §9).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification

from infrastructure.db import POSTGRES_BOUNDS, Cursor, Database, database_unavailable
from infrastructure.store import EventStore

log = logging.getLogger(__name__)

TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
)
"""

PROJECTIONS_CHANNEL = "deploy_tokens_projections"


class Projection(ABC):
    """A read model: owns ``tables``, applies events to them through the cursor it is given."""

    name: ClassVar[str]
    tables: ClassVar[tuple[str, ...]]

    @abstractmethod
    def schema(self) -> Sequence[str]:
        """CREATE TABLE / CREATE INDEX statements, idempotent (IF NOT EXISTS)."""

    @abstractmethod
    def apply(self, cursor: Cursor, event: DomainEventProtocol[Any], position: int) -> None:
        """Apply one event; must only touch this projection's tables, through ``cursor``."""

    def apply_stored(
        self,
        cursor: Cursor,
        notification: Notification,
        decode: Callable[[Notification], DomainEventProtocol[Any]],
    ) -> None:
        """Apply one stored event. Projections of the stored bytes themselves (the hash chain) override this."""
        self.apply(cursor, decode(notification), notification.id)


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    head: int

    @property
    def lag(self) -> int:
        return max(self.head - self.position, 0)


class Projector:
    def __init__(
        self,
        store: EventStore,
        db: Database,
        projections: Iterable[Projection],
        *,
        batch_size: int = 500,
    ) -> None:
        self.store = store
        self.db = db
        self.projections = {projection.name: projection for projection in projections}
        self.batch_size = batch_size
        self._listeners: list[Callable[[int], None]] = []
        self._failing = False  # inside a run of failed catch-ups (logged when it starts and ends)

    # Set-up and status -------------------------------------------------------------------------------

    def setup(self) -> None:
        with self.db.transaction() as cursor:
            cursor.execute(TRACKING_SCHEMA)
            for projection in self.projections.values():
                for statement in projection.schema():
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                    (projection.name,),
                )

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """Called with the new position after every committed batch (e.g. to refresh an in-memory index)."""
        self._listeners.append(callback)

    def positions(self) -> dict[str, int]:
        with self.db.read() as cursor:
            rows = cursor.execute("SELECT name, position FROM projection_tracking").fetchall()
        return {str(name): int(position) for name, position in rows if name in self.projections}

    def status(self) -> list[ProjectionStatus]:
        head = self.store.head()
        positions = self.positions()
        return [ProjectionStatus(name, positions.get(name, 0), head) for name in self.projections]

    # Catching up -------------------------------------------------------------------------------------

    def catch_up(self, until: int | None = None) -> int:
        """Bring every projection up to ``until`` (default: the head); returns events applied.

        Listeners hear once, after every projection has caught up, and only if anything was applied.
        """
        applied, last = 0, 0
        for projection in self.projections.values():
            count, position = self._catch_up(projection, until)
            applied, last = applied + count, max(last, position)
        if applied:
            self._announce(last)
        return applied

    def _catch_up(self, projection: Projection, until: int | None) -> tuple[int, int]:
        applied, last = 0, 0
        while True:
            with self.db.transaction() as cursor:
                batch = self._apply_next_batch(cursor, projection, until)
            if not batch:
                return applied, last
            applied += batch[0]
            last = batch[1]

    def _apply_next_batch(
        self, cursor: Cursor, projection: Projection, until: int | None
    ) -> tuple[int, int] | None:
        row = cursor.execute(
            "SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE", (projection.name,)
        ).fetchone()
        position = int(row[0]) if row else 0
        if until is not None and position >= until:
            return None
        notifications = self.store.recorder.select_notifications(
            start=position, limit=self.batch_size, inclusive_of_start=False
        )
        if not notifications:
            return None
        with cursor.pipelined():
            for notification in notifications:
                projection.apply_stored(cursor, notification, self.store.mapper.to_domain_event)
        last = notifications[-1].id
        cursor.execute("UPDATE projection_tracking SET position = ? WHERE name = ?", (last, projection.name))
        if self.db.dialect == "postgresql":
            cursor.execute(f"NOTIFY {PROJECTIONS_CHANNEL}")  # delivered at commit
        return len(notifications), last

    def _announce(self, position: int) -> None:
        for callback in self._listeners:
            try:
                callback(position)
            except Exception:  # a listener must never break projection
                log.exception("projection listener failed")

    # Rebuilding --------------------------------------------------------------------------------------

    def rebuild(self, name: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Empty one projection's tables and replay the log from event 0, batch by batch."""
        projection = self.projections[name]
        head = self.store.head()
        with self.db.transaction() as cursor:
            cursor.execute("SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE", (name,))
            for table in projection.tables:
                cursor.execute(f"DELETE FROM {table}")
            cursor.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (name,))
        applied = 0
        while True:
            with self.db.transaction() as cursor:
                batch = self._apply_next_batch(cursor, projection, None)
            if not batch:
                break
            applied += batch[0]
            if progress:
                progress(batch[1], head)
        self._announce(self.store.head())
        return applied

    # Following the log -------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, *, poll_interval: float = 0.5) -> None:
        """Follow the log until ``stop`` is set: LISTEN/NOTIFY wake-ups on PostgreSQL, polling on SQLite."""
        if self.db.dialect == "postgresql":
            self._follow_postgres(stop, poll_interval)
            return
        while not stop.is_set():
            self._catch_up_logged()
            stop.wait(poll_interval)

    def _catch_up_logged(self) -> None:
        try:
            self.catch_up()
        except Exception as error:
            # Once per outage, not twice a second: an unavailable database is retried until it is back.
            if not self._failing or not database_unavailable(error):
                log.exception("projection catch-up failed; retrying")
            self._failing = True
            time.sleep(0.5)
            return
        if self._failing:
            log.warning("projection catch-up works again")
        self._failing = False

    def _follow_postgres(self, stop: threading.Event, poll_interval: float) -> None:
        import psycopg

        channel = self.store.recorder.channel_name  # type: ignore[attr-defined]
        while not stop.is_set():
            try:
                with psycopg.connect(self.db.conninfo(), autocommit=True, **POSTGRES_BOUNDS) as connection:
                    connection.execute(f'LISTEN "{channel}"')
                    self._catch_up_logged()
                    while not stop.is_set():
                        for _ in connection.notifies(timeout=poll_interval, stop_after=1):
                            pass
                        self._catch_up_logged()
            except psycopg.OperationalError:
                if not self._failing:
                    log.exception("lost the database connection; reconnecting")
                self._failing = True
                stop.wait(1.0)
