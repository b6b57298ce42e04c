"""Deploy-token expiry: the daily scan, who is told, and sending one interval's email once.

**The scan** reads only the tokens that are due, from the notification projection (``due_tokens``), never all
tokens. It records expiries, records each due interval's intent (``NotificationDue``) and hands the email to
a dispatcher. It is idempotent: running it twice on one day, or two scans at once, sends nothing twice,
because the decision to send is taken per token on the event store (claims and ``Notified``), not here.

**The notifier** sends one interval's email for one token, effectively once. Each step is durable
before the next:

1. re-check on fresh state: the token is active, the interval is still the one due, it was never sent;
2. **claim** the interval (``NotificationClaimed`` with a short lease): optimistic concurrency on the
   token's stream lets exactly one concurrent sender win; the others stop;
3. send over SMTP with a deterministic Message-ID (the same on every attempt);
4. record ``Notified`` immediately after the server's 250, with nothing in between.

A failure at 3 leaves the interval open: the lease expires and a retry or the next scan sends again. The one
unavoidable window is a crash between the server's 250 and step 4: the message was delivered but not
recorded, and after the lease a retry sends it again with the same Message-ID (which receivers and
relays de-duplicate on). The window is kept tiny: step 4 is one local write, and SMTP timeouts are short.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from deploy_tokens.expiry_mail import ExpiryNotice, Recipient, compose, message_id
from deploy_tokens.tokens import TokenService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.clock import Clock
from domain.deploy_token import DeployToken, days_left, deploy_token_uuid, due_interval
from domain.instance_settings import EXPIRING_NOTIFICATIONS_FLAG
from domain.membership import AccessLevel
from infrastructure.db import Database
from infrastructure.idempotency import IdempotencyRecords
from infrastructure.mail import MailDeliveryError, Mailer
from projections.notification_queries import due_tokens
from projections.views import ReadModel

log = logging.getLogger(__name__)

Dispatch = Callable[[int, int], None]  # (token_id, interval): hand one email to a sender


# The scan ----------------------------------------------------------------------------------------------


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
            for row in page:
                after = row.token_id
                report.examined += 1
                if now >= row.expires_at:
                    if not row.expiry_recorded and self.tokens.record_expiry(row.token_id):
                        report.expired_recorded += (
                            1  # behaviour [expiry-event], recorded even with notifications off
                        )
                    continue
                if report.notifications_off:
                    continue
                interval = due_interval(row.expires_at, now.date())
                if interval is None or any(sent <= interval for sent in row.notified):
                    continue
                self.tokens.mark_notification_due(row.token_id, interval)
                dispatch(row.token_id, interval)
                report.dispatched.append((row.token_id, interval))


# Who is told -------------------------------------------------------------------------------------------


def expiry_recipients(read: ReadModel, holder_kind: str, holder_id: int) -> tuple[Recipient, ...]:
    """People who can act on the token, never blocked users.

    A project token: the project's Maintainers and Owners, including roles inherited from ancestor groups
    (GitLab users ask for this). A group token: the group's Owners, including inherited ones (GitLab sends
    nothing for group tokens; users ask for it). A project in a personal namespace is owned by that
    namespace's user, as the access rules grant them Owner, though they have no member row."""
    chosen: dict[int, Recipient] = {}
    if holder_kind == "project":
        project = read.project(holder_id)
        if project is None:
            return ()
        sources = [("project", holder_id), *(("group", group_id) for group_id in project.group_ids)]
        minimum = AccessLevel.MAINTAINER
        if project.namespace_kind == "user":
            owner = read.user(project.namespace_id)  # a user's id is their personal namespace's id
            if owner is not None and owner.namespace_id == project.namespace_id and not owner.blocked:
                chosen[owner.user_id] = Recipient(owner.name, owner.email)
    else:
        group = read.namespace(holder_id)
        if group is None:
            return ()
        sources = [("group", holder_id), *(("group", ancestor) for ancestor in group.ancestor_ids)]
        minimum = AccessLevel.OWNER
    for source_kind, source_id in sources:
        for member, user in read.members(source_kind, source_id):
            if member.access_level >= minimum and not user.blocked:
                chosen[user.user_id] = Recipient(user.name, user.email)
    return tuple(chosen[user_id] for user_id in sorted(chosen))


