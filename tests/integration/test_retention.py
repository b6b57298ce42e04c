"""Activity retention with evidence (behaviour [retention]): archive, record, then delete exactly the archived
rows; a crash at any step leaves the rows or a verified, recorded archive, and the next run finishes the job."""

from __future__ import annotations

import hashlib
import json
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from deploy_tokens.retention import ArchiveMismatch, Step, archive_file_name
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock
from domain.retention import RETENTION_ID, ActivityRetention
from infrastructure.activity import ActivityEvent, retention_lock
from infrastructure.settings import Settings
from projections.audit_queries import AuditQuery, audit_events
from projections.chain_queries import verify

DAYS = 30
NOW = datetime(2026, 3, 1, 6, 30, 15, 123456, tzinfo=UTC)
CUTOFF = datetime(2026, 1, 30, 6, 30, 15, tzinfo=UTC)  # NOW - 30 days, to the second
ACTOR = Actor.system("retention-test")
STEPS: list[Step] = ["archive-written", "recorded", "batch-deleted", "rows-deleted"]


class Crash(Exception):
    """Raised from the step hook: the process stops there."""


def crash_at(step: Step) -> Callable[[Step], None]:
    def hook(reached: Step) -> None:
        if reached == step:
            raise Crash(step)

    return hook


@pytest.fixture
def retained(settings: Settings) -> Settings:
    return replace(settings, activity_retention_days=DAYS)


@pytest.fixture
def opened(retained: Settings, clock: FixedClock) -> Iterator[Callable[[], Runtime]]:
    """Opens runtimes on the store, as successive processes would; all closed at the end."""
    runtimes: list[Runtime] = []

    def open_runtime() -> Runtime:
        runtimes.append(Runtime.open(retained, clock=clock))
        return runtimes[-1]

    yield open_runtime
    for runtime in runtimes:
        runtime.close()


def _event(at: datetime, number: int) -> ActivityEvent:
    return ActivityEvent(
        occurred_at=at,
        token_id=number,
        token_ref=None,
        endpoint="check",
        action="git_read",
        resource_kind="project",
        resource_ref="acme/api",
        allowed=bool(number % 2),
        reason="allowed" if number % 2 else "revoked",
        status=200,
        client_addr="192.0.2.7",
        user_agent=f"git/2.{number}",
    )


def _record(runtime: Runtime, moments: list[datetime]) -> None:
    for number, moment in enumerate(moments):
        runtime.activity.record(_event(moment, number))
    runtime.activity.flush()


def _set_aside(runtime: Runtime, moments: list[datetime]) -> None:
    with runtime.db.transaction() as cursor:
        for moment in moments:
            cursor.execute(
                "INSERT INTO token_activity_rejected (set_aside_at, error, row_json) VALUES (?, ?, ?)",
                [moment, "ValueError", json.dumps({"user_agent": "\\x00"})],
            )


OLD = [CUTOFF - timedelta(days=20, hours=hour) for hour in range(7)] + [CUTOFF - timedelta(microseconds=1)]
RECENT = [CUTOFF, CUTOFF + timedelta(days=3), NOW - timedelta(minutes=1)]


def _seed(runtime: Runtime) -> None:
    """Old and recent rows interleaved by id (writers do not insert in time order)."""
    _record(runtime, [*OLD[:4], RECENT[0], *OLD[4:], *RECENT[1:]])
    _set_aside(runtime, [CUTOFF - timedelta(days=1), NOW])


def _ids(runtime: Runtime, table: str, time_column: str) -> dict[int, datetime]:
    with runtime.db.read() as cursor:
        rows = cursor.execute(f"SELECT id, {time_column} FROM {table} ORDER BY id").fetchall()
    return {int(row[0]): row[1] for row in rows}


def _activity_ids(runtime: Runtime) -> set[int]:
    return set(_ids(runtime, "token_activity", "occurred_at"))


def _rejected_ids(runtime: Runtime) -> set[int]:
    return set(_ids(runtime, "token_activity_rejected", "set_aside_at"))


def _recorded(runtime: Runtime) -> list[Any]:
    return list(runtime.store.events.get(RETENTION_ID))


