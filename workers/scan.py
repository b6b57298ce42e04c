"""The daily expiry scan (R17-R19): record expiries, record each due interval's intent, dispatch emails.

It reads only the tokens that are due, from the notification projection (``due_tokens``), never all
tokens. It is idempotent: running it twice on one day, or two scans at once, sends nothing twice, because
the decision to send is taken per token on the event store (claims and ``Notified``), not here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from deploy_tokens.runtime import Runtime
from domain.deploy_token import due_interval
from domain.directory import EXPIRING_NOTIFICATIONS_FLAG
from projections.notifications import due_tokens

log = logging.getLogger(__name__)

Dispatch = Callable[[int, int], None]  # (token_id, interval): hand one email to a sender


@dataclass
class ScanReport:
    examined: int = 0
    expired_recorded: int = 0
    dispatched: list[tuple[int, int]] = field(default_factory=list)
    notifications_off: bool = False
    # Not in ``as_dict``: that is the RQ job's result, whose shape callers already read.
    idempotency_records_purged: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "examined": self.examined,
            "expired_recorded": self.expired_recorded,
            "dispatched": len(self.dispatched),
            "notifications_off": self.notifications_off,
        }


class ExpiryScan:
    def __init__(self, runtime: Runtime, dispatch: Dispatch, *, page_size: int = 500) -> None:
        self.runtime = runtime
        self.dispatch = dispatch
        self.page_size = page_size

    def run(self) -> ScanReport:
        runtime = self.runtime
        service = runtime.service
        now = runtime.clock.now()
        report = ScanReport(
            notifications_off=not service.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG)
        )
        with service.batch_of_commands():
            self._scan(report, now)
        # The daily sweep of kept Idempotency-Key answers (token values among them) past their 24 hours, for
        # the keys after which no new key arrived to sweep them.
        report.idempotency_records_purged = runtime.idempotency.purge_expired(now)
        log.info(
            "expiry scan finished",
            extra={**report.as_dict(), "idempotency_records_purged": report.idempotency_records_purged},
        )
        return report

    def _scan(self, report: ScanReport, now: datetime) -> None:
        service = self.runtime.service
        after = 0
        while page := due_tokens(self.runtime.db, now, limit=self.page_size, after_token_id=after):
            for row in page:
                after = row.token_id
                report.examined += 1
                if now >= row.expires_at:
                    if not row.expiry_recorded and service.record_expiry(row.token_id):
                        report.expired_recorded += 1  # R19, recorded even with notifications off
                    continue
                if report.notifications_off:
                    continue
                interval = due_interval(row.expires_at, now.date())
                if interval is None or any(sent <= interval for sent in row.notified):
                    continue
                service.mark_notification_due(row.token_id, interval)
                self.dispatch(row.token_id, interval)
                report.dispatched.append((row.token_id, interval))
