"""RQ job functions and the dispatchers that hand expiry emails to them (or send in-process when embedded).

The scan hands its emails over a page at a time: embedded, they are sent at once over one SMTP connection;
with Redis, each run of up to ``MAILS_PER_JOB`` becomes one mail job (one connection, one work-horse), retried
with back-off for the emails it could not deliver. Job functions run in RQ's work-horse (a forked child): each
opens its own runtime lazily, so no database connection ever crosses a fork.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError

from deploy_tokens.expiry import Dispatch, ScanReport
from deploy_tokens.expiry_sender import ExpiryNotifier, SendOutcome
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import as_utc
from infrastructure.scan_runs import MailOutcome, ScanRuns
from infrastructure.settings import Settings

log = logging.getLogger(__name__)

QUEUE = "deploy-tokens"
SCAN_HOUR_UTC = 1  # behaviour [notifications]: every day at 01:00 UTC
MAIL_RETRY = Retry(max=4, interval=[30, 120, 600, 1800])
# Emails per mail job: one SMTP connection each, and small enough that several workers share a big day.
MAILS_PER_JOB = 100
# A batch normally takes a second or two; a server that times out makes the sender give up after two tries.
MAIL_JOB_TIMEOUT = 600

_runtime: tuple[int, Runtime] | None = None


def job_runtime() -> Runtime:
    """One runtime per process (re-opened after a fork)."""
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        _runtime = (os.getpid(), Runtime.open(Settings.from_env()))
    return _runtime[1]


def scan_job_id(now: datetime) -> str:
    """The RQ job id of the scan of ``now``'s UTC day: while that job exists, no second one is enqueued."""
    return f"expiry-scan-{as_utc(now):%Y%m%d}"


def mail_outcome(outcome: str) -> MailOutcome:
    """How a mail's outcome counts in its scan's record (``infrastructure.scan_runs``)."""
    if outcome == SendOutcome.SENT:
        return "sent"
    if outcome == SendOutcome.NO_RECIPIENTS:
        return "no_recipients"
    return "failed" if outcome.startswith("failed") else "other"


class InlineDispatcher:
    """Embedded mode and on-demand scans: send at once, in this process, a page at a time over one connection;
    a failure waits for the next run."""

    def __init__(self, notifier: ExpiryNotifier) -> None:
        self.notifier = notifier
        self.outcomes: list[tuple[int, int, str]] = []

    def __call__(self, token_id: int, interval: int) -> None:
        self.dispatch_many([(token_id, interval)])

    def dispatch_many(self, due: Sequence[tuple[int, int]]) -> None:
        for result in self.notifier.send_many(due):
            self.outcomes.append((result.token_id, result.interval, result.label))


def run_inline_scan(
    runtime: Runtime, *, source: str, scan_id: str | None = None
) -> tuple[ScanReport, list[tuple[int, int, str]]]:
    """One scan in this process, mails sent at once, recorded in ``expiry_scan_runs`` under ``scan_id``
    (default: a unique id for this run) with every mail's outcome; a scan that raises is recorded as failed."""
    runs = ScanRuns(runtime.db)
    started = runtime.clock.now()
    scan_id = scan_id or f"{source}-{as_utc(started):%Y%m%dT%H%M%S.%f}"
    runs.started(scan_id, source, started)
    dispatcher = InlineDispatcher(runtime.expiry_notifier())

    def count_mails() -> None:
        runs.mails(scan_id, Counter(mail_outcome(outcome) for _, _, outcome in dispatcher.outcomes))

    report = _recorded_scan(runtime, runs, scan_id, dispatcher, settle=count_mails)
    return report, dispatcher.outcomes


def _recorded_scan(
    runtime: Runtime,
    runs: ScanRuns,
    scan_id: str,
    dispatch: Dispatch,
    *,
    settle: Callable[[], None] = lambda: None,
) -> ScanReport:
    """The scan through ``dispatch``, its end recorded in ``expiry_scan_runs``: failed (with the error, which is
    raised again) or finished; ``settle`` records what the run did either way, before it is marked finished."""
    try:
        report = runtime.expiry_scan.run(dispatch)
    except Exception as error:
        runs.failed(scan_id, runtime.clock.now(), f"{type(error).__name__}: {error}")
        raise
    finally:
        settle()
    runs.finished(
        scan_id,
        runtime.clock.now(),
        examined=report.examined,
        expired=report.expired_recorded,
        mails_due=len(report.dispatched),
    )
    return report


