"""The activity writer cannot be poisoned: unstorable text is escaped, unwritable rows are set aside, an
unreachable database only delays rows, and a stalled writer shows in readiness and metrics (both backends)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.activity import install_activity
from api.app import create_app
from deploy_tokens.runtime import Runtime
from infrastructure.activity import (
    ActivityEvent,
    ActivityRecorder,
    activity_rows,
    rejected_activity_rows,
)
from infrastructure.db import Database
from infrastructure.settings import DatabaseLocation

from ..conftest import T0

TEXT_COLUMNS = (
    "token_ref",
    "endpoint",
    "action",
    "resource_kind",
    "resource_ref",
    "reason",
    "client_addr",
    "user_agent",
)

# (queued text, what token_activity must hold). Spelled out here rather than computed by the code under test.
HOSTILE_TEXT = {
    "lone_surrogate": ("acme/\ud800api", "acme/\\ud800api"),
    "nul": ("acme/api\x00.git", "acme/api\\x00.git"),
    "every_c0_control": ("".join(map(chr, range(32))), "".join(f"\\x{code:02x}" for code in range(32))),
    "very_long": ("a" * 5000, "a" * 512),
    "very_long_escapes": ("\x00" * 600, "\\x00" * 128),
    # DEL, a C1 control and a bidi override are escaped; a literal backslash is doubled, so a client that
    # sends the four characters \x00 cannot pass for one that sent a NUL.
    "del_c1_bidi_backslash": ("\x7f\x85\u202e\\x00", "\\x7f\\x85\\u202e\\\\x00"),
}

UNWRITABLE_TOKEN_ID = 2**63  # one past BIGINT: OverflowError in sqlite3, NumericValueOutOfRange in PostgreSQL


def event(n: int, **changes: Any) -> ActivityEvent:
    good = ActivityEvent(
        occurred_at=T0 + timedelta(microseconds=n),
        token_id=n,
        token_ref=None,
        endpoint="check",
        action="git_read",
        resource_kind="project",
        resource_ref=f"acme/p{n}",
        allowed=True,
        reason="allowed",
        status=200,
        client_addr="198.51.100.7",
        user_agent="git/2.43.0",
    )
    return good._replace(**changes)


@pytest.fixture
def recorders(runtime: Runtime) -> Iterator[Callable[..., ActivityRecorder]]:
    """Recorders over the runtime's database (not started unless asked), closed before the runtime closes."""
    made: list[ActivityRecorder] = []

    def make(**options: Any) -> ActivityRecorder:
        recorder = ActivityRecorder(runtime.db, **options)
        made.append(recorder)
        return recorder

    yield make
    for recorder in made:
        recorder.db = runtime.db
        recorder.close()


@pytest.fixture
def unreachable(runtime: Runtime, tmp_path: Path) -> Iterator[Database]:
    """A database that takes no writes: a closed pool on PostgreSQL, a file in a vanished folder on SQLite."""
    if runtime.db.dialect == "postgresql":
        database = Database(runtime.settings.database)
        database.close()
        yield database
        return
    database = Database(DatabaseLocation("sqlite", sqlite_path=tmp_path / "gone" / "deploy-tokens.sqlite3"))
    yield database
    database.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.mark.parametrize("hostile", list(HOSTILE_TEXT))
def test_unstorable_text_in_every_column_is_written_escaped_with_its_batch(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder], hostile: str
) -> None:
    queued, stored = HOSTILE_TEXT[hostile]
    recorder = recorders(batch_size=1000)
    events = []
    for n, column in enumerate(TEXT_COLUMNS):
        events.append(event(2 * n))  # a good neighbour before each hostile row
        events.append(event(2 * n + 1, token_id=None, **{column: queued}))
    events.append(event(99))
    for queued_event in events:
        recorder.record(queued_event)

    assert recorder.flush() == len(events)

    rows = activity_rows(runtime.db, limit=100)
    assert len(rows) == len(events)
    for n, column in enumerate(TEXT_COLUMNS):
        good, escaped = rows[2 * n], rows[2 * n + 1]
        assert good.event.resource_ref == f"acme/p{2 * n}"
        assert getattr(escaped.event, column) == stored, column
    assert rows[-1].event.resource_ref == "acme/p99"
    assert recorder.stats().set_aside == 0


def test_a_row_refused_for_another_reason_is_set_aside_and_later_rows_go_in(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder]
) -> None:
    recorder = recorders(batch_size=1000)
    refused = event(2, token_id=UNWRITABLE_TOKEN_ID, resource_ref="acme/\x00refused")
    for queued_event in (event(1), refused, event(3)):
        recorder.record(queued_event)

    assert recorder.flush() == 2
    recorder.record(event(4))
    assert recorder.flush() == 1

    assert [row.event.token_id for row in activity_rows(runtime.db)] == [1, 3, 4]
    [kept] = rejected_activity_rows(runtime.db)
    expected_error = "OverflowError" if runtime.db.dialect == "sqlite" else "NumericValueOutOfRange"
    assert expected_error in kept.error
    assert kept.row["token_id"] == UNWRITABLE_TOKEN_ID
    assert kept.row["resource_ref"] == "acme/\x00refused"  # JSON escaped it; parsing gives it back
    stats = recorder.stats()
    assert (stats.set_aside, stats.depth, stats.dropped) == (1, 0, 0)


