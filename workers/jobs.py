"""RQ job functions and the dispatchers that hand expiry emails to them (or send in-process when embedded).

Job functions run in RQ's work-horse (a forked child): each opens its own runtime lazily, so no database
connection ever crosses a fork.
"""

from __future__ import annotations

import contextlib
import logging
import os
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError

from deploy_tokens.expiry import ExpiryNotifier, ScanReport, SendOutcome
from deploy_tokens.runtime import Runtime
from domain.clock import as_utc
from infrastructure.mail import MailDeliveryError
from infrastructure.scan_runs import MailOutcome, ScanRuns
from infrastructure.settings import Settings

log = logging.getLogger(__name__)

QUEUE = "deploy-tokens"
SCAN_HOUR_UTC = 1  # behaviour [notifications]: every day at 01:00 UTC
MAIL_RETRY = Retry(max=4, interval=[30, 120, 600, 1800])

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
    """Embedded mode and on-demand scans: send at once, in this process; a failure waits for the next run."""

    def __init__(self, notifier: ExpiryNotifier) -> None:
        self.notifier = notifier
        self.outcomes: list[tuple[int, int, str]] = []

    def __call__(self, token_id: int, interval: int) -> None:
        try:
            outcome = self.notifier.send(token_id, interval).value
        except MailDeliveryError as error:
            log.warning("expiry email not delivered; the interval stays open", extra={"token_id": token_id})
            outcome = f"failed: {error}"
        self.outcomes.append((token_id, interval, outcome))


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
    try:
        report = runtime.expiry_scan.run(dispatcher)
    except Exception as error:
        runs.failed(scan_id, runtime.clock.now(), f"{type(error).__name__}: {error}")
        raise
    finally:
        tally: dict[MailOutcome, int] = {}
        for _, _, outcome in dispatcher.outcomes:
            kind = mail_outcome(outcome)
            tally[kind] = tally.get(kind, 0) + 1
        for kind, count in tally.items():
            runs.mail(scan_id, kind, count)
    runs.finished(
        scan_id,
        runtime.clock.now(),
        examined=report.examined,
        expired=report.expired_recorded,
        mails_due=len(report.dispatched),
    )
    return report, dispatcher.outcomes


class RqDispatcher:
    """Production: one RQ job per token and interval, with retries and back-off."""

    def __init__(self, queue: Queue, scan_id: str) -> None:
        self.queue = queue
        self.scan_id = scan_id

    def __call__(self, token_id: int, interval: int) -> None:
        with contextlib.suppress(DuplicateJobError):  # this scan already dispatched it
            self.queue.enqueue(
                send_expiry_email,
                token_id,
                interval,
                self.scan_id,
                job_id=f"expiry-mail-{token_id}-{interval}-{self.scan_id}",
                unique=True,
                retry=MAIL_RETRY,
                result_ttl=3600,
                failure_ttl=86400,
                job_timeout=120,
            )


def queue_for(settings: Settings) -> Queue:
    assert settings.redis_url is not None
    return Queue(QUEUE, connection=Redis.from_url(settings.redis_url))


# Job functions (importable by RQ workers) ---------------------------------------------------------------


def send_expiry_email(token_id: int, interval: int, scan_id: str | None = None) -> str:
    """Raises on delivery failure so that RQ retries with back-off; the interval stays open meanwhile. The
    outcome (a failed attempt too) counts in the record of the scan that dispatched it."""
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
    try:
        report: ScanReport = runtime.expiry_scan.run(RqDispatcher(queue_for(runtime.settings), scan_id))
    except Exception as error:
        runs.failed(scan_id, runtime.clock.now(), f"{type(error).__name__}: {error}")
        raise
    runs.finished(
        scan_id,
        runtime.clock.now(),
        examined=report.examined,
        expired=report.expired_recorded,
        mails_due=len(report.dispatched),
    )
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
    day = now.strftime("%Y%m%d")
    queue = queue_for(Settings.from_env())
    try:
        queue.enqueue(
            run_expiry_scan,
            day,
            job_id=scan_job_id(now),
            unique=True,
            result_ttl=3 * 86400,
            failure_ttl=3 * 86400,
            job_timeout=1800,
            retry=Retry(max=3, interval=[60, 300, 900]),
        )
    except DuplicateJobError:
        return None
    return day