def mail_job_id(scan_id: str, due: Sequence[tuple[int, int]]) -> str:
    """The RQ job id of one batch of a scan's mails: a scan retried with the same pages enqueues nothing new."""
    digest = hashlib.sha256(json.dumps([list(item) for item in due]).encode()).hexdigest()[:20]
    return f"expiry-mails-{scan_id}-{digest}"


class RqDispatcher:
    """Production: one RQ job per ``mails_per_job`` emails of a page (one SMTP connection each), with retries
    and back-off."""

    def __init__(self, queue: Queue, scan_id: str, *, mails_per_job: int = MAILS_PER_JOB) -> None:
        self.queue = queue
        self.scan_id = scan_id
        self.mails_per_job = mails_per_job

    def __call__(self, token_id: int, interval: int) -> None:
        self.dispatch_many([(token_id, interval)])

    def dispatch_many(self, due: Sequence[tuple[int, int]]) -> None:
        for start in range(0, len(due), self.mails_per_job):
            batch = [(token_id, interval) for token_id, interval in due[start : start + self.mails_per_job]]
            with contextlib.suppress(DuplicateJobError):  # this scan already dispatched it
                self.queue.enqueue(
                    send_expiry_emails,
                    batch,
                    self.scan_id,
                    job_id=mail_job_id(self.scan_id, batch),
                    unique=True,
                    retry=MAIL_RETRY,
                    result_ttl=3600,
                    failure_ttl=86400,
                    job_timeout=MAIL_JOB_TIMEOUT,
                )


def queue_for(settings: Settings) -> Queue:
    assert settings.redis_url is not None
    return Queue(QUEUE, connection=Redis.from_url(settings.redis_url))


# Job functions (importable by RQ workers) ---------------------------------------------------------------


class UndeliveredEmails(Exception):
    """Some emails of a batch were not delivered; RQ tries the job again after its back-off."""


def send_expiry_emails(due: Sequence[Sequence[int]], scan_id: str | None = None) -> list[list[object]]:
    """A batch of a scan's emails over one SMTP connection; returns ``[token_id, interval, outcome]`` for each.

    Raises while any was not delivered, so that RQ retries with back-off; a retry sends only what was not
    settled by an earlier attempt (kept in the job's meta), so each email's outcome counts once in the scan's
    record, and each failed attempt counts as one."""
    items = [(int(token_id), int(interval)) for token_id, interval in due]
    job = get_current_job()
    settled = {
        (int(token_id), int(interval)) for token_id, interval in (job.meta.get("settled", []) if job else [])
    }
    todo = [item for item in items if item not in settled]
    runtime = job_runtime()
    runs = ScanRuns(runtime.db) if scan_id is not None else None
    try:
        results = runtime.expiry_notifier().send_many(todo)
    except Exception:
        if runs is not None and scan_id is not None:
            with contextlib.suppress(Exception):  # the record must never hide the error
                runs.mails(scan_id, {"failed": len(todo)})
        raise
    if job is not None:
        settled.update((r.token_id, r.interval) for r in results if r.outcome is not SendOutcome.FAILED)
        job.meta["settled"] = sorted(settled)
        job.save_meta()  # type: ignore[no-untyped-call]
    if runs is not None and scan_id is not None:
        runs.mails(scan_id, Counter(mail_outcome(r.label) for r in results))
    failed = [r for r in results if r.outcome is SendOutcome.FAILED]
    if failed:
        raise UndeliveredEmails(
            f"{len(failed)} of {len(todo)} expiry emails not delivered (first: token {failed[0].token_id}, "
            f"{failed[0].label}); retried with back-off"
        )
    return [[r.token_id, r.interval, r.label] for r in results]


