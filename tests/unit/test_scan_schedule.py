"""When the next expiry scan runs, from the ticks of the schedulers' cron jobs (``deploy-tokens schedule``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from workers.schedule import CATCH_UP, CronJobInfo, SchedulerInfo, next_scan_tick

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def scheduler(*jobs: tuple[str, datetime | None]) -> SchedulerInfo:
    return SchedulerInfo(
        "cron-1", NOW, tuple(CronJobInfo(name, None, 900, tick, None) for name, tick in jobs)
    )


def test_the_next_scan_is_the_scans_own_catch_up_tick_not_another_daily_jobs() -> None:
    scan_tick, retention_tick = NOW + timedelta(minutes=12), NOW + timedelta(minutes=3)
    schedulers = [
        scheduler(
            ("deploy-token-expiry-catch-up", scan_tick),
            ("activity-retention-catch-up", retention_tick),
        )
    ]
    assert next_scan_tick(schedulers, NOW) == scan_tick


def test_the_earliest_scan_tick_of_all_schedulers_and_never_in_the_past() -> None:
    schedulers = [
        scheduler(("deploy-token-expiry-catch-up", NOW + timedelta(minutes=9))),
        scheduler(("deploy-token-expiry-catch-up", NOW - timedelta(seconds=5))),
    ]
    assert next_scan_tick(schedulers, NOW) == NOW


def test_without_a_scan_tick_a_catch_up_interval_from_now() -> None:
    schedulers = [scheduler(("activity-retention-catch-up", NOW + timedelta(minutes=1)))]
    assert next_scan_tick(schedulers, NOW) == NOW + CATCH_UP
