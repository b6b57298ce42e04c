"""Projection plumbing: one design for SQLite and PostgreSQL, exactly-once by transactional tracking.

A projection applies events to its own tables. The projector reads the log in batches after the projection's
tracking position and, in ONE transaction, applies the batch and moves the position. A crash rolls both
back; a repeated delivery finds the position already moved. The tracking row is locked first (``FOR UPDATE``
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so any process may call ``catch_up`` (the projector process,
or an API process wanting read-your-writes) and no two apply the same batch.

The library's ``ProjectionRunner`` cannot follow a SQLite application (no subscriptions there), and it
commits once per event; this pull loop works on both backends and batches.

A projection's ``version`` says which rows it derives from the events: when it grows (a new table, a column
that means something new), start-up drops that projection's tables, creates them as this version declares
them and replays the log from event 0, so a read model never mixes rows or columns of two versions.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Any

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification

from infrastructure.db import Cursor, Database
from infrastructure.store import EventStore
from projections.follower import Follower
from projections.projection import Decode, Projection, secondary_indexes

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
# The most events a save may hold for its own transaction to project them (``Projector.project_in_save``): a
# command's few. More (a group's deletion with everything in it) follow the ordinary catch-up, so that no save
# holds the log's write lock for long and bulk writes stay out of the event store's pipeline.
IN_SAVE_EVENTS = 8
# Events per transaction of a rebuild, at least: see ``Projector.rebuild``.
REBUILD_BATCH_SIZE = 2000


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused (if it was running), for one batch of a rebuild.

    A batch allocates container objects for every event (the decoded event, its row and details) that live
    until the batch is written and are then freed by reference counting. The collector, triggered every 700
    allocations, walked them (and now and then every object of the process) again and again: over a tenth of
    the audit trail's rebuild (perf, CPU time). A batch makes no reference cycles to speak of; cycles other
    threads make meanwhile are collected once it is over. The switch is process-wide, so only the batches of
    a rebuild (a maintenance operation, each batch under a second) throw it, never following the log.
    """
    was_running = gc.isenabled()
    if was_running:
        gc.disable()
    try:
        yield
    finally:
        if was_running:
            gc.enable()


