r"""Per-token activity (R20, R21): every auth decision becomes one ``token_activity`` row, off the hot path.

The request thread only appends a small tuple to an in-memory queue (a ``deque``: appending is atomic and
never blocks). A background writer drains it in batches (every ``interval`` seconds, or as soon as
``batch_size`` rows are waiting) and inserts each batch in one transaction through the runtime's
``Database``. When the queue is full the row is dropped and counted (``deploy_tokens_activity_dropped_total``)
rather than slowing or failing the auth answer.

What a row holds: the token id, or, for a value that matched no token, the first 12 hex characters of its
keyed digest (a pseudonym that lets repeated attempts with one unknown value be correlated; never the
value, R7); when; which endpoint, action and resource; the result, reason and HTTP status; the client
address (``X-Original-Remote-Addr`` from nginx, else the peer address) and the user agent.

Text is made storable in the writer thread, never on the request thread. Every text column is scrubbed of
anything shaped like a token, then escaped: a backslash becomes ``\\``, and every character Python does
not count as printable (C0 and C1 controls, DEL, NUL, lone surrogates, format characters such as bidi
overrides and zero-width spaces, separators other than the ASCII space, private-use and unassigned code
points) becomes ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``, the way Python spells it in a string literal.
Because the backslash itself is escaped, the mapping is one-to-one: an escaped NUL can never be mistaken for
a client that sent the four characters ``\x00``, and no invisible character can make one resource look
like another. The result is cut to ``ACTIVITY_TEXT_LIMIT`` characters, never in the middle of an escape.

A failed batch never stalls the writer. When the database itself is the problem (a connection, pool,
lock, disk or schema error: ``psycopg.OperationalError``, ``sqlite3.OperationalError``, ``OSError``, ...),
the batch goes back to the head of the queue and is retried on the next round, nothing set aside. Any other
failure is taken to be about a row's values: the batch is retried row by row, each in its own
transaction, so good rows still go in; a row that fails on its own is *set aside* into
``token_activity_rejected`` (when, the error's class, and the row as ASCII JSON with every non-printable
character escaped and token-shaped text redacted: a representation no database rejects) and counted in
``deploy_tokens_activity_set_aside_total``. If even that insert fails for a reason other than the database
being down, the row is dropped and counted. Each kind of failure is logged once per recorder, by class name
only: a database's message about a value may quote the value.

Forks: a child process gets fresh locks and an empty queue (the parent writes what it had queued) and
starts its own writer on its first row, so gunicorn ``--preload`` is safe.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any, NamedTuple

from infrastructure.db import Cursor, Database, as_utc_text, database_unavailable, to_datetime

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_KEY",
    "ACTIVITY_TEXT_LIMIT",
    "STALL_AFTER",
    "ActivityEvent",
    "ActivityRecorder",
    "ActivityRow",
    "ActivityStats",
    "RejectedActivityRow",
    "activity_rows",
    "create_activity_table",
    "rejected_activity_rows",
    "storable_text",
]

ACTIVITY_KEY = "infrastructure.activity"
TOKEN_REF_LENGTH = 12
ACTIVITY_TEXT_LIMIT = 512  # free-text columns (resource, client address, user agent) are cut to this
# Rows waiting and no progress for this long: the writer is stalled and readiness says so. Long enough that a
# database failover or a burst after an outage (100,000 rows at thousands a second) does not trip it.
STALL_AFTER = 30.0

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
_INSERT_REJECTED = "INSERT INTO token_activity_rejected (set_aside_at, error, row_json) VALUES (?, ?, ?)"
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
class RejectedActivityRow:
    """A row the database refused on its own, kept for auditors instead of being retried forever."""

    id: int
    set_aside_at: datetime
    error: str  # the exception's class (and SQLSTATE), never its message
    row: dict[str, Any]  # the queued fields, token-shaped text redacted


@dataclass(frozen=True)
class ActivityStats:
    depth: int
    dropped: int
    written: int
    write_errors: int
    set_aside: int = 0
    last_write_at: datetime | None = None  # when the writer last committed rows (or set-aside rows)
    oldest_queued_age: float = 0.0  # seconds, by the oldest unwritten row's own timestamp; 0 when none wait
    stalled_for: float = 0.0  # seconds without progress while rows wait; 0 when none wait


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
        # TEXT, not JSON/JSONB: the column must accept whatever the writer produced without a parser's opinion.
        f"""CREATE TABLE IF NOT EXISTS token_activity_rejected (
            {_ID_COLUMN[db.dialect]},
            set_aside_at TIMESTAMPTZ NOT NULL, error TEXT NOT NULL, row_json TEXT NOT NULL)""",
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


# Text ----------------------------------------------------------------------------------------------------


def storable_text(value: object) -> str | None:
    """``value`` as text every database stores and an auditor reads unambiguously (see the module docstring).

    Token-shaped text is redacted, a backslash doubled, every non-printable character escaped as in a Python
    literal, and the result cut to ``ACTIVITY_TEXT_LIMIT`` characters without splitting an escape.
    """
    if value is None:
        return None
    text = value if type(value) is str else str(value)  # plain str: the request thread queues StrEnums
    if "gl" in text:  # the regular expression only when a token prefix could be there
        text = _SECRET_SHAPE.sub(r"\1[REDACTED]", text)
    # Nearly every value is printable without a backslash (two C-speed scans): nothing to escape.
    if text.isprintable() and "\\" not in text:
        return text[:ACTIVITY_TEXT_LIMIT]
    return _escaped(text)


def _escaped(text: str) -> str:
    pieces: list[str] = []
    room = ACTIVITY_TEXT_LIMIT
    for char in text:  # at most ACTIVITY_TEXT_LIMIT rounds: each piece takes at least one character of room
        if char == "\\":
            piece = "\\\\"
        elif char.isprintable():
            piece = char
        else:
            code = ord(char)
            if code < 0x100:
                piece = f"\\x{code:02x}"
            elif code < 0x10000:
                piece = f"\\u{code:04x}"
            else:
                piece = f"\\U{code:08x}"
        room -= len(piece)
        if room < 0:
            break  # never half an escape: "\x0" would leave the reader guessing what was there
        pieces.append(piece)
    return "".join(pieces)


def _row_params(event: ActivityEvent, sqlite: bool) -> tuple[Any, ...]:
    fields: tuple[Any, ...] = event  # any type may have been queued: whatever fails here is set aside
    (
        occurred_at,
        token_id,
        token_ref,
        endpoint,
        action,
        resource_kind,
        resource_ref,
        allowed,
        reason,
        status,
        client_addr,
        user_agent,
    ) = fields
    # One check for every text column at once (None formats as "None", harmless here): printable, no
    # backslash, no token prefix and short enough means no column needs redacting, escaping or cutting.
    joined = f"{token_ref}{endpoint}{action}{resource_kind}{resource_ref}{reason}{client_addr}{user_agent}"
    if (
        len(joined) <= ACTIVITY_TEXT_LIMIT
        and joined.isprintable()
        and "\\" not in joined
        and "gl" not in joined
    ):
        # Plain str: the request thread queues StrEnums.
        endpoint, action, reason = str(endpoint), str(action), str(reason)
    else:
        text = storable_text
        token_ref, endpoint, action = text(token_ref), text(endpoint), text(action)
        resource_kind, resource_ref, reason = text(resource_kind), text(resource_ref), text(reason)
        client_addr, user_agent = text(client_addr), text(user_agent)
    return (
        as_utc_text(occurred_at) if sqlite else occurred_at,
        token_id,
        token_ref,
        endpoint,
        action,
        resource_kind,
        resource_ref,
        # SQLite has no boolean type and stores 1/0 either way; binding a plain int skips the sqlite3 module's
        # adapter lookup for bool (an int subclass), which costs more than the rest of the row's binding.
        (1 if allowed else 0) if sqlite else bool(allowed),
        reason,
        int(status),
        client_addr,
        user_agent,
    )


def _json_value(value: object) -> object:
    """A JSON-encodable stand-in for one queued field that cannot fail to encode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Past sys.get_int_max_str_digits() (4,300 digits, some 14,000 bits) json.dumps raises.
        return int(value) if value.bit_length() < 10_000 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        text = str(value)
        if "gl" in text:
            text = _SECRET_SHAPE.sub(r"\1[REDACTED]", text)
        return text[:ACTIVITY_TEXT_LIMIT]
    return f"<{type(value).__name__}>"  # the class only: a repr could hold anything, a token value included