def send_expiry_email(token_id: int, interval: int, scan_id: str | None = None) -> str:
    """One email: the job of releases that queued one job per email, kept so that such jobs still run. Raises
    on delivery failure so that RQ retries with back-off; the interval stays open meanwhile."""
    runtime = job_runtime()
    try:
        outcome: SendOutcome = runtime.expiry_notifier().send(token_id, interval)
    except Exception:
        if scan_id is not None:
            with contextlib.suppress(Exception):  # the record must never hide the delivery error
                ScanRuns(runtime.db).mail(scan_id, "failed")
        raise
    if scan_id is not None:
        ScanRuns(runtime.db).mail(scan_id, mail_outcome(outcome.value))
    return outcome.value


def run_expiry_scan(scan_id: str) -> dict[str, Any]:
    """The day's scan (``scan_id``: its UTC day), recorded in ``expiry_scan_runs``; raises so that RQ retries."""
    runtime = job_runtime()
    runs = ScanRuns(runtime.db)
    runs.started(scan_id, "scheduler", runtime.clock.now())
    report = _recorded_scan(runtime, runs, scan_id, RqDispatcher(queue_for(runtime.settings), scan_id))
    return report.as_dict()


def trigger_daily_scan(now: datetime | None = None) -> str | None:
    """Called by ``rq cron`` at 01:00 UTC and every 15 minutes as a catch-up: enqueues the day's scan once.

    Before 01:00 it does nothing, so the catch-up tick cannot run today's scan early. The job id names
    the UTC day and is enqueued with ``unique``: two schedulers and any number of ticks give one scan a
    day. The id stays reserved for three days after the job ends, longer than the day it names. ``now``
    (default: the system clock; naive means UTC) exists for tests.
    """
    now = datetime.now(UTC) if now is None else as_utc(now)
    if now.hour < SCAN_HOUR_UTC:
        return None
    return _enqueue_once_a_day(queue_for(Settings.from_env()), run_expiry_scan, now, scan_job_id(now), 1800)


def _enqueue_once_a_day(
    queue: Queue, job: Callable[[str], dict[str, Any]], now: datetime, job_id: str, timeout: int
) -> str | None:
    """Enqueue ``job(day)`` under ``job_id`` (which names the UTC day) unless that job exists: returns the day,
    or None when it was already enqueued. The id stays reserved for three days after the job ends, longer than
    the day it names; RQ retries a failed run three times."""
    day = now.strftime("%Y%m%d")
    try:
        queue.enqueue(
            job,
            day,
            job_id=job_id,
            unique=True,
            result_ttl=3 * 86400,
            failure_ttl=3 * 86400,
            job_timeout=timeout,
            retry=Retry(max=3, interval=[60, 300, 900]),
        )
    except DuplicateJobError:
        return None
    return day


# Activity retention (behaviour [retention]) ----------------------------------------------------------------

RETENTION_HOUR_UTC = 2  # daily, an hour after the expiry scan
RETENTION_ACTOR = Actor.system("activity-retention")


class RetentionBusy(Exception):
    """Another retention run held the lock; RQ tries the job again after its back-off."""


def retention_job_id(now: datetime) -> str:
    """The RQ job id of ``now``'s UTC day's retention run: while that job exists, no second one is enqueued."""
    return f"activity-retention-{as_utc(now):%Y%m%d}"


def run_activity_retention(day: str) -> dict[str, Any]:
    """The day's retention run (``day``: its UTC day, for the record): archive, record, delete."""
    report = job_runtime().activity_retention().apply(RETENTION_ACTOR)
    if report.status == "busy":
        raise RetentionBusy(f"retention {day}: another run holds the lock; retried")
    return report.as_dict()


def trigger_daily_retention(now: datetime | None = None) -> str | None:
    """Called by ``rq cron`` at 02:00 UTC and every 15 minutes as a catch-up: enqueues the day's run once,
    as ``trigger_daily_scan`` does the scan; nothing when retention is off. ``now`` exists for tests."""
    now = datetime.now(UTC) if now is None else as_utc(now)
    settings = Settings.from_env()
    if now.hour < RETENTION_HOUR_UTC or settings.activity_retention_days is None:
        return None
    return _enqueue_once_a_day(queue_for(settings), run_activity_retention, now, retention_job_id(now), 3600)
