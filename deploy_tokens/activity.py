"""Per-token activity (R20, R21): every auth decision becomes one ``token_activity`` row, off the hot path.

The request thread only appends a small tuple to an in-memory queue (a ``deque``: appending is atomic and
never blocks). A background writer drains it in batches (every ``interval`` seconds, or as soon as
``batch_size`` rows are waiting) and inserts each batch in one transaction through the runtime's
``Database``. When the queue is full the row is dropped and counted (``deploy_tokens_activity_dropped_total``)
rather than slowing or failing the auth answer; a failed write puts the batch back while there is room.

What a row holds: the token id, or, for a value that matched no token, the first 12 hex characters of its
keyed digest (a pseudonym that lets repeated attempts with one unknown value be correlated; never the
value, R7); when; which endpoint, action and resource; the result, reason and HTTP status; the client
address (``X-Original-Remote-Addr`` from nginx, else the peer address) and the user agent. Free-text
columns are scrubbed of anything shaped like a token before they are written, in the writer thread.

Forks: a child process gets fresh locks and an empty queue (the parent writes what it had queued) and
starts its own writer on its first row, so gunicorn ``--preload`` is safe.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, NamedTuple

from deploy_tokens.db import Cursor, Database, as_utc_text, to_datetime

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_KEY",
    "ACTIVITY_TEXT_LIMIT",
    "ActivityEvent",
    "ActivityRecorder",
    "ActivityRow",
    "ActivityStats",
    "activity_rows",
    "create_activity_table",
]

ACTIVITY_KEY = "deploy_tokens.activity"
TOKEN_REF_LENGTH = 12
ACTIVITY_TEXT_LIMIT = 512  # free-text columns (resource, client address, user agent) are cut to this

_COLUMNS = (
    "occurred_at, token_id, token_ref, endpoint, action, resource_kind, resource_ref, allowed, reason, "
    "status, client_addr, user_agent"
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT = f"INSERT INTO token_activity ({_COLUMNS}) VALUES {_ROW}"
# Full chunks of a batch go in as one multi-row INSERT: one statement execution per 100 rows instead of one
# per row (a third less CPU per row on SQLite, whose module also hands the GIL back and forth around every
# execution). 1,200 parameters stay well under SQLite's and PostgreSQL's limits (32,766 and 65,535).
_CHUNK_ROWS = 100
_INSERT_CHUNK = f"INSERT INTO token_activity ({_COLUMNS}) VALUES " + ", ".join([_ROW] * _CHUNK_ROWS)
_ID_COLUMN = {
    # The rowid alias: new ids are max(id) + 1, so they grow with insertion while old rows are pruned from the
    # oldest end (AUTOINCREMENT would add a sqlite_sequence update to every insert for no gain here).
    "sqlite": "id INTEGER PRIMARY KEY",
    "postgresql": "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}
# Anything shaped like a deploy token or personal access token, e.g. pasted into a user agent or a URL.
_SECRET_SHAPE = re.compile(r"(gldt-|glpat-)[A-Za-z0-9_-]+")


class ActivityEvent(NamedTuple):
    """One decision, as queued by the request thread (the order of ``_COLUMNS``)."""

    occurred_at: datetime
    token_id: int | None
    token_ref: str | None
    endpoint: str
    action: str
    resource_kind: str | None
    resource_ref: str | None
    allowed: bool
    reason: str
    status: int
    client_addr: str | None
    user_agent: str | None


@dataclass(frozen=True)
class ActivityRow:
    id: int
    occurred_at: datetime
    token_id: int | None
    token_ref: str | None
    endpoint: str
    action: str
    resource_kind: str | None
    resource_ref: str | None
    allowed: bool
    reason: str
    status: int
    client_addr: str | None
    user_agent: str | None


@dataclass(frozen=True)
class ActivityStats:
    depth: int
    dropped: int
    written: int
    write_errors: int


def create_activity_table(db: Database) -> None:
    """Idempotent; safe when several processes start at once (a lost race on PostgreSQL is retried)."""
    statements = (
        f"""CREATE TABLE IF NOT EXISTS token_activity (
            {_ID_COLUMN[db.dialect]},
            occurred_at TIMESTAMPTZ NOT NULL, token_id BIGINT, token_ref TEXT, endpoint TEXT NOT NULL,
            action TEXT NOT NULL, resource_kind TEXT, resource_ref TEXT, allowed BOOLEAN NOT NULL,
            reason TEXT NOT NULL, status INTEGER NOT NULL, client_addr TEXT, user_agent TEXT)""",
        "CREATE INDEX IF NOT EXISTS token_activity_token ON token_activity (token_id, occurred_at)",
        "CREATE INDEX IF NOT EXISTS token_activity_time ON token_activity (occurred_at)",
    )
    for attempt in range(2):
        try:
            with db.transaction() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            return
        except Exception:
            # Two processes creating the table at the same instant: one loses on the catalog's unique index.
            if attempt:
                raise
            log.info("token_activity creation raced; retrying", exc_info=True)


def _scrub(text: str | None) -> str | None:
    if text is None:
        return None
    if "gl" in text:  # the regular expression only when a token prefix could be there
        text = _SECRET_SHAPE.sub(r"\1[REDACTED]", text)
    return text[:ACTIVITY_TEXT_LIMIT]


def _row_params(event: ActivityEvent, sqlite: bool) -> tuple[Any, ...]:
    return (
        as_utc_text(event.occurred_at) if sqlite else event.occurred_at,
        event.token_id,
        event.token_ref,
        event.endpoint,
        str(event.action),  # plain str: the request thread may queue StrEnum members
        event.resource_kind,
        _scrub(event.resource_ref),
        # SQLite has no boolean type and stores 1/0 either way; binding a plain int skips the sqlite3 module's
        # adapter lookup for bool (an int subclass), which costs more than the rest of the row's binding.
        (1 if event.allowed else 0) if sqlite else bool(event.allowed),
        str(event.reason),
        int(event.status),
        _scrub(event.client_addr),
        _scrub(event.user_agent),
    )


_RECORDERS: weakref.WeakSet[ActivityRecorder] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for recorder in list(_RECORDERS):
        recorder._reset_after_fork()


def _close_all_at_exit() -> None:
    for recorder in list(_RECORDERS):
        try:
            recorder.close()
        except Exception:  # the database may already be gone at interpreter exit
            log.warning("could not flush token activity at exit", exc_info=True)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)


class ActivityRecorder:
    def __init__(
        self,
        db: Database,
        *,
        capacity: int = 100_000,
        batch_size: int = 500,
        interval: float = 0.2,
    ) -> None:
        if capacity < 1 or batch_size < 1 or interval <= 0:
            raise ValueError("capacity and batch_size must be positive, interval greater than zero")
        self.db = db
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval = interval
        self._queue: deque[ActivityEvent] = deque()
        self._init_threading()
        self._dropped = 0
        self._written = 0
        self._write_errors = 0
        self._autostart = False
        self._closed = False
        _RECORDERS.add(self)

    def _init_threading(self) -> None:
        self._stats_lock = threading.Lock()
        # Held while a batch is taken from the queue and written, so flush() returns only once every row
        # queued before it was called is committed (even one the writer thread had already taken).
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._running = False

    # The hot path --------------------------------------------------------------------------------------

    def record(self, event: ActivityEvent) -> None:
        """Queue one row; never blocks and never raises for a full queue (the row is counted as dropped)."""
        if not self._running:
            if self._closed:
                with self._stats_lock:
                    self._dropped += 1
                return
            if self._autostart:
                self.start()
        queue = self._queue
        if len(queue) >= self.capacity:
            with self._stats_lock:
                self._dropped += 1
            return
        queue.append(event)
        if len(queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    # Lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        with self._stats_lock:
            if self._running or self._closed:
                return
            self._autostart = True
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="token-activity-writer", daemon=True)
            self._running = True
        self._thread.start()

    def start_on_first_record(self) -> None:
        """Start the writer thread lazily: an app that never answers an auth check never runs one."""
        with self._stats_lock:
            if not self._closed:
                self._autostart = True

    def close(self) -> None:
        """Stop the writer and write whatever is queued. Idempotent."""
        with self._stats_lock:
            if self._closed:
                return
            self._closed = True
            self._autostart = False
            thread = self._thread
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(timeout=10)
        self._running = False
        self.flush()

    def _reset_after_fork(self) -> None:
        self._queue = deque()
        self._init_threading()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:  # never let the writer die: the next round retries
                log.exception("token activity writer failed")

    # Writing -------------------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every queued row now, in the calling thread; returns how many were written."""
        return self._drain()

    def _drain(self) -> int:
        written = 0
        with self._write_lock:
            while self._queue:
                batch = self._take(self.batch_size)
                if not batch:
                    break
                if not self._write(batch):
                    break
                written += len(batch)
        return written

    def _take(self, count: int) -> list[ActivityEvent]:
        batch: list[ActivityEvent] = []
        queue = self._queue
        try:
            for _ in range(count):
                batch.append(queue.popleft())
        except IndexError:
            pass
        return batch

    def _write(self, batch: Sequence[ActivityEvent]) -> bool:
        try:
            sqlite = self.db.dialect == "sqlite"
            rows = [_row_params(event, sqlite) for event in batch]
            chunked = len(rows) - len(rows) % _CHUNK_ROWS
            with self.db.transaction() as cursor:
                for start in range(0, chunked, _CHUNK_ROWS):
                    chunk = rows[start : start + _CHUNK_ROWS]
                    cursor.execute(_INSERT_CHUNK, list(chain.from_iterable(chunk)))
                if chunked < len(rows):
                    cursor.executemany(_INSERT, rows[chunked:])
        except Exception:
            log.warning("could not write %d token activity rows; will retry", len(batch), exc_info=True)
            requeued = 0
            for event in reversed(batch):  # back to the front, oldest first, while there is room
                if len(self._queue) >= self.capacity:
                    break
                self._queue.appendleft(event)
                requeued += 1
            with self._stats_lock:
                self._write_errors += 1
                self._dropped += len(batch) - requeued
            return False
        with self._stats_lock:
            self._written += len(batch)
        return True

    def stats(self) -> ActivityStats:
        with self._stats_lock:
            return ActivityStats(len(self._queue), self._dropped, self._written, self._write_errors)


