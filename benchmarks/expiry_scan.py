"""(e) The daily expiry scan over 100,000 tokens with 1% due, against merely reading the due rows.

The scan reads only the due tokens (``due_tokens`` pages over the partial next-due index), then for each
one records the intent, claims, mails and records ``Notified``. So its time should follow the due tokens,
not the table: it is compared with the time to page through the same due rows (``due_tokens``, pages of
500) in the same run, and a second scan that day (nothing left to do) shows what the other 99% cost.
Mail goes to the real default path, a Maildir in the data folder (one fsynced file per message).

Run: ``python -m benchmarks.expiry_scan [sqlite|postgres ...]``; one JSON line per backend.
"""

from __future__ import annotations

import mailbox
import sys
import time
from datetime import UTC, datetime, timedelta

from benchmarks.common import admin_world, bench_runtime, report
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock
from domain.deploy_token import DeployToken
from infrastructure.mail import MaildirMailer
from projections.notification_queries import due_tokens
from workers.jobs import InlineDispatcher

TOKENS = 100_000
DUE_EVERY = 100  # 1% due
DUE_DAYS = (3, 20, 45)  # in the 7-, 30- and 60-day windows, in turn
BATCH = 1000
PAGE = 500
NOW = datetime(2026, 1, 10, 1, 0, tzinfo=UTC)  # the 01:00 UTC run


def fill(runtime: Runtime, project: int) -> int:
    """Issue TOKENS tokens straight into the event store (no per-token service round trip); returns due."""
    now = runtime.clock.now()
    today = now.date()
    actor = Actor.system("benchmark")
    batch: list[DeployToken] = []
    due = 0
    for number in range(1, TOKENS + 1):
        if number % DUE_EVERY == 0:
            days = DUE_DAYS[(number // DUE_EVERY) % len(DUE_DAYS)]
            due += 1
        else:
            days = 61 + number % 600  # beyond the widest window: indexed, but next due in the future
        batch.append(
            DeployToken.issue(
                token_id=number,
                name=f"t{number}",
                username=None,
                holder_kind="project",
                holder_id=project,
                scopes=["read_repository"],
                expires_at=today + timedelta(days=days),
                digest=f"{number:064x}",
                actor=actor,
                now=now,
            )
        )
        if len(batch) == BATCH:
            runtime.store.save(*batch)
            batch = []
    if batch:
        runtime.store.save(*batch)
    return due


def read_due(runtime: Runtime) -> int:
    now = runtime.clock.now()
    count, after = 0, 0
    while page := due_tokens(runtime.db, now, limit=PAGE, after_token_id=after):
        count += len(page)
        after = page[-1].token_id
    return count


def run(backend: str) -> dict[str, object]:
    with bench_runtime(backend, clock=FixedClock(NOW)) as runtime:
        _, _, project = admin_world(runtime)
        start = time.perf_counter()
        due = fill(runtime, project)
        saved = time.perf_counter()
        runtime.projector.catch_up()
        projected = time.perf_counter()

        start_read = time.perf_counter()
        rows = read_due(runtime)
        read_seconds = time.perf_counter() - start_read
        assert rows == due, (rows, due)

        notifier = runtime.expiry_notifier()
        assert isinstance(notifier.mailer, MaildirMailer)  # the default when no SMTP URL is set
        dispatcher = InlineDispatcher(notifier)
        start_scan = time.perf_counter()
        scan = runtime.expiry_scan.run(dispatcher, page_size=PAGE)
        scan_seconds = time.perf_counter() - start_scan
        sent = sum(1 for _, _, outcome in dispatcher.outcomes if outcome == "sent")
        mails = len(mailbox.Maildir(notifier.mailer.path, create=False))
        assert scan.examined == due and sent == due and mails == due, (scan.as_dict(), sent, mails)

        start_rescan = time.perf_counter()
        rescan = runtime.expiry_scan.run(InlineDispatcher(notifier), page_size=PAGE)
        rescan_seconds = time.perf_counter() - start_rescan
        assert rescan.examined == 0 and not rescan.dispatched

        return {
            "benchmark": "expiry_scan",
            "backend": backend,
            "tokens": TOKENS,
            "due": due,
            "emails": mails,
            "setup_save_s": round(saved - start, 2),
            "setup_project_s": round(projected - saved, 2),
            "read_due_rows_s": round(read_seconds, 4),
            "scan_s": round(scan_seconds, 3),
            "scan_ms_per_due_token": round(1000 * scan_seconds / due, 2),
            "scan_over_read_ratio": round(scan_seconds / read_seconds, 1),
            "rescan_same_day_s": round(rescan_seconds, 4),
        }


def main() -> None:
    for backend in sys.argv[1:] or ["sqlite", "postgres"]:
        report(run(backend))


if __name__ == "__main__":
    main()
