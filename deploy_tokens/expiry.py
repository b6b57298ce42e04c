"""Deploy-token expiry: the daily scan, which records what has expired and hands out the emails that are due.

**The scan** (behaviour [notifications], [expiry-event]) reads only the tokens that are due, a page at a time,
from the notification projection (``due_tokens``), never all tokens. For each page it records, in one
transaction, the expiries that have passed (``Expired``) and each due interval's intent (``NotificationDue``),
then hands the page's emails to a dispatcher: sent at once in this process (embedded, ``deploy-tokens
expiry-scan``) or as RQ jobs of a batch each (``workers/jobs.py``). It is idempotent: running it twice on one
day, or two scans at once, sends nothing twice, because the decision to send is taken per token on the event
store (claims and ``Notified``), not here.

The sending of each email is ``deploy_tokens/expiry_sender.py``'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from eventsourcing.persistence import IntegrityError

from deploy_tokens.expiry_sender import SAVE_RETRIES, distinct_tokens, load_tokens
from deploy_tokens.tokens import TokenService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.clock import Clock
from domain.deploy_token import DeployToken, due_interval
from domain.errors import Conflict
from domain.instance_settings import EXPIRING_NOTIFICATIONS_FLAG
from infrastructure.db import Database
from infrastructure.idempotency import IdempotencyRecords
from projections.notification_queries import due_tokens

log = logging.getLogger(__name__)

# The scan ----------------------------------------------------------------------------------------------

Dispatch = Callable[[int, int], None]  # (token_id, interval): hand one email to a sender


@runtime_checkable
class BatchDispatch(Protocol):
    """A dispatcher that takes a page's emails at once (one SMTP connection, one RQ job per batch)."""

    def __call__(self, token_id: int, interval: int) -> None: ...

    def dispatch_many(self, due: Sequence[tuple[int, int]]) -> None: ...


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
    def __init__(
        self,
        tokens: TokenService,
        uow: UnitOfWork,
        db: Database,
        idempotency: IdempotencyRecords,
        clock: Clock,
    ) -> None:
        self.tokens = tokens
        self.uow = uow
        self.db = db
        self.idempotency = idempotency
        self.clock = clock

    def run(self, dispatch: Dispatch, *, page_size: int = 500) -> ScanReport:
        now = self.clock.now()
        report = ScanReport(
            notifications_off=not self.uow.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG)
        )
        with self.uow.batch_of_commands():
            self._scan(report, now, dispatch, page_size)
        # The daily sweep of kept Idempotency-Key answers (token values among them) past their 24 hours, for
        # the keys after which no new key arrived to sweep them.
        report.idempotency_records_purged = self.idempotency.purge_expired(now)
        log.info(
            "expiry scan finished",
            extra={**report.as_dict(), "idempotency_records_purged": report.idempotency_records_purged},
        )
        return report

    def _scan(self, report: ScanReport, now: datetime, dispatch: Dispatch, page_size: int) -> None:
        after = 0
        while page := due_tokens(self.db, now, limit=page_size, after_token_id=after):
            after = page[-1].token_id
            report.examined += len(page)
            expiring: list[int] = []
            due: list[tuple[int, int]] = []
            for row in page:
                if now >= row.expires_at:
                    if not row.expiry_recorded:
                        expiring.append(row.token_id)  # behaviour [expiry-event], even with notifications off
                    continue
                if report.notifications_off:
                    continue
                interval = due_interval(row.expires_at, now.date())
                if interval is None or any(sent <= interval for sent in row.notified):
                    continue
                due.append((row.token_id, interval))
            expired = self._record_page(expiring, due, now)
            for token_id in expired:
                self.tokens.vault.destroy(token_id)  # behaviour [ci-token]: an expired token's value goes
            report.expired_recorded += len(expired)
            if not due:
                continue
            if isinstance(dispatch, BatchDispatch):
                dispatch.dispatch_many(due)
            else:
                for token_id, interval in due:
                    dispatch(token_id, interval)
            report.dispatched.extend(due)

    def _record_page(self, expiring: list[int], due: list[tuple[int, int]], now: datetime) -> list[int]:
        """Record the page's expiries and intents in one transaction; returns the tokens whose expiry it recorded.

        Decided on the tokens as stored now; a token another writer changed meanwhile fails the save, and the
        page is loaded and decided again (each command records nothing the second time)."""
        for _ in range(SAVE_RETRIES):
            tokens = load_tokens(self.uow, [*expiring, *(token_id for token_id, _ in due)])
            changed: list[DeployToken] = []
            expired: list[int] = []
            for token_id in expiring:
                token = tokens.get(token_id)
                if token is not None and not token.deleted and token.record_expiry(now=now):
                    changed.append(token)
                    expired.append(token_id)
            for token_id, interval in due:
                token = tokens.get(token_id)
                # Intents are recorded once per interval; later scans dispatch again without new events.
                if token is not None and not token.deleted and token.mark_notification_due(interval, now=now):
                    changed.append(token)
            if not changed:
                return []
            try:
                recordings = self.uow.store.save(*distinct_tokens(changed))
            except IntegrityError:
                continue
            self.uow.caught_up(recordings)
            return expired
        raise Conflict("the expiry scan kept losing concurrent races; it is retried")
