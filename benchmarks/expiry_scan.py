"""(e) The daily expiry scan over 100,000 tokens with 1% due, against the floor of what such a scan must do.

**The scan** is the production in-process entry point (``run_inline_scan``, as ``deploy-tokens serve`` and
``deploy-tokens expiry-scan`` run it), configured with ``DEPLOY_TOKENS_SMTP_URL`` to send to a real aiosmtpd
server that the benchmark starts in a process of its own. Its time covers reading the due tokens, recording
the intents, claiming, composing and sending every email, recording each one as sent, giving read models
their catch-up and the scan's own record (``expiry_scan_runs``).

**The floor**, measured in the same run against the same server, is what any scan that sends these emails and
records them must at least do: compose the same number of emails (the same composer, the same recipients),
send them one after another over **one** SMTP connection (smtplib, nothing else in between), and save the
same events (``NotificationDue``, ``NotificationClaimed`` and ``Notified`` for every email) built directly on
aggregates already in memory and saved with the raw event store in batches of 500 aggregates
(``runtime.store.save(*batch)``: one transaction each, no reads). The floor uses tokens that are not due, so
the scan's own work is untouched; the first floor's events are projected before the scan starts.

The floor is measured twice, right before and right after the scan, on two sets of tokens, and
``floor_seconds`` is their mean: the machine is shared, and a load that comes or goes during the run then
weighs on both sides alike. The target is ``scan_seconds <= 2 * floor_seconds`` on each backend. A second
scan the same day (nothing left to do) shows what the other 99% cost; reading the due rows alone is reported
as well. Every email the scan sends must arrive exactly once (the server logs each Message-ID).

Run: ``python -m benchmarks.expiry_scan [sqlite|postgres ...]``; one JSON line per backend.
"""

from __future__ import annotations

import dataclasses
import smtplib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.common import admin_world, bench_settings, report
from benchmarks.smtp_sink import RunningSink, running_sink
from deploy_tokens.expiry_mail import ExpiryNotice, compose, message_id
from deploy_tokens.expiry_sender import NoticeContext, expiry_recipients
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock, start_of_day
from domain.deploy_token import DeployToken, days_left, due_interval
from projections.notification_queries import due_tokens
from workers.jobs import run_inline_scan

TOKENS = 100_000
DUE_EVERY = 100  # 1% due
DUE_DAYS = (3, 20, 45)  # in the 7-, 30- and 60-day windows, in turn
BATCH = 1000
PAGE = 500  # the scan's page; the floor saves as many aggregates per transaction
NOW = datetime(2026, 1, 10, 1, 0, tzinfo=UTC)  # the 01:00 UTC run
TARGET_AT_MOST = 2


@dataclasses.dataclass
class Filled:
    due: int
    # Twice as many tokens that are not due, kept in memory at their stored version: the aggregates of the
    # two floor measurements (before and after the scan).
    floor_tokens: list[DeployToken]


