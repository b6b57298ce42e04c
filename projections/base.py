"""Projection plumbing: one design for SQLite and PostgreSQL, exactly-once by transactional tracking.

A projection applies events to its own tables. The projector reads the log in batches after the projection's
tracking position and, in ONE transaction, applies the batch and moves the position. A crash rolls both
back; a repeated delivery finds the position already moved. The tracking row is locked first (``FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so any process may call ``catch_up`` (the projector process,
or an API process wanting read-your-writes) and no two apply the same batch.

The library's ``ProjectionRunner`` cannot follow a SQLite application (no subscriptions there), and it
commits once per event; this pull loop works on both backends and batches.

A projection's ``version`` says which rows it derives from the events: when it grows (a new table, a column
that means something new), start-up empties that projection's tables and replays the log from event 0, so a
read model never mixes rows of two versions.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

from infrastructure.db import Cursor, Database
from infrastructure.store import EventStore
from projections.follower import Follower

log = logging.getLogger(__name__)

TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    name TEXT PRIMARY KEY,
    position BIGINT NOT NULL
)
"""
# Beside the tracking table rather than a column of it: stores made before versions existed have no column to
# alter portably, and a projection without a row here was built by version 1.
VERSIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_versions (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL
)
"""

PROJECTIONS_CHANNEL = "deploy_tokens_projections"

Decode = Callable[[Notification], DomainEventProtocol[Any]]


class StreamEvent(Protocol):
    """What every stored event carries: its stream, its place in the stream and when it happened."""

    @property
    def originator_id(self) -> UUID: ...

    @property
    def originator_version(self) -> int: ...

    @property
    def timestamp(self) -> datetime: ...


EventT = TypeVar("EventT")
StreamEventT = TypeVar("StreamEventT", bound=StreamEvent)


@dataclass(frozen=True)
class EventHandler:
    """One entry of a projection's handler table: an event class and the function that applies it."""

    event_class: type[Any]
    apply: Callable[[Cursor, Any, int], None]


def on(event_class: type[EventT], handler: Callable[[Cursor, EventT, int], None]) -> EventHandler:
    """The entry for ``event_class``: mypy checks that ``handler`` takes events of that very class.

    A function rather than a generic entry class: the caller's expected type (a table of entries of any
    class) would otherwise be what the handler is checked against.
    """
    return EventHandler(event_class, handler)


class EventHandlers:
    """A projection's handlers, keyed by event class. Events of any other class are not applied."""

    def __init__(self, *entries: EventHandler) -> None:
        # ``Any``: each entry was checked against its own class by ``on``, and dispatch is by that exact class
        # (the mapper builds an event of exactly the class its topic names).
        self._by_class: dict[type[Any], Callable[[Cursor, Any, int], None]] = {}
        for entry in entries:
            if entry.event_class in self._by_class:
                raise ValueError(f"two handlers for {entry.event_class.__qualname__}")
            self._by_class[entry.event_class] = entry.apply
        self._by_topic: dict[str, Callable[[Cursor, Any, int], None] | None] = {}

    @property
    def event_classes(self) -> frozenset[type[Any]]:
        return frozenset(self._by_class)

    def for_topic(self, topic: str) -> Callable[[Cursor, Any, int], None] | None:
        """The handler for a stored event's topic, found without decoding the event."""
        try:
            return self._by_topic[topic]
        except KeyError:
            handler = self._by_topic[topic] = self._by_class.get(resolve_topic(topic))
            return handler


class Projection(ABC):
    """A read model: owns ``tables``, applies stored events to them through the cursor it is given."""

    name: str
    tables: tuple[str, ...]
    # Raise it whenever the same events would give other rows: start-up then rebuilds the projection.
    version: ClassVar[int] = 1

    @abstractmethod
    def schema(self) -> Sequence[str]:
        """CREATE TABLE / CREATE INDEX statements, idempotent (IF NOT EXISTS)."""

    @abstractmethod
    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        """Apply one stored event; must only touch this projection's tables, through ``cursor``."""


class EventProjection(Projection):
    """A projection of decoded events, through a table of handlers keyed by event class."""

    handlers: ClassVar[EventHandlers]

    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        # Most events concern few projections: one no handler wants is not even decoded.
        handler = self.handlers.for_topic(notification.topic)
        if handler is not None:
            handler(cursor, decode(notification), notification.id)


class ReadQueries:
    """Queries over the read models' tables in one database, grouped by read model in the subclasses."""

    def __init__(self, db: Database) -> None:
        self.db = db


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

    # Set-up and status -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables; empty and rewind every projection built by another version (see the module)."""
        with self.db.transaction() as cursor:
            cursor.execute(TRACKING_SCHEMA)
            cursor.execute(VERSIONS_SCHEMA)
            for projection in self.projections.values():
                for statement in projection.schema():
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                    (projection.name,),
                )
                self._match_version(cursor, projection)

    def _match_version(self, cursor: Cursor, projection: Projection) -> None:
        row = cursor.execute(
            "SELECT version FROM projection_versions WHERE name = ?", (projection.name,)
        ).fetchone()
        built_by = int(row[0]) if row else 1
        if built_by != projection.version:
            tracked = cursor.execute(
                "SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE", (projection.name,)
            ).fetchone()
            if tracked and tracked[0]:
                log.warning(
                    "projection %s was built by version %d, this is version %d: rebuilding it from event 0",
                    projection.name,
                    built_by,
                    projection.version,
                )
                self._rewind(cursor, projection)
        cursor.execute(
            "INSERT INTO projection_versions (name, version) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (projection.name, projection.version),
        )

    @staticmethod
    def _rewind(cursor: Cursor, projection: Projection) -> None:
        for table in projection.tables:
            cursor.execute(f"DELETE FROM {table}")
        cursor.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (projection.name,))

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

    def _catch_up(
        self,
        projection: Projection,
        until: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[int, int]:
        """Apply batch after batch until there is nothing more; returns events applied and the last position."""
        applied, last = 0, 0
        while True:
            with self.db.transaction() as cursor:
                batch = self._apply_next_batch(cursor, projection, until)
            if not batch:
                return applied, last
            applied += batch[0]
            last = batch[1]
            if progress:
                progress(last)

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
        decode = self.store.mapper.to_domain_event
        with cursor.pipelined():
            for notification in notifications:
                projection.apply_stored(cursor, notification, decode)
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
            self._rewind(cursor, projection)
        applied, _ = self._catch_up(
            projection, None, (lambda position: progress(position, head)) if progress else None
        )
        self._announce(self.store.head())
        return applied

    # Following the log -------------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, *, poll_interval: float = 0.5) -> None:
        """Follow the log until ``stop`` is set: woken by the event store's NOTIFY on PostgreSQL."""
        Follower(
            self.db,
            self.catch_up,
            # The event store notifies this channel on every insert; SQLite's recorder has none (polled).
            channel=getattr(self.store.recorder, "channel_name", None),
            interval=poll_interval,
            activity="projection catch-up",
            when_failing="retrying",
        ).run(stop)