def test_set_aside_rows_are_logged_once_per_kind_and_never_hold_a_token_value(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "glpat-" + "x" * 20
    recorder = recorders(batch_size=1000)
    for n in range(3):
        recorder.record(event(n, token_id=UNWRITABLE_TOKEN_ID, user_agent=f"curl {secret}"))

    with caplog.at_level(logging.WARNING, logger="infrastructure.activity"):
        assert recorder.flush() == 0

    assert recorder.stats().set_aside == 3
    warnings = [record for record in caplog.records if "set aside" in record.getMessage()]
    assert len(warnings) == 1
    assert secret not in caplog.text
    kept = rejected_activity_rows(runtime.db)
    assert [row.row["user_agent"] for row in kept] == ["curl glpat-[REDACTED]"] * 3


def test_after_a_poison_row_the_running_writer_keeps_writing_new_rows(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder]
) -> None:
    recorder = recorders(interval=0.01)
    recorder.start()
    recorder.record(event(1, resource_ref="\ud800", client_addr="\x00"))  # the request that stopped it
    recorder.record(event(2, token_id=UNWRITABLE_TOKEN_ID))
    assert wait_until(lambda: recorder.stats().depth == 0 and recorder.stats().set_aside == 1)

    for n in range(3, 8):
        recorder.record(event(n))

    assert wait_until(lambda: len(activity_rows(runtime.db)) == 6)
    assert [row.event.token_id for row in activity_rows(runtime.db)] == [1, 3, 4, 5, 6, 7]


def test_an_unreachable_database_requeues_the_rows_and_sets_nothing_aside(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder], unreachable: Database
) -> None:
    recorder = recorders(batch_size=1000)
    recorder.db = unreachable
    for queued_event in (event(1), event(2, token_id=UNWRITABLE_TOKEN_ID), event(3)):
        recorder.record(queued_event)

    assert recorder.flush() == 0
    assert recorder.flush() == 0
    stats = recorder.stats()
    assert (stats.depth, stats.set_aside, stats.dropped) == (3, 0, 0)
    assert stats.write_errors == 2
    assert rejected_activity_rows(runtime.db) == []

    recorder.db = runtime.db  # the database is back: the good rows go in, the refused one is set aside
    assert recorder.flush() == 2
    assert [row.event.token_id for row in activity_rows(runtime.db)] == [1, 3]
    assert recorder.stats().set_aside == 1


def test_readiness_fails_while_the_writer_is_stalled_and_recovers_after_progress(
    runtime: Runtime, unreachable: Database
) -> None:
    app = create_app(runtime)
    client = app.test_client()
    recorder = install_activity(app, runtime, interval=0.02, stall_after=1.0)
    try:
        recorder.db = unreachable
        recorder.record(event(1))
        assert client.get("/-/readiness").status_code == 200  # waiting, but not for long yet

        assert wait_until(lambda: recorder.stats().stalled_for > 1.0)
        response = client.get("/-/readiness")
        assert response.status_code == 503
        body = response.get_json()
        assert body["status"] == "failed"
        assert body["checks"]["database"]["status"] == "ok"
        assert body["checks"]["activity"]["status"] == "failed"
        assert body["checks"]["activity"]["queued"] == 1

        recorder.db = runtime.db
        assert wait_until(lambda: recorder.stats().written == 1)
        response = client.get("/-/readiness")
        assert response.status_code == 200
        assert response.get_json()["checks"]["activity"]["status"] == "ok"
    finally:
        recorder.db = runtime.db
        recorder.close()


def test_metrics_show_set_aside_rows_queue_depth_and_oldest_queued_age(runtime: Runtime) -> None:
    app = create_app(runtime)
    client = app.test_client()
    recorder = install_activity(app, runtime, start=False)
    try:
        recorder.record(event(1, token_id=UNWRITABLE_TOKEN_ID))
        recorder.record(event(2))
        assert recorder.flush() == 1
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        recorder.record(event(3, occurred_at=an_hour_ago))
        recorder.record(event(4, occurred_at=an_hour_ago + timedelta(minutes=1)))

        text = client.get("/metrics").get_data(as_text=True)
    finally:
        recorder.close()
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert float(samples["deploy_tokens_activity_set_aside_total"]) == 1
    assert float(samples["deploy_tokens_activity_queue_depth"]) == 2
    assert 3600 <= float(samples["deploy_tokens_activity_oldest_queued_age_seconds"]) < 3600 + 60
    assert float(samples["deploy_tokens_activity_last_write_timestamp_seconds"]) > an_hour_ago.timestamp()
    assert "deploy_tokens_activity_stalled_seconds" in samples


@pytest.mark.parametrize("backend", ["sqlite"])  # the count is the writer's own; a file lock makes it wait
def test_rows_being_written_still_count_as_queued(
    runtime: Runtime, recorders: Callable[..., ActivityRecorder]
) -> None:
    recorder = recorders(batch_size=1000)
    for number in (1, 2, 3):
        recorder.record(event(number))
    path = runtime.settings.database.sqlite_path
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the writer's insert waits for this lock
    writing = threading.Thread(target=recorder.flush)
    writing.start()
    try:
        assert wait_until(lambda: recorder.stats().oldest_queued_age > 0 and not recorder._queue)
        time.sleep(0.1)
        assert recorder.stats().depth == 3  # out of the queue, not written: the readiness check must see them
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        writing.join(timeout=30)
    assert recorder.stats().depth == 0
    assert [row.event.token_id for row in activity_rows(runtime.db)] == [1, 2, 3]