def fill(runtime: Runtime, project: int) -> Filled:
    """Issue TOKENS tokens straight into the event store (no per-token service round trip)."""
    now = runtime.clock.now()
    today = now.date()
    actor = Actor.system("benchmark")
    batch: list[DeployToken] = []
    due = 0
    not_due: list[DeployToken] = []
    for number in range(1, TOKENS + 1):
        if number % DUE_EVERY == 0:
            days = DUE_DAYS[(number // DUE_EVERY) % len(DUE_DAYS)]
            due += 1
        else:
            days = 61 + number % 600  # beyond the widest window: indexed, but next due in the future
        token = DeployToken.issue(
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
        batch.append(token)
        if days > 60 and len(not_due) < 2 * (TOKENS // DUE_EVERY):
            not_due.append(token)
        if len(batch) == BATCH:
            runtime.store.save(*batch)
            batch = []
    if batch:
        runtime.store.save(*batch)
    return Filled(due, not_due)


def read_due(runtime: Runtime) -> int:
    now = runtime.clock.now()
    count, after = 0, 0
    while page := due_tokens(runtime.db, now, limit=PAGE, after_token_id=after):
        count += len(page)
        after = page[-1].token_id
    return count


def chunks(tokens: Sequence[DeployToken], size: int) -> Iterator[Sequence[DeployToken]]:
    for start in range(0, len(tokens), size):
        yield tokens[start : start + size]


def floor(runtime: Runtime, tokens: list[DeployToken], project: int, sink: RunningSink) -> dict[str, float]:
    """The same number of emails composed and sent over one SMTP connection, and the same events saved in
    batches with the raw event store; returns the seconds spent on each part."""
    now = runtime.clock.now()
    today = now.date()
    context = NoticeContext(runtime.settings.external_url, runtime.settings.mail_from)
    recipients = expiry_recipients(runtime.read, "project", project)
    project_row = runtime.read.project(project)
    assert project_row is not None and recipients
    path = project_row.full_path
    actor = Actor.system("benchmark-floor")
    lease = timedelta(seconds=runtime.settings.notification_lease)
    target = urlsplit(sink.url)
    assert target.hostname is not None and target.port is not None
    spent = {"compose": 0.0, "smtp": 0.0, "events": 0.0}
    started = time.perf_counter()
    client = smtplib.SMTP(target.hostname, target.port, timeout=10)
    client.ehlo()
    for position, chunk in enumerate(chunks(tokens, PAGE)):
        for offset, token in enumerate(chunk):
            assert token.expires_at is not None
            mark = time.perf_counter()
            # The scan's emails come in the three windows in turn; so do these.
            window_days = DUE_DAYS[(position * PAGE + offset) % len(DUE_DAYS)]
            interval = due_interval(start_of_day(today + timedelta(days=window_days)), today)
            assert interval is not None
            notice = ExpiryNotice(
                token_id=token.token_id,
                token_name=token.name,
                namespace_kind="project",
                namespace_path=path,
                expires_at=token.expires_at,
                interval_days=interval,
                days_left=max(0, min(days_left(token.expires_at, today), interval)),
                settings_url=context.settings_url("project", path),
                recipients=recipients,
            )
            message = compose(notice, sender=context.sender, domain=context.domain, now=now)
            composed = time.perf_counter()
            client.send_message(message)
            sent = time.perf_counter()
            identifier = message_id(notice, context.domain)
            token.mark_notification_due(interval, now=now)
            token.claim_notification(
                interval, message_id=identifier, lease_until=now + lease, actor=actor, now=now
            )
            token.record_notification(
                interval,
                message_id=identifier,
                recipients=[r.email for r in recipients],
                actor=actor,
                now=now,
            )
            spent["compose"] += composed - mark
            spent["smtp"] += sent - composed
            spent["events"] += time.perf_counter() - sent
        mark = time.perf_counter()
        runtime.store.save(*chunk)
        spent["events"] += time.perf_counter() - mark
    client.quit()
    spent["total"] = time.perf_counter() - started
    return spent


def run(backend: str) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory(prefix="dt-bench-smtp-") as folder,
        running_sink(Path(folder) / "received.log") as sink,
        bench_settings(backend) as base,
        Runtime.open(dataclasses.replace(base, smtp_url=sink.url), clock=FixedClock(NOW)) as runtime,
    ):
        _, _, project = admin_world(runtime)
        start = time.perf_counter()
        filled = fill(runtime, project)
        saved = time.perf_counter()
        runtime.projector.catch_up()
        projected = time.perf_counter()

        start_read = time.perf_counter()
        rows = read_due(runtime)
        read_seconds = time.perf_counter() - start_read
        assert rows == filled.due, (rows, filled.due)

        before_tokens, after_tokens = filled.floor_tokens[: filled.due], filled.floor_tokens[filled.due :]
        before = floor(runtime, before_tokens, project, sink)
        assert sum(sink.received().values()) == filled.due
        runtime.projector.catch_up()  # the floor's events, so that the scan does not project them

        start_scan = time.perf_counter()
        scan, outcomes = run_inline_scan(runtime, source="benchmark")
        scan_seconds = time.perf_counter() - start_scan
        sent = sum(1 for _, _, outcome in outcomes if outcome == "sent")
        assert scan.examined == filled.due and sent == filled.due, (scan.as_dict(), outcomes[:3])

        start_rescan = time.perf_counter()
        rescan, _ = run_inline_scan(runtime, source="benchmark")
        rescan_seconds = time.perf_counter() - start_rescan
        assert rescan.examined == 0 and not rescan.dispatched

        # The machine is shared: the floor is measured on both sides of the scan and averaged, so that a load
        # that changes during the run weighs on both figures alike.
        after = floor(runtime, after_tokens, project, sink)
        floor_seconds = (before["total"] + after["total"]) / 2
        spent = {part: (before[part] + after[part]) / 2 for part in ("compose", "smtp", "events")}

        received = sink.received()
        assert set(received.values()) == {1}, "an email arrived twice"
        # <deploy-token-expiry.{token id}.{date}.{interval}d@host>: the due tokens are every DUE_EVERY-th id.
        scan_emails = sum(1 for identifier in received if int(identifier.split(".")[1]) % DUE_EVERY == 0)
        assert scan_emails == filled.due and len(received) == filled.due + len(filled.floor_tokens)

        ratio = scan_seconds / floor_seconds
        return {
            "benchmark": "expiry_scan",
            "backend": backend,
            "tokens": TOKENS,
            "due_tokens": filled.due,
            "emails_received": scan_emails,
            "scan_seconds": round(scan_seconds, 3),
            "floor_seconds": round(floor_seconds, 3),
            "scan_to_floor": round(ratio, 2),
            "target_at_most": TARGET_AT_MOST,
            "meets_target": ratio <= TARGET_AT_MOST,
            "second_scan_seconds": round(rescan_seconds, 4),
            "scan_ms_per_due_token": round(1000 * scan_seconds / filled.due, 2),
            "floor_ms_per_due_token": round(1000 * floor_seconds / filled.due, 2),
            "floor_before_seconds": round(before["total"], 3),
            "floor_after_seconds": round(after["total"], 3),
            "floor_compose_seconds": round(spent["compose"], 3),
            "floor_smtp_seconds": round(spent["smtp"], 3),
            "floor_events_seconds": round(spent["events"], 3),
            "read_due_rows_seconds": round(read_seconds, 4),
            "setup_save_s": round(saved - start, 2),
            "setup_project_s": round(projected - saved, 2),
        }


def main() -> None:
    for backend in sys.argv[1:] or ["sqlite", "postgres"]:
        report(run(backend))


if __name__ == "__main__":
    main()
