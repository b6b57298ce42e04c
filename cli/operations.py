"""The production shape's processes and the schedule in view: ``projector``, ``worker``, ``scheduler`` (the
``Procfile``'s lines beside ``web``), ``expiry-scan`` (on demand) and ``schedule`` (when the next scan runs,
how the last one went)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from cli.output import operator, print_json
from deploy_tokens.runtime import Runtime
from infrastructure.scan_runs import ScanRun
from infrastructure.settings import ConfigurationError, Settings

CRON_CONFIG = "workers.cron"


def _require_redis(settings: Settings, process: str) -> str:
    if settings.redis_url is None:
        raise ConfigurationError(
            f"DEPLOY_TOKENS_REDIS_URL is required by the {process} (redis://host:6379/0); without it the "
            "embedded default runs the scan in-process (deploy-tokens serve)"
        )
    return settings.redis_url


def cmd_audit_streamer(runtime: Runtime, args: argparse.Namespace) -> int:
    """The audit streamer of the production shape (behaviour [audit-streaming]): delivers the audit trail to
    every streaming destination until SIGTERM or SIGINT."""
    from workers.audit_streamer import run_process

    print("audit-streamer: delivering audit events to the streaming destinations", file=sys.stderr)
    run_process(runtime)
    return 0


def cmd_projector(runtime: Runtime, args: argparse.Namespace) -> int:
    """The projector process of the production shape: follows the log until SIGTERM or SIGINT."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print("projector: following the event log", file=sys.stderr)
    runtime.projector.run_forever(stop)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """The RQ worker of the production shape: expiry scans and mails (each job in a forked work-horse), with
    RQ's scheduler, which puts retried mails back on the queue."""
    from redis import Redis
    from rq import Queue, Worker

    from workers.jobs import QUEUE

    connection = Redis.from_url(_require_redis(settings, "worker"))
    worker = Worker([Queue(QUEUE, connection=connection)], connection=connection)
    worker.work(with_scheduler=True, logging_level=settings.log_level)
    return 0


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    """``rq cron`` with the service's schedule (``workers/cron.py``): triggers the daily expiry scan."""
    from redis import Redis
    from rq.cron import CronScheduler

    connection = Redis.from_url(_require_redis(settings, "scheduler"))
    scheduler = CronScheduler(connection=connection, logging_level=settings.log_level)
    scheduler.load_config_from_file(CRON_CONFIG)
    scheduler.start()  # type: ignore[no-untyped-call]
    return 0


def cmd_expiry_scan(runtime: Runtime, args: argparse.Namespace) -> int:
    """Records expiries and sends due emails in this process (even when Redis is configured)."""
    from workers.jobs import run_inline_scan

    report, outcomes = run_inline_scan(runtime, source="cli")
    print_json(
        {
            **report.as_dict(),
            "now": runtime.clock.now(),
            "emails": [
                {"token_id": token_id, "interval": interval, "outcome": outcome}
                for token_id, interval, outcome in outcomes
            ],
        }
    )
    return 0


# deploy-tokens retention apply -----------------------------------------------------------------------------


def cmd_retention_apply(runtime: Runtime, args: argparse.Namespace) -> int:
    """Archive the activity older than the retention window, record the archive, then delete its rows."""
    report = runtime.activity_retention().apply(operator())
    if args.json:
        print_json(report.as_dict())
        return 1 if report.status == "busy" else 0
    if report.status == "off":
        print("Retention is off (DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS is unset): activity is kept forever.")
        return 0
    if report.status == "busy":
        print("Another retention run holds the lock: nothing done.")
        return 1
    assert report.cutoff is not None
    print(f"Cut-off:  {report.cutoff.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC")
    if report.resumed:
        print("Finished an earlier run's recorded archive first.")
    if not report.manifests:
        print("Nothing older than the window: nothing archived, nothing recorded.")
    folder = runtime.settings.activity_archive_dir
    for manifest in report.manifests:
        print(f"Archived: {manifest['rows']} rows of {manifest['table']} to {folder / manifest['file']}")
        print(f"          SHA-256 {manifest['sha256']}, ids {manifest['first_id']} to {manifest['last_id']}")
    for table, deleted in report.deleted.items():
        print(f"Deleted:  {deleted} rows of {table}")
    for name in report.removed_unrecorded:
        print(f"Removed:  {folder / name} (written by a run that recorded nothing)")
    return 0


def cmd_retention_history(runtime: Runtime, args: argparse.Namespace) -> int:
    """The recorded archives and deletions, for checking archive files against the log."""
    print_json(runtime.activity_retention().recorded_events())
    return 0


# deploy-tokens schedule ------------------------------------------------------------------------------------