def _decoding_once(decode: Decode) -> Decode:
    """``decode``, remembering each event by position: several projections of one transaction share it."""
    decoded: dict[int, DomainEventProtocol[Any]] = {}

    def once(notification: Notification) -> DomainEventProtocol[Any]:
        event = decoded.get(notification.id)
        if event is None:
            event = decoded[notification.id] = decode(notification)
        return event

    return once


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
        rebuild_batch_size: int | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.projections = {projection.name: projection for projection in projections}
        self.batch_size = batch_size
        # A rebuild applies larger batches than following the log does (see ``rebuild``).
        self.rebuild_batch_size = rebuild_batch_size or max(batch_size, REBUILD_BATCH_SIZE)
        self._listeners: list[Callable[[int], None]] = []
        # Per thread: the last position its latest save projected in its own transaction; whether its saves
        # leave projection to a catch-up (``deferring``).
        self._in_save = threading.local()

    # Set-up and status -------------------------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables; rebuild from event 0 every projection built by another version (see the module)."""
        with self.db.transaction() as cursor:
            cursor.execute(TRACKING_SCHEMA)
            cursor.execute(VERSIONS_SCHEMA)
            for projection in self.projections.values():
                cursor.execute(
                    "INSERT INTO projection_tracking (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
                    (projection.name,),
                )
                self._match_version(cursor, projection)
                for statement in projection.schema():
                    cursor.execute(statement)

    def _match_version(self, cursor: Cursor, projection: Projection) -> None:
        """Another version's tables are dropped, not only emptied, before ``schema`` creates them: a version
        may change a table's columns, which ``CREATE TABLE IF NOT EXISTS`` would leave as they were."""
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
            for table in projection.tables:
                cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute("UPDATE projection_tracking SET position = 0 WHERE name = ?", (projection.name,))
        cursor.execute(
            "INSERT INTO projection_versions (name, version) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
            (projection.name, projection.version),
        )

    @staticmethod
    def _rewind(cursor: Cursor, projection: Projection) -> None:
        for table in projection.tables:
            cursor.empty_derived_table(table)
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

    def project_in_save(self, cursor: Cursor, written: Sequence[Notification]) -> None:
        """Apply a save's events to every projection inside the save's own transaction (the event store calls
        this, ``EventStore.run_in_save``): one commit for the events, the rows and the positions, and
        ``catch_up_with`` then has nothing left to do but tell the listeners.

        Only when every projection is exactly at the event before the first of ``written``: nothing of another
        process waits to be applied first (the save holds the log's write lock, so nothing else can commit
        meanwhile). A projection a catch-up is busy with (its row locked) is not waited for: the save then
        leaves all of them to ``catch_up_with``, as are saves of more than ``IN_SAVE_EVENTS`` events and those
        of a ``deferring`` thread. A failure here is the read models' and never costs the command its events:
        the projection work rolls back to a savepoint, is logged, and the catch-up applies the events again.
        """
        self._in_save.projected = None
        if not written or len(written) > IN_SAVE_EVENTS or getattr(self._in_save, "deferring", False):
            return
        first, until = written[0].id, written[-1].id
        if until - first != len(written) - 1:
            return
        names = sorted(self.projections)
        cursor.execute("SAVEPOINT project_in_save")
        try:
            # The event store's transaction is pipelined on PostgreSQL: what follows is sent without waiting,
            # and ``settle`` raises here whatever the database refused, while the savepoint can undo it.
            rows = cursor.execute(
                "SELECT name, position FROM projection_tracking"
                f" WHERE name IN ({', '.join('?' for _ in names)}) ORDER BY name FOR UPDATE SKIP LOCKED",
                names,
            ).fetchall()
            # Every projection at one position, the last event before this save's: nothing else to apply.
            positions = {int(position) for _, position in rows}
            ready = (
                len(rows) == len(names)
                and len(positions) == 1
                and self._just_before(cursor, min(positions), first)
            )
            if ready:
                decode = _decoding_once(self.store.mapper.to_domain_event)
                for name in names:
                    self.projections[name].apply_batch(cursor, written, decode)
                cursor.executemany(
                    "UPDATE projection_tracking SET position = ? WHERE name = ?", [(until, n) for n in names]
                )
                if self.db.dialect == "postgresql":
                    cursor.execute(f"NOTIFY {PROJECTIONS_CHANNEL}")  # delivered at commit
            cursor.settle()
            cursor.execute("RELEASE SAVEPOINT project_in_save")
        except Exception:
            # PostgreSQL's pipeline refuses everything after an error until it is synchronised (the error came
            # back through a read, say, before ``settle``): synchronise first, the error being the one at hand.
            with suppress(Exception):
                cursor.settle()
            cursor.execute("ROLLBACK TO SAVEPOINT project_in_save")
            cursor.execute("RELEASE SAVEPOINT project_in_save")
            log.exception(
                "projecting events %d-%d with their save failed; the catch-up applies them", first, until
            )
            return
        if ready:
            # Not yet committed: ``catch_up_with`` trusts it only for these very events, which the caller hands
            # it once their save has returned, so committed.
            self._in_save.projected = (first, until)

    def _just_before(self, cursor: Cursor, position: int, first: int) -> bool:
        """Whether ``position`` is the last event of the log before ``first``. The log is asked only when it is
        not ``first - 1``: the projections are behind, or PostgreSQL's positions have a gap there (left by an
        insert that was rolled back); see ``EventStore.position_before_sql``."""
        if position == first - 1:
            return True
        if position >= first:
            return False
        row = cursor.execute(self.store.position_before_sql(), (first,)).fetchone()
        return int(row[0] if row and row[0] is not None else 0) == position

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """This thread's saves leave projection to a later catch-up (many commands in a row)."""
        was_deferring = getattr(self._in_save, "deferring", False)
        self._in_save.deferring = True
        try:
            yield
        finally:
            self._in_save.deferring = was_deferring  # an inner block leaves the outer one deferring

    def catch_up_with(self, written: Sequence[Notification]) -> int:
        """Read-your-writes after a command: every projection up to the last of ``written`` (the events this
        process has just stored, in log order) in ONE transaction; returns events applied.

        A command waits for this before it answers, so it costs one transaction, not two per projection:
        the tracking rows are locked together (in name order, so that two processes never deadlock); when
        nothing else was stored since the projections' positions, the events are taken from ``written``
        instead of being read back from the log; each is decoded once for every projection. Anything else
        still unprojected (another process's events) is read from the log, as ``catch_up`` reads it.

        On PostgreSQL this transaction's commit does not wait for its WAL flush (``synchronous_commit`` off
        for it alone): its rows derive from events that are already durable and its tracking positions commit
        atomically with them, so a server crash can only lose projection that is then applied again from the
        log, exactly once; every session sees the rows at once, as after any commit.
        """
        if not written:
            return 0
        first, until = written[0].id, written[-1].id
        if getattr(self._in_save, "projected", None) == (first, until):  # the save's own transaction did
            self._in_save.projected = None
            self._announce(until)
            return len(written)
        names = sorted(self.projections)
        decode = _decoding_once(self.store.mapper.to_domain_event)
        applied, incomplete = 0, False
        with self.db.transaction(durable=False) as cursor:
            rows = cursor.execute(
                f"SELECT name, position FROM projection_tracking WHERE name IN ({', '.join('?' for _ in names)})"
                " ORDER BY name FOR UPDATE",
                names,
            ).fetchall()
            positions = {str(name): int(position) for name, position in rows}
            behind = {name: positions.get(name, 0) for name in names if positions.get(name, 0) < until}
            if behind:
                lowest = min(behind.values())
                contiguous = all(
                    notification.id == first + offset for offset, notification in enumerate(written)
                )
                if contiguous and lowest >= first - 1:
                    source: Sequence[Notification] = written
                else:
                    source = self.store.recorder.select_notifications(
                        start=lowest, limit=self.batch_size, stop=until, inclusive_of_start=False
                    )
                moved: list[tuple[int, str]] = []
                # Each projection pipelines its own writes, or sends them in bulk (COPY has no pipeline mode).
                for name, position in behind.items():
                    projection = self.projections[name]
                    pending = [notification for notification in source if notification.id > position]
                    projection.apply_batch(cursor, pending, decode)
                    if pending:
                        moved.append((pending[-1].id, name))
                        applied += len(pending)
                    incomplete = incomplete or not pending or pending[-1].id < until
                if moved:
                    cursor.executemany("UPDATE projection_tracking SET position = ? WHERE name = ?", moved)
                    if self.db.dialect == "postgresql":
                        cursor.execute(f"NOTIFY {PROJECTIONS_CHANNEL}")  # delivered at commit
        if not behind:  # applied already: by another process's catch-up, or by the save's own transaction
            self._announce(until)
            return 0
        if incomplete:  # more than one batch of others' events was waiting: the ordinary loop takes the rest
            return applied + self.catch_up(until)
        if applied:
            self._announce(until)
        return applied

    def _catch_up(
        self,
        projection: Projection,
        until: int | None,
        progress: Callable[[int], None] | None = None,
        batch_size: int | None = None,
        *,
        bulk: bool = False,
    ) -> tuple[int, int]:
        """Apply batch after batch until there is nothing more; returns events applied and the last position.

        ``bulk`` (a rebuild): the cyclic garbage collector pauses while each batch is applied (see
        ``_cyclic_gc_paused``).
        """
        applied, last = 0, 0
        while True:
            # Not durable: a crash can only lose batches whose events are durable in the log, with their
            # tracking positions; they are applied again, exactly once (``Database.transaction``).
            with (
                _cyclic_gc_paused() if bulk else nullcontext(),
                self.db.transaction(durable=False) as cursor,
            ):
                batch = self._apply_next_batch(cursor, projection, until, batch_size or self.batch_size)
            if not batch:
                return applied, last
            applied += batch[0]
            last = batch[1]
            if progress:
                progress(last)

    def _apply_next_batch(
        self, cursor: Cursor, projection: Projection, until: int | None, batch_size: int
    ) -> tuple[int, int] | None:
        row = cursor.execute(
            "SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE", (projection.name,)
        ).fetchone()
        position = int(row[0]) if row else 0
        if until is not None and position >= until:
            return None
        notifications = self.store.recorder.select_notifications(
            start=position, limit=batch_size, inclusive_of_start=False
        )
        if not notifications:
            return None
        projection.apply_batch(cursor, notifications, self.store.mapper.to_domain_event)
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
        """Empty one projection's tables and replay the log from event 0, batch by batch.

        The projection's secondary indexes (non-unique: they serve queries, they guard nothing) are dropped
        with the rows and built again at the end, in one pass over the finished tables: maintaining them row
        by row is most of what writing a row costs (half of the audit trail's rebuild on PostgreSQL). Unique
        indexes stay, so every insert is still checked. Until the end, queries of this read model, incomplete
        anyway, may scan. A rebuild that fails builds them again before it raises; a process killed meanwhile
        leaves them to the next start-up (``setup`` creates whatever index is missing).

        Batches are larger than when following the log (``rebuild_batch_size``): each transaction writes
        again every index page its rows fall into, most of them for rows in random order (stream ids), so
        fewer, larger ones write less (SQLite: the audit trail's rebuild wrote 50 MB in batches of 500, 34 MB
        in batches of 2,000). Each still holds SQLite's write lock for only a fraction of a second. While a
        batch is applied, the cyclic garbage collector pauses (``_cyclic_gc_paused``).
        """
        projection = self.projections[name]
        head = self.store.head()
        deferred = secondary_indexes(projection)
        with self.db.transaction() as cursor:
            cursor.execute("SELECT position FROM projection_tracking WHERE name = ? FOR UPDATE", (name,))
            self._rewind(cursor, projection)
            for index in deferred:
                cursor.execute(f"DROP INDEX IF EXISTS {index}")
        try:
            applied, _ = self._catch_up(
                projection,
                None,
                (lambda position: progress(position, head)) if progress else None,
                self.rebuild_batch_size,
                bulk=True,
            )
        except BaseException:
            try:
                self._create_schema(projection)
            except Exception:  # the rebuild's own failure is the one to report; setup creates them later
                log.exception("projection %s: could not build its indexes again after a failed rebuild", name)
            raise
        self._create_schema(projection)
        self._announce(self.store.head())
        return applied

    def _create_schema(self, projection: Projection) -> None:
        with self.db.transaction() as cursor:
            for statement in projection.schema():
                cursor.execute(statement)

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