def _activity_row(row: Sequence[Any]) -> ActivityRow:
    occurred_at = to_datetime(row[1])
    assert occurred_at is not None
    return ActivityRow(
        id=int(row[0]),
        occurred_at=occurred_at,
        token_id=None if row[2] is None else int(row[2]),
        token_ref=row[3],
        endpoint=row[4],
        action=row[5],
        resource_kind=row[6],
        resource_ref=row[7],
        allowed=bool(row[8]),
        reason=row[9],
        status=int(row[10]),
        client_addr=row[11],
        user_agent=row[12],
    )


def activity_rows(
    db: Database,
    token_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    after_id: int | None = None,
    limit: int = 1000,
) -> list[ActivityRow]:
    """Activity in time order: optionally one token's, in ``[since, until)``, after row ``after_id``.

    ``after_id`` pages an export: pass the last row's id to continue (the id grows with insertion).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    where: list[str] = []
    params: list[Any] = []
    if token_id is not None:
        where.append("token_id = ?")
        params.append(token_id)
    if since is not None:
        where.append("occurred_at >= ?")
        params.append(since)
    if until is not None:
        where.append("occurred_at < ?")
        params.append(until)
    if after_id is not None:
        where.append("id > ?")
        params.append(after_id)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = " ORDER BY id" if after_id is not None else " ORDER BY occurred_at, id"
    with db.read() as cursor:
        rows = _select(
            cursor, f"SELECT id, {_COLUMNS} FROM token_activity{clause}{order} LIMIT ?", [*params, limit]
        )
    return [_activity_row(row) for row in rows]


def _select(cursor: Cursor, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return cursor.execute(sql, params).fetchall()