def _archives(runtime: Runtime) -> list[dict[str, Any]]:
    return [
        manifest
        for event in _recorded(runtime)
        if isinstance(event, ActivityRetention.Archived)
        for manifest in event.manifests
    ]


def _archived_ids(folder: Path, manifest: dict[str, Any]) -> set[int]:
    """The ids in an archive file, after checking the file against the manifest recorded in the log."""
    content = (folder / manifest["file"]).read_bytes()
    assert hashlib.sha256(content).hexdigest() == manifest["sha256"]
    assert len(content) == manifest["bytes"]
    lines = [json.loads(line) for line in content.decode().splitlines()]
    assert len(lines) == manifest["rows"]
    return {line["id"] for line in lines}


def _chain_ok(runtime: Runtime) -> bool:
    runtime.projector.catch_up()
    return verify(runtime.db, runtime.store.recorder.select_notifications, runtime.keys.chain_key).ok


def _old_and_recent(runtime: Runtime) -> tuple[set[int], set[int]]:
    rows = _ids(runtime, "token_activity", "occurred_at")
    old = {row_id for row_id, moment in rows.items() if _instant(moment) < CUTOFF}
    return old, set(rows) - old


def _instant(value: Any) -> datetime:
    return value.astimezone(UTC) if isinstance(value, datetime) else datetime.fromisoformat(value)


def test_old_rows_are_archived_recorded_then_deleted(opened: Callable[[], Runtime]) -> None:
    runtime = opened()
    _seed(runtime)
    old, recent = _old_and_recent(runtime)
    old_rejected, recent_rejected = (
        set(sorted(_rejected_ids(runtime))[:1]),
        set(sorted(_rejected_ids(runtime))[1:]),
    )
    assert len(old) == len(OLD) and len(recent) == len(RECENT)

    report = runtime.activity_retention().apply(ACTOR, now=NOW)

    assert report.status == "archived" and report.cutoff == CUTOFF
    assert report.deleted == {"token_activity": len(OLD), "token_activity_rejected": 1}
    assert _activity_ids(runtime) == recent and _rejected_ids(runtime) == recent_rejected
    events = _recorded(runtime)
    assert [type(event).__name__ for event in events] == ["Created", "Archived", "ArchivedRowsDeleted"]
    assert events[1].cutoff == CUTOFF and events[1].actor["username"] == "retention-test"
    folder = runtime.settings.activity_archive_dir
    usage, set_aside = events[1].manifests
    assert (
        usage["file"]
        == archive_file_name("token_activity", CUTOFF)
        == "token_activity-before-20260130T063015Z.jsonl"
    )
    assert (usage["dataset"], set_aside["dataset"]) == ("usage", "usage_set_aside")
    assert _archived_ids(folder, usage) == old and _archived_ids(folder, set_aside) == old_rejected
    assert (usage["first_id"], usage["last_id"]) == (min(old), max(old))
    # The manifest beside each file is the one recorded in the log.
    assert json.loads((folder / usage["manifest_file"]).read_text()) == usage
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {
        stat.S_IMODE((folder / m[key]).stat().st_mode)
        for m in (usage, set_aside)
        for key in ("file", "manifest_file")
    } == {0o600}
    assert _chain_ok(runtime)
    # The audit trail shows both steps, with each file's count and hash (an auditor checks a file from it).
    trail = audit_events(runtime.db, AuditQuery(namespace_kind="instance", limit=None))
    archived, deleted = [row for row in trail if row.target_type == "ActivityRetention"]
    assert (archived.event_type, deleted.event_type) == ("activity_archived", "activity_archive_rows_deleted")
    assert archived.message == (
        f"Archived {len(OLD) + 1} activity rows older than 2026-01-30T06:30:15Z to "
        f"{usage['file']} ({len(OLD)} activity rows, SHA-256 {usage['sha256']}); "
        f"{set_aside['file']} (1 activity row, SHA-256 {set_aside['sha256']})."
    )
    assert [m["sha256"] for m in archived.details["manifests"]] == [
        usage["sha256"],
        set_aside["sha256"],
    ]
    assert (
        deleted.message
        == f"Deleted {len(OLD) + 1} activity rows archived as older than 2026-01-30T06:30:15Z."
    )
    assert archived.actor_username == "retention-test"

    # Again: nothing is older than the window any more, so nothing is recorded.
    head = runtime.store.head()
    again = runtime.activity_retention().apply(ACTOR, now=NOW)
    assert (again.status, again.manifests) == ("nothing-to-archive", [])
    assert runtime.store.head() == head and _activity_ids(runtime) == recent


