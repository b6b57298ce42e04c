"""Sends one interval's expiry email for one token: effectively once (R18).

The sequence, each step durable before the next:

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
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from urllib.parse import urlsplit

from deploy_tokens.runtime import Runtime
from domain.deploy_token import DeployToken, days_left, deploy_token_uuid
from workers.mail import ExpiryNotice, MailDeliveryError, Mailer, compose, message_id
from workers.recipients import expiry_recipients

log = logging.getLogger(__name__)


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
    def __init__(self, runtime: Runtime, mailer: Mailer) -> None:
        self.runtime = runtime
        self.mailer = mailer
        settings = runtime.settings
        self.context = NoticeContext(settings.external_url, settings.mail_from)

    def _holder_path(self, token: DeployToken) -> str | None:
        read = self.runtime.read
        if token.holder_kind == "project":
            project = read.project(token.holder_id)
            return project.full_path if project else None
        namespace = read.namespace(token.holder_id)
        return namespace.full_path if namespace else None

    def notice_for(self, token: DeployToken, interval: int) -> ExpiryNotice | None:
        """The email for this token and interval, or None when nobody should receive it."""
        path = self._holder_path(token)
        recipients = expiry_recipients(self.runtime.read, token.holder_kind, token.holder_id)
        if path is None or not recipients or token.expires_at is None:
            return None
        today = self.runtime.clock.now().date()
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
        from domain.directory import EXPIRING_NOTIFICATIONS_FLAG

        service = self.runtime.service
        if not service.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG):
            return SendOutcome.FLAG_OFF
        token: DeployToken = service.store.repository.get(deploy_token_uuid(token_id))
        assert isinstance(token, DeployToken)
        now = self.runtime.clock.now()
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
        lease = timedelta(seconds=self.runtime.settings.notification_lease)
        if not service.claim_notification(token_id, interval, message_id=identifier, lease=lease):
            return SendOutcome.CLAIMED_ELSEWHERE
        message = compose(notice, sender=self.context.sender, domain=self.context.domain, now=now)
        try:
            self.mailer.send(message)
        except MailDeliveryError as error:
            if not error.outcome_unknown:  # surely not delivered: give the interval back at once
                service.release_notification(token_id, interval, message_id=identifier, error=str(error))
            raise
        # Nothing between the server's acceptance and this record: this is the crash window.
        service.record_notification(
            token_id, interval, message_id=identifier, recipients=[r.email for r in notice.recipients]
        )
        log.info("expiry email sent", extra={"token_id": token_id, "interval": interval})
        return SendOutcome.SENT