def _rejected_json(event: object) -> str:
    """ASCII JSON: ``ensure_ascii`` escapes every character outside printable ASCII, lone surrogates too."""
    if isinstance(event, tuple) and len(event) == len(ActivityEvent._fields):
        fields: dict[str, object] = dict(zip(ActivityEvent._fields, event, strict=True))
    else:
        fields = {"event": event}
    return json.dumps({name: _json_value(value) for name, value in fields.items()}, allow_nan=False)


# Failures --------------------------------------------------------------------------------------------------


def _error_kind(error: BaseException) -> str:
    """The exception's class (and SQLSTATE): never its message, which may quote the offending value."""
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str):
        name = f"{name} (SQLSTATE {sqlstate})"
    return name.encode("ascii", "backslashreplace").decode("ascii")


# The recorder ----------------------------------------------------------------------------------------------

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
        stall_after: float = STALL_AFTER,
    ) -> None:
        if capacity < 1 or batch_size < 1 or interval <= 0 or stall_after <= 0:
            raise ValueError("capacity and batch_size must be positive, interval and stall_after above zero")
        self.db = db
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval = interval
        self.stall_after = stall_after
        self._queue: deque[ActivityEvent] = deque()
        self._init_threading()
        self._dropped = 0
        self._written = 0
        self._write_errors = 0
        self._set_aside = 0
        self._last_write_at: datetime | None = None
        # Inside a run of failed rounds: logged once when it starts and once when it ends.
        self._failing = False
        self._logged_kinds: set[str] = set()
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
        # The oldest row of the batch being written: out of the queue, but not written yet.
        self._in_flight: ActivityEvent | None = None
        # Monotonic time of the writer's last sign of life (rows handled, or nothing left to do).
        self._progress_at = time.monotonic()

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
            self._progress_at = time.monotonic()  # an idle, unstarted writer was not stalled
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
        """Write every queued row now, in the calling thread; returns how many went into ``token_activity``.

        Rows set aside are not counted; rows the database could not take stay queued.
        """
        return self._drain()

    def _drain(self) -> int:
        written = 0
        with self._write_lock:
            while self._queue:
                batch = self._take(self.batch_size)
                if not batch:
                    break
                self._in_flight = batch[0]
                try:
                    done, complete = self._write(batch)
                finally:
                    self._in_flight = None
                written += done
                if not complete:
                    break
            if not self._queue:
                with self._stats_lock:
                    self._progress_at = time.monotonic()  # keeping up: nothing waits
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

    def _write(self, batch: Sequence[ActivityEvent]) -> tuple[int, bool]:
        """Returns the rows written and whether the whole batch was dealt with (else its rest is requeued)."""
        sqlite = self.db.dialect == "sqlite"
        try:
            self._insert([_row_params(event, sqlite) for event in batch])
        except Exception as error:
            if database_unavailable(error):
                self._requeue(batch, error)
                return 0, False
            # Some row cannot be stored. Find it one row at a time, so that its neighbours still go in.
            return self._write_each(batch, sqlite)
        self._handled(len(batch), len(batch))
        return len(batch), True

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        chunked = len(rows) - len(rows) % _CHUNK_ROWS
        with self.db.transaction() as cursor:
            for start in range(0, chunked, _CHUNK_ROWS):
                chunk = rows[start : start + _CHUNK_ROWS]
                cursor.execute(_INSERT_CHUNK, list(chain.from_iterable(chunk)))
            if chunked < len(rows):
                cursor.executemany(_INSERT, rows[chunked:])

    def _write_each(self, batch: Sequence[ActivityEvent], sqlite: bool) -> tuple[int, bool]:
        written = 0
        for index, event in enumerate(batch):
            try:
                self._insert([_row_params(event, sqlite)])
            except Exception as error:
                outage = error if database_unavailable(error) else self._set_aside_row(event, error)
                if outage is not None:
                    self._handled(index, written)
                    self._requeue(batch[index:], outage)
                    return written, False
            else:
                written += 1
        self._handled(len(batch), written)
        return written, True

    def _set_aside_row(self, event: ActivityEvent, error: BaseException) -> BaseException | None:
        """Keep a row the database refused in ``token_activity_rejected``, or drop it if even that fails.

        Returns the error when the database itself became unavailable meanwhile (the row waits), else None.
        """
        kind = _error_kind(error)
        try:
            with self.db.transaction() as cursor:
                cursor.execute(_INSERT_REJECTED, (datetime.now(UTC), kind, _rejected_json(event)))
        except Exception as failure:
            if database_unavailable(failure):
                return failure
            with self._stats_lock:
                self._dropped += 1
            self._log_once(
                f"dropped:{kind}",
                "token activity row dropped: refused with %s, and setting it aside failed with %s",
                kind,
                _error_kind(failure),
            )
            return None
        with self._stats_lock:
            self._set_aside += 1
        self._log_once(
            kind,
            "token activity row refused with %s: set aside in token_activity_rejected; "
            "further rows refused this way are only counted (deploy_tokens_activity_set_aside_total)",
            kind,
        )
        return None

    def _handled(self, rows: int, written: int) -> None:
        """``rows`` left the queue for good (``written`` of them into token_activity, the rest set aside)."""
        if not rows:
            return
        with self._stats_lock:
            self._written += written
            self._last_write_at = datetime.now(UTC)
            self._progress_at = time.monotonic()
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("token activity writer is writing again; %d rows queued", len(self._queue))

    def _requeue(self, rows: Sequence[ActivityEvent], error: BaseException) -> None:
        requeued = 0
        for event in reversed(rows):  # back to the front, oldest first, while there is room
            if len(self._queue) >= self.capacity:
                break
            self._queue.appendleft(event)
            requeued += 1
        with self._stats_lock:
            self._write_errors += 1
            self._dropped += len(rows) - requeued
            first, self._failing = not self._failing, True
        if first:  # once per outage, not every round: the readiness check and the gauges show the rest
            log.warning(
                "could not write token activity (%s); %d rows queued, retrying every %.1f s",
                _error_kind(error),
                len(self._queue),
                self.interval,
                exc_info=error,
            )

    def _log_once(self, kind: str, message: str, *args: object) -> None:
        with self._stats_lock:
            if kind in self._logged_kinds:
                return
            self._logged_kinds.add(kind)
        log.warning(message, *args)

    def stats(self) -> ActivityStats:
        now = time.monotonic()
        with self._stats_lock:
            queue = self._queue
            depth = len(queue)
            oldest = self._in_flight
            if oldest is None and depth:
                try:
                    oldest = queue[0]
                except IndexError:  # the writer took it meanwhile
                    oldest = None
            waiting = depth > 0 or self._in_flight is not None
            stalled_for = max(now - self._progress_at, 0.0) if waiting else 0.0
            return ActivityStats(
                depth,
                self._dropped,
                self._written,
                self._write_errors,
                set_aside=self._set_aside,
                last_write_at=self._last_write_at,
                oldest_queued_age=_age(oldest),
                stalled_for=stalled_for,
            )


def _age(event: ActivityEvent | None) -> float:
    if event is None:
        return 0.0
    try:
        return max((datetime.now(UTC) - event.occurred_at).total_seconds(), 0.0)
    except (TypeError, AttributeError):  # a malformed row (it will be set aside): no age to tell
        return 0.0


# Reading ---------------------------------------------------------------------------------------------------


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


def rejected_activity_rows(
    db: Database, *, after_id: int | None = None, limit: int = 1000
) -> list[RejectedActivityRow]:
    """Rows set aside by the writer, in the order they were set aside (page with ``after_id``)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    clause, params = ("", [limit]) if after_id is None else (" WHERE id > ?", [after_id, limit])
    with db.read() as cursor:
        rows = _select(
            cursor,
            f"SELECT id, set_aside_at, error, row_json FROM token_activity_rejected{clause} ORDER BY id LIMIT ?",
            params,
        )
    rejected: list[RejectedActivityRow] = []
    for row_id, set_aside_at, error, row_json in rows:
        moment = to_datetime(set_aside_at)
        assert moment is not None
        rejected.append(RejectedActivityRow(int(row_id), moment, error, json.loads(row_json)))
    return rejected