# Sending one interval's email --------------------------------------------------------------------------


class SendOutcome(StrEnum):
    SENT = "sent"
    ALREADY_SENT = "already_sent"
    NOT_DUE = "not_due"
    INACTIVE = "inactive"
    NO_RECIPIENTS = "no_recipients"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    FLAG_OFF = "flag_off"


@dataclass(frozen=True)
class NoticeContext:
    """What an email needs beyond the token: where links point and who sends."""

    external_url: str
    sender: str

    @property
    def domain(self) -> str:
        return urlsplit(self.external_url).hostname or "localhost"

    def settings_url(self, holder_kind: str, full_path: str) -> str:
        if holder_kind == "group":
            return f"{self.external_url}/groups/{full_path}/-/settings/repository#js-deploy-tokens"
        return f"{self.external_url}/{full_path}/-/settings/repository#js-deploy-tokens"


class ExpiryNotifier:
    def __init__(
        self,
        tokens: TokenService,
        uow: UnitOfWork,
        read: ReadModel,
        clock: Clock,
        context: NoticeContext,
        *,
        lease: timedelta,
        mailer: Mailer,
    ) -> None:
        self.tokens = tokens
        self.uow = uow
        self.read = read
        self.clock = clock
        self.context = context
        self.lease = lease
        self.mailer = mailer

    def _holder_path(self, token: DeployToken) -> str | None:
        if token.holder_kind == "project":
            project = self.read.project(token.holder_id)
            return project.full_path if project else None
        namespace = self.read.namespace(token.holder_id)
        return namespace.full_path if namespace else None

    def notice_for(self, token: DeployToken, interval: int) -> ExpiryNotice | None:
        """The email for this token and interval, or None when nobody should receive it."""
        path = self._holder_path(token)
        recipients = expiry_recipients(self.read, token.holder_kind, token.holder_id)
        if path is None or not recipients or token.expires_at is None:
            return None
        today = self.clock.now().date()
        return ExpiryNotice(
            token_id=token.token_id,
            token_name=token.name,
            namespace_kind="group" if token.holder_kind == "group" else "project",
            namespace_path=path,
            expires_at=token.expires_at,
            interval_days=interval,
            days_left=max(0, min(days_left(token.expires_at, today), interval)),
            settings_url=self.context.settings_url(token.holder_kind, path),
            recipients=recipients,
        )

    def send(self, token_id: int, interval: int) -> SendOutcome:
        """The job body: safe to run any number of times, concurrently, after any crash."""
        if not self.uow.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG):
            return SendOutcome.FLAG_OFF
        token = self.uow.get(DeployToken, deploy_token_uuid(token_id), "404 Token")
        now = self.clock.now()
        if interval in token.notified:
            return SendOutcome.ALREADY_SENT
        if not token.is_active(now):
            return SendOutcome.INACTIVE
        if token.interval_due(now) != interval:
            return SendOutcome.NOT_DUE
        notice = self.notice_for(token, interval)
        if notice is None:
            return SendOutcome.NO_RECIPIENTS  # the interval stays open for the next scan
        identifier = message_id(notice, self.context.domain)
        if not self.tokens.claim_notification(token_id, interval, message_id=identifier, lease=self.lease):
            return SendOutcome.CLAIMED_ELSEWHERE
        message = compose(notice, sender=self.context.sender, domain=self.context.domain, now=now)
        try:
            self.mailer.send(message)
        except MailDeliveryError as error:
            if not error.outcome_unknown:  # surely not delivered: give the interval back at once
                self.tokens.release_notification(token_id, interval, message_id=identifier, error=str(error))
            raise
        # Nothing between the server's acceptance and this record: this is the crash window.
        self.tokens.record_notification(
            token_id, interval, message_id=identifier, recipients=[r.email for r in notice.recipients]
        )
        log.info("expiry email sent", extra={"token_id": token_id, "interval": interval})
        return SendOutcome.SENT
