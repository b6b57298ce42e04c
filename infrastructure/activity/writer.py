"""The activity writer: the request thread queues, a background thread writes in batches, nothing stops it.

The request thread only appends a small tuple to an in-memory queue (a ``deque``: appending is atomic and
never blocks). A background writer drains it in batches (every ``interval`` seconds, or as soon as
``batch_size`` rows are waiting) and inserts each batch in one transaction through the runtime's
``Database``. When the queue is full the row is dropped and counted (``deploy_tokens_activity_dropped_total``)
rather than slowing or failing the auth answer. Text is made storable here, in the writer thread, never on
the request thread (``infrastructure.activity.text``).

A failed batch never stalls the writer. When the database itself is the problem (a connection, pool,
lock, disk or schema error: ``psycopg.OperationalError``, ``sqlite3.OperationalError``, ``OSError``, ...),
the batch goes back to the head of the queue and is retried on the next round, nothing set aside. Any other
failure is taken to be about a row's values: the batch is retried row by row, each in its own
transaction, so good rows still go in; a row that fails on its own is *set aside* into
``token_activity_rejected`` (when, the error's class, and the row as escaped ASCII JSON) and counted in
``deploy_tokens_activity_set_aside_total``. If even that insert fails for a reason other than the database
being down, the row is dropped and counted. Each kind of failure is logged once per recorder, by class name
only: a database's message about a value may quote the value.

Forks: a child process gets fresh locks and an empty queue (the parent writes what it had queued) and
starts its own writer on its first row, so gunicorn ``--preload`` is safe.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, Final

from infrastructure.activity.table import (
    COLUMNS,
    INSERT_CHUNK_ROWS,
    INSERT_REJECTED,
    ActivityEvent,
    insert_statement,
)
from infrastructure.activity.text import ACTIVITY_TEXT_LIMIT, rejected_json, storable_text
from infrastructure.db import Database, as_utc_text, database_unavailable

log = logging.getLogger(__name__)

__all__ = ["STALL_AFTER", "ActivityRecorder", "ActivityStats"]

# Rows waiting and no progress for this long: the writer is stalled and readiness says so. Long enough that a
# database failover or a burst after an outage (100,000 rows at thousands a second) does not trip it.
STALL_AFTER: Final = 30.0


@dataclass(frozen=True)
class ActivityStats:
    depth: int  # rows not yet written: queued, and the batch being written
    dropped: int
    written: int
    write_errors: int
    set_aside: int = 0
    last_write_at: datetime | None = None  # when the writer last committed rows (or set-aside rows)
    oldest_queued_age: float = 0.0  # seconds, by the oldest unwritten row's own timestamp; 0 when none wait
    stalled_for: float = 0.0  # seconds without progress while rows wait; 0 when none wait


# Binding ---------------------------------------------------------------------------------------------------

# The columns whose queued value is not bound as it is, with how it is converted: (column index, conversion).
_Conversions = tuple[tuple[int, Callable[[Any], Any]], ...]


def _sqlite_boolean(value: object) -> int:
    # SQLite has no boolean type and stores 1/0 either way; binding a plain int skips the sqlite3 module's
    # adapter lookup for bool (an int subclass), which costs more than the rest of the row's binding.
    return 1 if value else 0


def _conversions(sqlite: bool, *, plain_text: bool) -> _Conversions:
    """Derived from the columns' declared types. ``plain_text``: the row's text needs no redacting, escaping
    or cutting, so only a required text is made a plain ``str`` (the request thread queues ``StrEnum``s)."""
    conversions: list[tuple[int, Callable[[Any], Any]]] = []
    for index, column in enumerate(COLUMNS):
        convert: Callable[[Any], Any] | None
        if column.value_type is str and not plain_text:
            convert = storable_text
        elif column.value_type is str:
            convert = None if column.nullable else str
        elif column.value_type is datetime:
            convert = as_utc_text if sqlite else None
        elif column.value_type is bool:
            convert = _sqlite_boolean if sqlite else bool
        elif column.value_type is int:
            convert = None if column.nullable else int
        else:
            raise TypeError(f"no binding for the column {column.name} of type {column.value_type.__name__}")
        if convert is not None:
            conversions.append((index, convert))
    return tuple(conversions)


# Per dialect: the conversions when some text of the row must be made storable, and when none needs to be.
_CONVERSIONS: Final = {
    dialect: (
        _conversions(dialect == "sqlite", plain_text=False),
        _conversions(dialect == "sqlite", plain_text=True),
    )
    for dialect in ("sqlite", "postgresql")
}
_TEXT_AT: Final = tuple(index for index, column in enumerate(COLUMNS) if column.value_type is str)
_TEXT_VALUES: Final = itemgetter(*_TEXT_AT)
_TEXT_FORMAT: Final = "%s" * len(_TEXT_AT)  # C-speed concatenation; str.join would copy every StrEnum first


def _bound_row(event: ActivityEvent, conversions: tuple[_Conversions, _Conversions]) -> list[Any]:
    """One queued row as the parameters to bind (``conversions``: the dialect's). Anything may have been
    queued: whatever fails here fails the row's batch, and then the row alone (which is set aside)."""
    fields: tuple[Any, ...] = event
    if len(fields) != len(COLUMNS):
        raise ValueError(f"an activity row has {len(COLUMNS)} fields, not {len(fields)}")
    # One check for every text column at once (None reads "None", harmless here): printable, no backslash, no
    # token prefix ("gl", see storable_text) and short enough means none needs redacting, escaping or cutting.
    text = _TEXT_FORMAT % _TEXT_VALUES(fields)
    plain_text = (
        len(text) <= ACTIVITY_TEXT_LIMIT and text.isprintable() and "\\" not in text and "gl" not in text
    )
    row = list(fields)
    for index, convert in conversions[plain_text]:
        row[index] = convert(row[index])
    return row


def _chunk_sizes(rows: int) -> Iterator[int]:
    """How many rows each ``INSERT`` of a batch takes: 100, then the rest in falling powers of two.

    One statement execution per chunk instead of one per row (a third less CPU per row on SQLite, whose module
    also hands the GIL back and forth around every execution), from a handful of statement texts that the
    drivers prepare once.
    """
    while rows:
        size = INSERT_CHUNK_ROWS if rows >= INSERT_CHUNK_ROWS else 1 << (rows.bit_length() - 1)
        yield size
        rows -= size


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
        # The batch being written: out of the queue, not written yet. Its oldest row, and how many of its rows
        # are neither written nor back in the queue (changed with the queue under the stats lock, so that a
        # reader never sees a row in neither place, or in both).
        self._in_flight: ActivityEvent | None = None
        self._in_flight_rows = 0
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
                try:
                    done, complete = self._write(batch)
                finally:
                    with self._stats_lock:
                        self._in_flight, self._in_flight_rows = None, 0
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
        with self._stats_lock:  # out of the queue and into the batch in one step, as ``stats`` counts them
            try:
                for _ in range(count):
                    batch.append(queue.popleft())
            except IndexError:
                pass
            self._in_flight, self._in_flight_rows = (batch[0] if batch else None), len(batch)
        return batch

    def _write(self, batch: Sequence[ActivityEvent]) -> tuple[int, bool]:
        """Returns the rows written and whether the whole batch was dealt with (else its rest is requeued)."""
        try:
            conversions = _CONVERSIONS[self.db.dialect]
            self._insert([_bound_row(event, conversions) for event in batch])
        except Exception as error:
            if database_unavailable(error):
                self._requeue(batch, error)
                return 0, False
            # Some row cannot be stored. Find it one row at a time, so that its neighbours still go in.
            return self._write_each(batch)
        self._handled(len(batch), len(batch))
        return len(batch), True

    def _insert(self, rows: Sequence[Sequence[Any]]) -> None:
        with self.db.transaction() as cursor:
            start = 0
            for size in _chunk_sizes(len(rows)):
                cursor.execute(insert_statement(size), list(chain.from_iterable(rows[start : start + size])))
                start += size

    def _write_each(self, batch: Sequence[ActivityEvent]) -> tuple[int, bool]:
        written = 0
        for index, event in enumerate(batch):
            try:
                self._insert([_bound_row(event, _CONVERSIONS[self.db.dialect])])
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
                cursor.execute(INSERT_REJECTED, (datetime.now(UTC), kind, rejected_json(event)))
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
            self._in_flight_rows -= rows
            self._written += written
            self._last_write_at = datetime.now(UTC)
            self._progress_at = time.monotonic()
            recovered, self._failing = self._failing, False
        if recovered:
            log.info("token activity writer is writing again; %d rows queued", len(self._queue))

    def _requeue(self, rows: Sequence[ActivityEvent], error: BaseException) -> None:
        requeued = 0
        with self._stats_lock:
            for event in reversed(rows):  # back to the front, oldest first, while there is room
                if len(self._queue) >= self.capacity:
                    break
                self._queue.appendleft(event)
                requeued += 1
            self._in_flight_rows -= len(rows)
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
            depth = len(queue) + self._in_flight_rows
            oldest = self._in_flight
            if oldest is None and queue:
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
