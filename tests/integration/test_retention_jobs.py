"""Activity retention's ways in (behaviour [retention]): the daily RQ job (one a day, whatever the ticks), the
embedded scheduler, ``deploy-tokens retention apply --now``, a process killed mid-run, and concurrent inserts on
PostgreSQL that the archive must not miss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from cli.main import main
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from infrastructure.settings import DatabaseLocation, Settings
from workers.embedded import EmbeddedScheduler
from workers.jobs import QUEUE, trigger_daily_retention

from ..conftest import POSTGRES_ONLY, POSTGRES_URL, TEST_SECRET
from .conftest import job_environment, reset_job_runtime
from .test_retention import (
    ACTOR,
    CUTOFF,
    NOW,
    OLD,
    RECENT,
    Crash,
    _activity_ids,
    _archived_ids,
    _archives,
    _chain_ok,
    _old_and_recent,
    _record,
    _recorded,
    _seed,
    crash_at,
)

ROOT = Path(__file__).resolve().parents[2]


def _environment(settings: Settings, **extra: str) -> dict[str, str]:
    """What a process reads to open ``settings``' store, with retention on."""
    env = {
        "DEPLOY_TOKENS_DATA_DIR": str(settings.data_dir),
        "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
        "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS": "30",
        **extra,
    }
    if settings.database.dialect == "postgresql":
        env["DEPLOY_TOKENS_DATABASE_URL"] = f"{POSTGRES_URL}?schema={settings.database.schema}"
    return env


# The daily job ---------------------------------------------------------------------------------------------


@pytest.fixture
def retention_env(
    redis: Redis, postgres_schema: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Queue]:
    for name, value in job_environment(postgres_schema, tmp_path / "jobs", "smtp://127.0.0.1:9").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS", "30")
    reset_job_runtime()
    yield Queue(QUEUE, connection=redis)
    reset_job_runtime()