def _when(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    delta = (moment - now).total_seconds()
    minutes = int(abs(delta) // 60)
    span = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    if abs(delta) < 60:
        span = f"{int(abs(delta))} s"
    relative = f"in {span}" if delta >= 0 else f"{span} ago"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _run_lines(run: ScanRun, now: datetime) -> list[str]:
    took = ""
    if run.finished_at is not None:
        took = f" in {(run.finished_at - run.started_at).total_seconds():.1f} s"
    attempts = f", attempt {run.attempts}" if run.attempts > 1 else ""
    lines = [
        f"{_when(run.started_at, now)}, {run.source} scan {run.scan_id}: {run.status}{took}{attempts}",
        f"tokens examined {run.examined}, expired {run.expired}",
        f"mails due {run.mails_due}: sent {run.mails_sent}, no one to mail {run.mails_no_recipients}, "
        f"not needed {run.mails_other}, failed attempts {run.mail_failures}",
    ]
    if run.error:
        lines.append(f"error: {run.error}")
    if run.mails_no_recipients:
        lines.append("(mails go to a project's Owners and Maintainers: `deploy-tokens projects members add`)")
    return lines


def cmd_schedule(runtime: Runtime, args: argparse.Namespace) -> int:
    """When the next expiry scan runs, which schedulers are alive, and the last scan's outcome."""
    from workers.schedule import schedule_status

    status = schedule_status(runtime)
    if args.json:
        print_json(status.as_dict())
        return 0
    now = status.now
    print("Expiry scan: daily at 01:00 UTC, caught up within 15 minutes if that time was missed")
    print(f"Next scan:   {_when(status.next_scan, now) if status.next_scan else 'none'} - {status.reason}")
    if status.shape == "embedded":
        print("Scheduler:   in-process (deploy-tokens serve; no DEPLOY_TOKENS_REDIS_URL)")
    else:
        print(f"Schedulers:  {len(status.schedulers)} running (rq cron)")
        for scheduler in status.schedulers:
            print(f"  {scheduler.name}, last heartbeat {_when(scheduler.last_heartbeat, now)}")
            for job in scheduler.jobs:
                every = job.cron if job.cron else f"every {job.interval} s"
                print(f"    {job.name} ({every}): next {_when(job.next_enqueue, now)}")
    lines = ["none recorded"] if status.last_run is None else _run_lines(status.last_run, now)
    print(f"Last scan:   {lines[0]}")
    for line in lines[1:]:
        print(f"             {line}")
    success = status.last_success
    print(f"Last success: {_when(success.finished_at, now) if success else 'none recorded'}")
    return 1 if status.next_scan is None else 0


def add_parsers(commands: Any) -> None:
    projector = commands.add_parser("projector", help="follow the event log and keep the read models current")
    projector.set_defaults(handler=cmd_projector)
    streamer = commands.add_parser(
        "audit-streamer", help="deliver every audit event to the streaming destinations (HTTP POST, in order)"
    )
    streamer.set_defaults(handler=cmd_audit_streamer)
    worker = commands.add_parser("worker", help="the RQ worker: expiry scans and mails (needs Redis)")
    worker.set_defaults(handler=cmd_worker, opens="settings")
    scheduler = commands.add_parser(
        "scheduler", help="rq cron with the daily expiry scan (workers/cron.py; needs Redis)"
    )
    scheduler.set_defaults(handler=cmd_scheduler, opens="settings")

    scan = commands.add_parser("expiry-scan", help="run the daily expiry scan now, in this process")
    scan.add_argument(
        "--now", help="act as if the time were this ISO 8601 instant (UTC), for reproducible runs"
    )
    scan.set_defaults(handler=cmd_expiry_scan)

    retention = commands.add_parser(
        "retention", help="activity retention: archive old activity with evidence, then delete it"
    )
    retention_commands = retention.add_subparsers(dest="retention_command", required=True)
    apply = retention_commands.add_parser(
        "apply",
        help="archive the activity older than DEPLOY_TOKENS_ACTIVITY_RETENTION_DAYS, record it, delete it",
    )
    apply.add_argument(
        "--now", help="act as if the time were this ISO 8601 instant (UTC), for reproducible runs"
    )
    apply.add_argument("--json", action="store_true", help="print JSON")
    apply.set_defaults(handler=cmd_retention_apply)
    retention_commands.add_parser(
        "history", help="every recorded archive (cut-off, manifests with SHA-256) and deletion, as JSON"
    ).set_defaults(handler=cmd_retention_history)

    schedule = commands.add_parser(
        "schedule", help="when the next expiry scan runs and how the last one went (tokens, mails, failures)"
    )
    schedule.add_argument("--json", action="store_true", help="print JSON")
    schedule.set_defaults(handler=cmd_schedule)
