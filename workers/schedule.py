"""The schedule in view: when the next expiry scan runs and how the last one went (``deploy-tokens schedule``).

Every scan is recorded (``infrastructure.scan_runs``): the scan the scheduler triggers under the id of its UTC
day, the embedded server's under ``embedded-<day>``, an on-demand ``deploy-tokens expiry-scan`` under a
unique id; mail jobs add their outcomes to their scan's row.

When the next scan runs depends on the shape:

* **Production** (``DEPLOY_TOKENS_REDIS_URL``): ``rq cron`` processes (the Procfile's ``scheduler``) register
  themselves and their cron jobs in Redis with a heartbeat. Before 01:00 UTC the next scan is today's at
  01:00; once the day's scan job exists (its unique id ``expiry-scan-<day>`` blocks another), tomorrow's;
  otherwise the next tick of the 15-minute catch-up. Without a live scheduler no scan will run, and the
  status says so.
* **Embedded** (``deploy-tokens serve``): the server checks every 30 seconds and scans once per UTC day after
  01:00, remembering the day in the same table, so a restart does not scan twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal

from redis import Redis
from rq.cron import CronScheduler
from rq.exceptions import NoSuchJobError
from rq.job import Job

from deploy_tokens.runtime import Runtime
from infrastructure.scan_runs import ScanRun, ScanRuns
from workers.embedded import embedded_scan_id
from workers.jobs import SCAN_HOUR_UTC, scan_job_id

CATCH_UP = timedelta(minutes=15)
EMBEDDED_CHECK = timedelta(seconds=30)


# The names of the scan's cron jobs in workers/cron.py all begin with this.
SCAN_JOB_PREFIX = "deploy-token-expiry-"


def scan_time(day: datetime) -> datetime:
    """01:00 UTC on the UTC day of ``day``."""
    return datetime.combine(day.astimezone(UTC).date(), time(SCAN_HOUR_UTC), tzinfo=UTC)


@dataclass(frozen=True)
class CronJobInfo:
    name: str
    cron: str | None
    interval: int | None
    next_enqueue: datetime | None
    latest_enqueue: datetime | None


@dataclass(frozen=True)
class SchedulerInfo:
    name: str
    last_heartbeat: datetime | None
    jobs: tuple[CronJobInfo, ...]


@dataclass(frozen=True)
class ScheduleStatus:
    shape: Literal["scheduler", "embedded"]
    now: datetime
    next_scan: datetime | None  # None: nothing will trigger one (no scheduler is running)
    reason: str  # why the next scan is then, in words
    todays_scan_started: bool
    last_run: ScanRun | None
    last_success: ScanRun | None
    schedulers: tuple[SchedulerInfo, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "now": self.now,
            "next_scan": self.next_scan,
            "reason": self.reason,
            "todays_scan_started": self.todays_scan_started,
            "schedulers": [
                {
                    "name": scheduler.name,
                    "last_heartbeat": scheduler.last_heartbeat,
                    "jobs": [job.__dict__ for job in scheduler.jobs],
                }
                for scheduler in self.schedulers
            ],
            "last_run": None if self.last_run is None else self.last_run.as_dict(),
            "last_success": None if self.last_success is None else self.last_success.as_dict(),
        }


def next_scan_tick(schedulers: Sequence[SchedulerInfo], now: datetime) -> datetime:
    """The next tick of the scan's own cron jobs (the same schedulers trigger other daily jobs, such as
    activity retention, whose ticks enqueue no scan); at the latest a catch-up interval from now."""
    ticks = [
        job.next_enqueue
        for scheduler in schedulers
        for job in scheduler.jobs
        if job.next_enqueue is not None and job.name.startswith(SCAN_JOB_PREFIX)
    ]
    return max(min(ticks), now) if ticks else now + CATCH_UP


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None or moment == datetime.max:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def live_schedulers(connection: Redis) -> tuple[SchedulerInfo, ...]:
    """The ``rq cron`` processes whose heartbeat is current, with their registered jobs."""
    found = []
    for scheduler in CronScheduler.all(connection):
        jobs = tuple(
            CronJobInfo(
                job.name,
                job.cron,
                job.interval,
                _aware(job.next_enqueue_time),
                _aware(job.latest_enqueue_time),
            )
            for job in scheduler.get_jobs()
        )
        found.append(SchedulerInfo(scheduler.name, scheduler.last_heartbeat, jobs))
    return tuple(sorted(found, key=lambda scheduler: scheduler.name))


def _job_exists(connection: Redis, job_id: str) -> bool:
    try:
        Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    return True


def schedule_status(runtime: Runtime, now: datetime | None = None) -> ScheduleStatus:
    now = (now or datetime.now(UTC)).astimezone(UTC)
    runs = ScanRuns(runtime.db)
    last_run, last_success = runs.latest(), runs.last_success()
    today, tomorrow = scan_time(now), scan_time(now + timedelta(days=1))
    redis_url = runtime.settings.redis_url
    next_scan: datetime | None
    if redis_url is None:
        started = runs.get(embedded_scan_id(now.date()))
        todays = started is not None and started.status != "failed"
        if now < today:
            next_scan, reason = today, "the daily scan at 01:00 UTC"
        elif todays:
            next_scan, reason = tomorrow, "today's scan has run; the next is tomorrow's at 01:00 UTC"
        else:
            next_scan = now + EMBEDDED_CHECK
            reason = "today's scan has not run yet: within 30 seconds while `deploy-tokens serve` runs"
        return ScheduleStatus("embedded", now, next_scan, reason, todays, last_run, last_success)

    connection = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    try:
        schedulers = live_schedulers(connection)
        todays = _job_exists(connection, scan_job_id(now))
    finally:
        connection.close()
    if not schedulers:
        next_scan = None
        reason = "no scheduler is running: start the `scheduler` process (rq cron) or no scan will run"
    elif now < today:
        next_scan, reason = today, "the daily scan at 01:00 UTC"
    elif todays:
        next_scan, reason = tomorrow, "today's scan has been enqueued; the next is tomorrow's at 01:00 UTC"
    else:
        next_scan = next_scan_tick(schedulers, now)
        reason = "today's scan has not run yet: the scheduler's next catch-up tick enqueues it"
    return ScheduleStatus("scheduler", now, next_scan, reason, todays, last_run, last_success, schedulers)