def test_the_daily_job_is_enqueued_once_a_day_from_0200_and_archives(
    retention_env: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = datetime(2026, 3, 5, tzinfo=UTC)
    assert trigger_daily_retention(now=day + timedelta(hours=1, minutes=59)) is None  # too early
    assert trigger_daily_retention(now=day + timedelta(hours=2)) == "20260305"
    assert trigger_daily_retention(now=day + timedelta(hours=2, minutes=15)) is None  # catch-up tick
    assert trigger_daily_retention(now=day + timedelta(hours=23, minutes=59)) is None  # another scheduler
    assert retention_env.job_ids == ["activity-retention-20260305"]

    # The job runs on the worker's clock: rows older than 30 days before now are archived, then deleted.
    now = datetime.now(UTC)
    with Runtime.open(Settings.from_env()) as runtime:
        _record(runtime, [now - timedelta(days=31), now - timedelta(days=40), now - timedelta(days=29)])
        kept = max(_activity_ids(runtime))  # 29 days old
    SimpleWorker([retention_env], connection=retention_env.connection).work(burst=True)
    job = Job.fetch("activity-retention-20260305", connection=retention_env.connection)
    assert job.get_status() == JobStatus.FINISHED
    result = job.return_value()
    assert result["status"] == "archived" and result["deleted"] == {"token_activity": 2}
    with Runtime.open(Settings.from_env()) as runtime:
        assert _activity_ids(runtime) == {kept}
        assert _recorded(runtime)[1].actor["username"] == "activity-retention"

    monkeypatch.delenv("DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS")  # off: the trigger enqueues nothing
    assert trigger_daily_retention(now=day + timedelta(days=1, hours=3)) is None


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_embedded_scheduler_runs_retention_once_a_day_from_0200(settings: Settings) -> None:
    clock = FixedClock(NOW.replace(hour=1, minute=59))
    with Runtime.open(replace(settings, activity_retention_days=30), clock=clock) as runtime:
        _seed(runtime)
        scheduler = EmbeddedScheduler(runtime)
        assert not scheduler.retention_tick()  # 01:59: not yet
        clock.set(NOW.replace(hour=2, minute=0))
        assert scheduler.retention_tick()
        _record(runtime, [CUTOFF - timedelta(days=1)])  # late, and old
        assert not scheduler.retention_tick()  # once a day
        restarted = EmbeddedScheduler(runtime)  # a restart the same day: the day's archive is recorded
        assert not restarted.retention_tick()
        assert len(_archives(runtime)) == 2
        clock.set(NOW.replace(hour=2) + timedelta(days=1))
        assert restarted.retention_tick()  # the next day picks it up
        assert len(_archives(runtime)) == 3
    with Runtime.open(settings, clock=clock) as unset:
        assert not EmbeddedScheduler(unset).retention_tick()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_restart_after_a_run_stopped_half_way_finishes_it_the_same_day(settings: Settings) -> None:
    clock = FixedClock(NOW)  # 06:30, past 02:00
    with Runtime.open(replace(settings, activity_retention_days=30), clock=clock) as runtime:
        _seed(runtime)
        old, recent = _old_and_recent(runtime)
        with pytest.raises(Crash):
            runtime.activity_retention(step=crash_at("recorded")).apply(ACTOR)
        assert _activity_ids(runtime) == old | recent
        assert EmbeddedScheduler(runtime).retention_tick()
        assert _activity_ids(runtime) == recent


# The command -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_command_archives_as_of_now_and_the_log_still_verifies(
    settings: Settings, clock: FixedClock, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Runtime.open(settings, clock=clock) as runtime:
        _seed(runtime)
        old, recent = _old_and_recent(runtime)
    for name, value in _environment(settings).items():
        monkeypatch.setenv(name, value)

    assert main(["retention", "apply", "--now", "2026-03-01T06:30:15Z", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "archived" and report["cutoff"] == "2026-01-30T06:30:15.000000+00:00"
    assert main(["retention", "apply", "--now", "2026-03-01T06:30:15Z"]) == 0
    assert "Nothing older than the window" in capsys.readouterr().out
    assert main(["audit", "verify"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    with Runtime.open(settings, clock=clock) as runtime:
        assert _activity_ids(runtime) == recent
        assert _archived_ids(runtime.settings.activity_archive_dir, _archives(runtime)[0]) == old

    monkeypatch.delenv("DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS")
    assert main(["retention", "apply"]) == 0
    assert "Retention is off" in capsys.readouterr().out


@pytest.mark.parametrize(
    "now",
    [
        "2026-13-01T00:00:00Z",
        "2026-03-01\x00",
        "\udcff",
        "9" * 5000,
        "yesterday",
        "2026-03-01T06:30:15+99:00",
        "9999-12-31T23:59:59-01:00",  # no such instant in UTC
        "0001-01-01T00:00:00+01:00",
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_malformed_now_is_refused_and_changes_nothing(
    settings: Settings, now: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Runtime.open(settings) as runtime:
        _record(runtime, OLD)
        head = runtime.store.head()
    for name, value in _environment(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["retention", "apply", "--now", now]) == 2
    assert "--now must be an ISO 8601 instant" in capsys.readouterr().err
    with Runtime.open(settings) as runtime:
        assert len(_activity_ids(runtime)) == len(OLD) and runtime.store.head() == head


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS must be a whole number, 1 to 36500"),
        ("-3", "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS must be a whole number, 1 to 36500"),
        ("36501", "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS must be a whole number, 1 to 36500"),
        ("30.5", "DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS must be a whole number, 1 to 36500"),
    ],
)
@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_malformed_retention_setting_stops_the_command(
    settings: Settings,
    value: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    Runtime.open(settings).close()  # the store exists
    for name, setting in _environment(settings, DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS=value).items():
        monkeypatch.setenv(name, setting)
    assert main(["retention", "apply"]) == 2
    assert f"configuration error: {message}" in capsys.readouterr().err


# A process killed mid-run ------------------------------------------------------------------------------------

_KILLED_RUN = """
import os, signal, sys
from datetime import datetime
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from infrastructure.settings import Settings

def hook(step):
    if step == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)

runtime = Runtime.open(Settings.from_env())
now = datetime.fromisoformat(sys.argv[2])
runtime.activity_retention(step=hook, delete_batch=3).apply(Actor.system("killed"), now=now)
"""


def test_a_run_killed_while_deleting_is_finished_by_the_next(settings: Settings, clock: FixedClock) -> None:
    with Runtime.open(settings, clock=clock) as runtime:
        _seed(runtime)
        old, recent = _old_and_recent(runtime)
    env = {**os.environ, **_environment(settings)}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, "batch-deleted", NOW.isoformat()],
        env=env,
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    with Runtime.open(replace(settings, activity_retention_days=30), clock=clock) as runtime:
        assert _activity_ids(runtime) == recent | set(sorted(old)[3:])  # one batch went before the kill
        report = runtime.activity_retention().apply(ACTOR, now=NOW)  # the killed run's lock is gone
        assert report.resumed and report.deleted["token_activity"] == len(old) - 3  # by this run
        # The record counts every archived row gone, those the killed run deleted too.
        assert _recorded(runtime)[-1].deleted == {"token_activity": len(old), "token_activity_rejected": 1}
        assert _activity_ids(runtime) == recent
        assert _archived_ids(runtime.settings.activity_archive_dir, _archives(runtime)[0]) == old
        assert _chain_ok(runtime)


# PostgreSQL: an insert still open when the run starts ------------------------------------------------------


@POSTGRES_ONLY
def test_an_old_row_inserted_but_not_committed_is_archived_not_lost(
    settings: Settings, clock: FixedClock
) -> None:
    """Writer A draws an id and has not committed when writer B commits a higher one: the run must wait for A,
    or it would archive B's row and then delete A's (inside the archived id range) unarchived."""
    location = DatabaseLocation.parse(f"{POSTGRES_URL}?schema={settings.database.schema}")
    with Runtime.open(replace(settings, activity_retention_days=30), clock=clock) as runtime:
        _record(runtime, [*RECENT, CUTOFF - timedelta(days=6)])
        before = max(_activity_ids(runtime))
        with psycopg.connect(location.conninfo(), autocommit=False) as writer_a:
            writer_a.execute(f'SET search_path TO "{location.schema}"')
            (a_id,) = writer_a.execute(
                "INSERT INTO token_activity (occurred_at, endpoint, action, allowed, reason, status) "
                "VALUES (%s, 'check', 'git_read', false, 'unknown', 401) RETURNING id",
                (CUTOFF - timedelta(days=5),),
            ).fetchone()
            _record(runtime, [CUTOFF - timedelta(days=4)])  # writer B, committed
            b_id = max(_activity_ids(runtime))
            assert b_id > a_id
            done: list[object] = []
            run = threading.Thread(
                target=lambda: done.append(runtime.activity_retention().apply(ACTOR, now=NOW))
            )
            run.start()
            time.sleep(0.3)  # the run is waiting for writer A
            assert not done
            writer_a.commit()
        run.join(timeout=30)
        usage = _archives(runtime)[0]
        assert _archived_ids(runtime.settings.activity_archive_dir, usage) == {before, a_id, b_id}
        assert len(_activity_ids(runtime)) == len(RECENT)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_now_too_early_for_the_window_is_refused_and_changes_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Runtime.open(settings) as runtime:
        _record(runtime, OLD)
        head = runtime.store.head()
    for name, value in _environment(settings).items():
        monkeypatch.setenv(name, value)
    assert main(["retention", "apply", "--now", "0001-01-02T00:00:00Z"]) == 1
    assert "Now is too early for a window of" in capsys.readouterr().err
    with Runtime.open(settings) as runtime:
        assert len(_activity_ids(runtime)) == len(OLD) and runtime.store.head() == head