def test_nothing_older_than_the_window_records_nothing_and_off_does_nothing(
    opened: Callable[[], Runtime], settings: Settings, clock: FixedClock
) -> None:
    runtime = opened()
    _record(runtime, RECENT)
    head = runtime.store.head()
    assert runtime.activity_retention().apply(ACTOR, now=NOW).status == "nothing-to-archive"
    assert runtime.store.head() == head and _recorded(runtime) == []
    with Runtime.open(settings, clock=clock) as unset:  # DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS unset
        assert unset.activity_retention().apply(ACTOR, now=NOW + timedelta(days=3650)).status == "off"
        assert len(_activity_ids(unset)) == len(RECENT) and unset.store.head() == head


def test_the_clock_decides_the_cut_off(opened: Callable[[], Runtime], clock: FixedClock) -> None:
    runtime = opened()
    _seed(runtime)
    clock.set(NOW + timedelta(days=10))  # every seeded activity row but the last is now older than the window
    report = runtime.activity_retention().apply(ACTOR)
    assert report.cutoff == CUTOFF + timedelta(days=10)
    assert len(_activity_ids(runtime)) == 1
    assert _recorded(runtime)[1].timestamp == NOW + timedelta(days=10)


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_leaves_rows_or_a_verified_recorded_archive(
    opened: Callable[[], Runtime], step: Step
) -> None:
    runtime = opened()
    _seed(runtime)
    old, recent = _old_and_recent(runtime)
    folder = runtime.settings.activity_archive_dir

    with pytest.raises(Crash):
        runtime.activity_retention(step=crash_at(step), delete_batch=3).apply(ACTOR, now=NOW)

    archives = _archives(runtime)
    left = _activity_ids(runtime)
    if step == "archive-written":
        assert archives == [] and left == old | recent  # written, not recorded: nothing deleted
    else:
        usage = archives[0]
        assert _archived_ids(folder, usage) == old  # recorded, and the file matches the record
        assert left == recent | (
            old - {*sorted(old)[: {"recorded": 0, "batch-deleted": 3}.get(step, len(old))]}
        )
    assert _chain_ok(runtime)

    # A later process runs again: it finishes what was recorded, and the rows end up archived once, then gone.
    rerun = opened()
    report = rerun.activity_retention().apply(ACTOR, now=NOW)
    assert report.resumed == (step != "archive-written")
    assert _activity_ids(rerun) == recent and len(_rejected_ids(rerun)) == 1
    archives = _archives(rerun)
    assert len(archives) == 2  # one of each table
    assert _archived_ids(folder, archives[0]) == old
    kinds = [type(event).__name__ for event in _recorded(rerun)]
    assert kinds == ["Created", "Archived", "ArchivedRowsDeleted"]
    assert sorted(path.name for path in folder.iterdir() if not path.name.startswith(".")) == sorted(
        name for manifest in archives for name in (manifest["file"], manifest["manifest_file"])
    )
    assert _chain_ok(rerun)


def test_rows_written_after_the_archive_are_never_deleted_unarchived(opened: Callable[[], Runtime]) -> None:
    """A row arriving late with an old timestamp (a writer that held it through an outage) is not in the
    archive being finished; the same run archives it on its own, then deletes it."""
    runtime = opened()
    _seed(runtime)
    old, recent = _old_and_recent(runtime)
    with pytest.raises(Crash):
        runtime.activity_retention(step=crash_at("recorded")).apply(ACTOR, now=NOW)
    _record(runtime, [CUTOFF - timedelta(days=2)])
    (late,) = _activity_ids(runtime) - old - recent
    _record(runtime, [NOW - timedelta(seconds=5)])  # and a newer one (SQLite keeps the newest row)
    recent = _activity_ids(runtime) - old - {late}

    rerun = opened()
    report = rerun.activity_retention().apply(ACTOR, now=NOW)

    folder = rerun.settings.activity_archive_dir
    first, _, second = _archives(rerun)
    assert _archived_ids(folder, first) == old and _archived_ids(folder, second) == {late}
    assert second["file"] == "token_activity-before-20260130T063015Z-2.jsonl"
    assert report.deleted["token_activity"] == len(old) + 1
    assert _activity_ids(rerun) == recent
    assert _chain_ok(rerun)


def test_a_damaged_archive_is_rewritten_from_its_rows_before_they_go(opened: Callable[[], Runtime]) -> None:
    runtime = opened()
    _seed(runtime)
    old, recent = _old_and_recent(runtime)
    with pytest.raises(Crash):
        runtime.activity_retention(step=crash_at("recorded")).apply(ACTOR, now=NOW)
    usage = _archives(runtime)[0]
    path = runtime.settings.activity_archive_dir / usage["file"]
    path.write_bytes(path.read_bytes().replace(b"git/2.", b"git/3."))

    opened().activity_retention().apply(ACTOR, now=NOW)

    assert _archived_ids(path.parent, usage) == old  # the same bytes as recorded
    assert _activity_ids(runtime) == recent


def test_a_damaged_archive_whose_rows_are_partly_gone_stops_the_deletion(
    opened: Callable[[], Runtime],
) -> None:
    runtime = opened()
    _seed(runtime)
    with pytest.raises(Crash):
        runtime.activity_retention(step=crash_at("batch-deleted"), delete_batch=3).apply(ACTOR, now=NOW)
    left = _activity_ids(runtime)
    usage = _archives(runtime)[0]
    (runtime.settings.activity_archive_dir / usage["file"]).unlink()

    with pytest.raises(ArchiveMismatch, match="no row was deleted"):
        opened().activity_retention().apply(ACTOR, now=NOW)

    assert _activity_ids(runtime) == left
    assert [type(event).__name__ for event in _recorded(runtime)] == ["Created", "Archived"]


def test_an_unrecorded_archive_of_an_earlier_run_is_replaced(opened: Callable[[], Runtime]) -> None:
    runtime = opened()
    _seed(runtime)
    with pytest.raises(Crash):
        runtime.activity_retention(step=crash_at("archive-written")).apply(ACTOR, now=NOW)
    folder = runtime.settings.activity_archive_dir
    stale = folder / archive_file_name("token_activity", CUTOFF)
    assert stale.exists()

    later = NOW + timedelta(days=4)  # every recent row but the last is now older than the window
    report = opened().activity_retention().apply(ACTOR, now=later)

    assert not stale.exists() and stale.name in report.removed_unrecorded
    usage = _archives(runtime)[0]
    assert usage["file"] == archive_file_name("token_activity", CUTOFF + timedelta(days=4))
    assert len(_archived_ids(folder, usage)) == len(OLD) + 2
    assert len(_activity_ids(runtime)) == 1


def test_runs_take_turns(opened: Callable[[], Runtime]) -> None:
    runtime = opened()
    _seed(runtime)
    folder = runtime.settings.activity_archive_dir
    folder.mkdir(mode=0o700, parents=True)
    with retention_lock(runtime.settings.database, folder) as held:
        assert held
        assert runtime.activity_retention().apply(ACTOR, now=NOW).status == "busy"
        assert Counter(type(e).__name__ for e in _recorded(runtime)) == Counter()
    assert runtime.activity_retention().apply(ACTOR, now=NOW).status == "archived"


def test_the_newest_row_stays_so_that_no_id_is_ever_given_again(opened: Callable[[], Runtime]) -> None:
    """Every row older than the window: on SQLite (ids are max(id) + 1) the newest stays until a newer one
    exists, so the next row's id is above every id a reader has seen; PostgreSQL's ids are never reused."""
    runtime = opened()
    _record(runtime, OLD)
    ids = _activity_ids(runtime)
    runtime.activity_retention().apply(ACTOR, now=NOW)
    kept = _activity_ids(runtime)
    assert kept == ({max(ids)} if runtime.db.dialect == "sqlite" else set())
    _record(runtime, [NOW])
    (new,) = _activity_ids(runtime) - kept
    assert new > max(ids)
    if runtime.db.dialect == "sqlite":  # the next run, with a newer row there, archives the one kept
        runtime.activity_retention().apply(ACTOR, now=NOW + timedelta(days=1))
        assert _activity_ids(runtime) == {new}
