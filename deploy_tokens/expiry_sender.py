"""Sending each expiry interval's email once: who is told, and the sender.

**The sender** (``ExpiryNotifier.send_many``) sends a batch of emails over one SMTP connection, each one
effectively once. Each step is durable before the next:

1. load a chunk of the batch's tokens (one query) and re-check each on that fresh state: active, the
   interval still the one due, never sent, someone to mail;
2. **claim** them (``NotificationClaimed`` with a lease), the whole chunk in one transaction. Optimistic
   concurrency on every token's stream fails the chunk's save if any of its tokens changed since it was
   loaded (another sender claimed one, say); the chunk is then loaded and decided again, so exactly one
   concurrent sender wins each interval;
3. send each claimed email with a deterministic Message-ID, one after another over the one connection;
4. record ``Notified`` once the server has answered 250, in a transaction of its own. The record is written
   while the next email is being prepared and sent (composed, MAIL FROM, RCPT TO, DATA), but the line that
   ends that email's data, upon which the server takes it, waits until the record is committed: at any
   moment at most one accepted email is unrecorded.

A failure at 3 gives the claim back (``NotificationFailed``) when the server surely did not take the message;
the interval stays open for a retry or the next scan. The one unavoidable window is a crash between the
server's 250 and the commit of step 4: the message was delivered but not recorded, and after the lease a
retry sends it again with the same Message-ID (which receivers and relays de-duplicate on). Step 4 keeps it
to one email per crashed sender. A claim is used only while at least half of its lease is left, so that a
slow server cannot keep a sender going past its lease (after which another may claim and send too): the rest
of the chunk is given back and claimed afresh.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

from eventsourcing.persistence import IntegrityError, Recording

from deploy_tokens.expiry_mail import ExpiryNotice, Recipient, compose, message_id
from deploy_tokens.tokens import TokenService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.clock import Clock
from domain.deploy_token import DeployToken, days_left, deploy_token_uuid
from domain.errors import Conflict
from domain.instance_settings import EXPIRING_NOTIFICATIONS_FLAG
from domain.membership import AccessLevel
from infrastructure.mail import MailDeliveryError, Mailer, MailSession, open_session
from infrastructure.stream_batches import load_aggregates
from projections.views import ReadModel

log = logging.getLogger(__name__)

# Emails claimed per transaction: one commit per chunk instead of one per email, and a chunk is short enough
# to be sent well within a lease.
CLAIM_CHUNK: Final = 50
# A save that keeps losing optimistic-concurrency races gives up after this many attempts (as services do).
SAVE_RETRIES: Final = 50
# Failures in a row that say nothing about the message itself (no connection, a timeout) after which the
# rest of a batch is not tried: the server is unreachable or unwell, and each try could cost a timeout.
_FAILURES_BEFORE_GIVING_UP: Final = 2
_NOTIFIER: Final = Actor.system("expiry-notifier")


def load_tokens(uow: UnitOfWork, token_ids: Iterable[int]) -> dict[int, DeployToken]:
    """The tokens as stored now, with one query; ids without a token are left out."""
    streams = {deploy_token_uuid(token_id): token_id for token_id in token_ids}
    loaded = load_aggregates(uow.store, streams)
    return {
        streams[stream]: aggregate
        for stream, aggregate in loaded.items()
        if isinstance(aggregate, DeployToken)
    }


def distinct_tokens(tokens: Iterable[DeployToken]) -> list[DeployToken]:
    return list({id(token): token for token in tokens}.values())


def _later(kept: list[Recording[Any]], new: list[Recording[Any]]) -> list[Recording[Any]]:
    """Of two saves' recordings, those that end later in the log: read models catch up to there at the end."""
    if not new or (kept and kept[-1].notification.id > new[-1].notification.id):
        return kept
    return new


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


# Sending each interval's email once --------------------------------------------------------------------


class SendOutcome(StrEnum):
    SENT = "sent"
    ALREADY_SENT = "already_sent"
    NOT_DUE = "not_due"
    INACTIVE = "inactive"
    NO_RECIPIENTS = "no_recipients"
    CLAIMED_ELSEWHERE = "claimed_elsewhere"
    FLAG_OFF = "flag_off"
    FAILED = "failed"  # not delivered this time; the interval stays open (``MailResult.error`` says why)


@dataclass(frozen=True)
class MailResult:
    """What became of one token's email in a batch."""

    token_id: int
    interval: int
    outcome: SendOutcome
    error: MailDeliveryError | None = None

    @property
    def label(self) -> str:
        """As the scans' outcome lists show it: the outcome, or ``failed: <why>``."""
        return f"failed: {self.error}" if self.error is not None else self.outcome.value


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


class Audience:
    """Each holder's path and recipients, read once per batch: a batch mails many tokens of few holders."""

    def __init__(self, read: ReadModel) -> None:
        self.read = read
        self._holders: dict[tuple[str, int], tuple[str | None, tuple[Recipient, ...]]] = {}

    def of(self, holder_kind: str, holder_id: int) -> tuple[str | None, tuple[Recipient, ...]]:
        """The holder's path now (None once it is gone) and who is mailed about its tokens."""
        key = (holder_kind, holder_id)
        if key not in self._holders:
            self._holders[key] = (
                self._path(holder_kind, holder_id),
                expiry_recipients(self.read, holder_kind, holder_id),
            )
        return self._holders[key]

    def _path(self, holder_kind: str, holder_id: int) -> str | None:
        if holder_kind == "project":
            project = self.read.project(holder_id)
            return project.full_path if project else None
        namespace = self.read.namespace(holder_id)
        return namespace.full_path if namespace else None


@dataclass
class _Claim:
    """An interval this sender holds the lease on, with its email."""

    token: DeployToken
    interval: int
    notice: ExpiryNotice
    message_id: str
    lease_until: datetime

    @property
    def key(self) -> tuple[int, int]:
        return (self.token.token_id, self.interval)


class _LeaseRunningOut(Exception):
    """Less than half of a claim's lease is left: sending now could outlast it."""


class _Records:
    """``Notified`` records, written one at a time on a thread of their own while the next email is prepared.

    ``wait`` returns once the last record is committed, or raises why it was not: the sender calls it right
    before the next email's end of data, so at most one accepted email is ever unrecorded."""

    def __init__(self, write: Callable[[_Claim], list[Recording[Any]]]) -> None:
        self._write = write
        self._executor: ThreadPoolExecutor | None = None
        self._pending: Future[list[Recording[Any]]] | None = None
        self.recordings: list[Recording[Any]] = []

    def submit(self, claim: _Claim) -> None:
        self.wait()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expiry-notified")
        self._pending = self._executor.submit(self._write, claim)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.recordings = _later(self.recordings, pending.result())

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)


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

    def notice_for(
        self, token: DeployToken, interval: int, audience: Audience | None = None
    ) -> ExpiryNotice | None:
        """The email for this token and interval, or None when nobody should receive it."""
        path, recipients = (audience or Audience(self.read)).of(token.holder_kind, token.holder_id)
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
        """One email (``send_many`` of one); a delivery that failed raises its error, so that a job retries."""
        [result] = self.send_many([(token_id, interval)])
        if result.error is not None:
            raise result.error
        return result.outcome

    def send_many(self, due: Sequence[tuple[int, int]]) -> list[MailResult]:
        """Send each (token id, interval)'s email, effectively once, over one connection: safe to run any number
        of times, concurrently, after any crash. One result per item, in order; a delivery that failed is a
        FAILED result and its interval stays open. An error recording the outcome (the database) raises."""
        items = list(dict.fromkeys(due))
        if not items:
            return []
        if not self.uow.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG):
            return [MailResult(token_id, interval, SendOutcome.FLAG_OFF) for token_id, interval in items]
        with contextlib.closing(open_session(self.mailer)) as session, self.uow.projecting_later():
            batch = _Batch(self, session)
            batch.run(items)
        self.uow.caught_up(batch.recordings)
        return [batch.results[item] for item in items]

    # The steps, each durable before the next (see the module) ----------------------------------------

    def _refusal(self, token: DeployToken | None, interval: int, now: datetime) -> SendOutcome | None:
        """Why this email must not be sent now, decided on the token as stored; None: it may be."""
        if token is None:
            return SendOutcome.INACTIVE  # no such token
        if interval in token.notified:
            return SendOutcome.ALREADY_SENT
        if not token.is_active(now):
            return SendOutcome.INACTIVE
        if token.interval_due(now) != interval:
            return SendOutcome.NOT_DUE
        return None

    def _claim(
        self, chunk: Sequence[tuple[int, int]], audience: Audience
    ) -> tuple[list[_Claim], dict[tuple[int, int], MailResult], list[Recording[Any]]]:
        """Claim the chunk's emails that may be sent, in one transaction; the others' results."""
        for _ in range(SAVE_RETRIES):
            tokens = load_tokens(self.uow, (token_id for token_id, _ in chunk))
            now = self.clock.now()
            claims: list[_Claim] = []
            decided: dict[tuple[int, int], MailResult] = {}
            for token_id, interval in chunk:
                token = tokens.get(token_id)
                refusal = self._refusal(token, interval, now)
                if refusal is not None:
                    decided[(token_id, interval)] = MailResult(token_id, interval, refusal)
                    continue
                assert token is not None
                notice = self.notice_for(token, interval, audience)
                if notice is None:  # the interval stays open for the next scan
                    decided[(token_id, interval)] = MailResult(token_id, interval, SendOutcome.NO_RECIPIENTS)
                    continue
                identifier = message_id(notice, self.context.domain)
                lease_until = now + self.lease
                if not token.claim_notification(
                    interval, message_id=identifier, lease_until=lease_until, actor=_NOTIFIER, now=now
                ):
                    decided[(token_id, interval)] = MailResult(
                        token_id, interval, SendOutcome.CLAIMED_ELSEWHERE
                    )
                    continue
                claims.append(_Claim(token, interval, notice, identifier, lease_until))
            if not claims:
                return [], decided, []
            try:
                recordings = self.uow.store.save(*distinct_tokens(claim.token for claim in claims))
            except IntegrityError:
                continue  # one of them changed since it was loaded: decide again on fresh state
            return claims, decided, recordings
        # Others kept winning the races on these tokens: they are sending them.
        return (
            [],
            {item: MailResult(*item, SendOutcome.CLAIMED_ELSEWHERE) for item in chunk},
            [],
        )

    def _record(self, claim: _Claim) -> list[Recording[Any]]:
        """``Notified`` for an accepted email, committed on its own (the crash window ends here)."""
        token = claim.token
        recipients = [recipient.email for recipient in claim.notice.recipients]
        for _ in range(SAVE_RETRIES):
            if token.deleted or not token.record_notification(
                claim.interval,
                message_id=claim.message_id,
                recipients=recipients,
                actor=_NOTIFIER,
                now=self.clock.now(),
            ):
                return []
            try:
                # On the records' own thread: like the batch's other saves, left to its one catch-up.
                with self.uow.projecting_later():
                    return self.uow.store.save(token)
            except IntegrityError:
                # Another writer changed the token since its claim (a revocation, say): record on fresh state.
                token = self.uow.get(DeployToken, deploy_token_uuid(token.token_id), "404 Token")
        raise Conflict(f"could not record the expiry email of token {token.token_id} as sent")

    def _release(self, claims: Sequence[tuple[_Claim, str]]) -> list[Recording[Any]]:
        """Give unsent claims back at once (``NotificationFailed``), so that a retry need not wait for the lease."""
        pending = [(claim.token, claim.interval, claim.message_id, error) for claim, error in claims]
        for _ in range(SAVE_RETRIES):
            now = self.clock.now()
            changed = [
                token
                for token, interval, identifier, error in pending
                if not token.deleted
                and token.release_notification(
                    interval, message_id=identifier, error=error, actor=_NOTIFIER, now=now
                )
            ]
            if not changed:
                return []
            try:
                return self.uow.store.save(*distinct_tokens(changed))
            except IntegrityError:
                fresh = load_tokens(self.uow, (token.token_id for token, *_ in pending))
                pending = [
                    (fresh[token.token_id], interval, identifier, error)
                    for token, interval, identifier, error in pending
                    if token.token_id in fresh
                ]
        log.warning("expiry email claims not given back; they lapse with their lease")
        return []


class _Batch:
    """One ``send_many``: chunks claimed and sent over one session, failures counted, claims given back."""

    def __init__(self, notifier: ExpiryNotifier, session: MailSession) -> None:
        self.notifier = notifier
        self.session = session
        self.audience = Audience(notifier.read)
        self.records = _Records(notifier._record)
        self.results: dict[tuple[int, int], MailResult] = {}
        self.recordings: list[Recording[Any]] = []
        self.failures_in_a_row = 0
        self.gave_up: MailDeliveryError | None = None
        self.may_be_delivered = False  # the current email's end of data may have been sent

    def run(self, items: Sequence[tuple[int, int]]) -> None:
        work = deque(items)
        try:
            while work:
                chunk = self._next_chunk(work)
                if self.gave_up is not None:
                    for item in chunk:
                        self.results[item] = MailResult(*item, SendOutcome.FAILED, self.gave_up)
                    continue
                claims, decided, recordings = self.notifier._claim(chunk, self.audience)
                self.results.update(decided)
                self.recordings = _later(self.recordings, recordings)
                work.extendleft(reversed(self._send(claims)))
        finally:
            self.records.close()  # the last record is committed (or its error raised) before returning
        self.recordings = _later(self.recordings, self.records.recordings)

    @staticmethod
    def _next_chunk(work: deque[tuple[int, int]]) -> list[tuple[int, int]]:
        """Up to CLAIM_CHUNK items, one per token: two intervals of one token are never claimed together."""
        chunk: list[tuple[int, int]] = []
        later: list[tuple[int, int]] = []
        tokens: set[int] = set()
        while work and len(chunk) < CLAIM_CHUNK:
            item = work.popleft()
            (later if item[0] in tokens else chunk).append(item)
            tokens.add(item[0])
        work.extendleft(reversed(later))
        return chunk

    def _ready_to_send(self, claim: _Claim) -> None:
        """Right before an email's end of data: the previous one is recorded, and this claim's lease is good."""
        self.records.wait()
        if self.notifier.clock.now() >= claim.lease_until - self.notifier.lease / 2:
            raise _LeaseRunningOut
        self.may_be_delivered = True

    def _send(self, claims: list[_Claim]) -> list[tuple[int, int]]:
        """Send the claimed emails in turn; returns those given back to be claimed afresh (lease running out)."""
        notifier = self.notifier
        release: list[tuple[_Claim, str]] = []
        given_back: list[tuple[int, int]] = []
        index = 0
        try:
            while index < len(claims):
                claim = claims[index]
                self.may_be_delivered = False
                if self.gave_up is not None:
                    self._failed(claim, self.gave_up)
                    release.append((claim, str(self.gave_up)))
                    index += 1
                    continue
                # Composed while the previous email's record is being written: the record mostly waits on
                # the database's flush, so the two overlap.
                message = compose(
                    claim.notice,
                    sender=notifier.context.sender,
                    domain=notifier.context.domain,
                    now=notifier.clock.now(),
                )
                try:
                    self.session.send(message, before_end=partial(self._ready_to_send, claim))
                except _LeaseRunningOut:
                    rest = claims[index:]
                    release.extend(
                        (unsent, "claim given back unsent: its lease was running out") for unsent in rest
                    )
                    if index == 0:  # not even the first email fits in a fresh lease: do not loop on it
                        self.gave_up = MailDeliveryError(
                            f"the claim's lease ({notifier.lease.total_seconds():g} s) is too short to send an email "
                            "in (DEPLOY_TOKENS_NOTIFY_LEASE_SECONDS)"
                        )
                        for unsent in rest:
                            self._failed(unsent, self.gave_up)
                    else:
                        given_back = [unsent.key for unsent in rest]
                    index = len(claims)
                    break
                except MailDeliveryError as error:
                    index += 1
                    self._failed(claim, error)
                    if not error.outcome_unknown:  # surely not delivered: give the interval back at once
                        release.append((claim, str(error)))
                    if error.smtp_code is None and not error.refused:
                        self.failures_in_a_row += 1
                        if self.failures_in_a_row >= _FAILURES_BEFORE_GIVING_UP:
                            self.gave_up = error
                    else:  # the server answered about this message: the connection itself is fine
                        self.failures_in_a_row = 0
                    continue
                index += 1
                self.may_be_delivered = False  # it was: from here on, ``index`` points past it
                self.failures_in_a_row = 0
                # Nothing between the server's acceptance and handing over the record: this is the crash window.
                self.records.submit(claim)
                self.results[claim.key] = MailResult(*claim.key, SendOutcome.SENT)
                log.info(
                    "expiry email sent", extra={"token_id": claim.token.token_id, "interval": claim.interval}
                )
        except BaseException:
            # Recording failed (the database) or the job is being stopped: what is surely unsent goes back if
            # the store lets it; the email in flight, if its end of data went out, keeps its claim until the lease
            # ends.
            not_sent = claims[index + 1 :] if self.may_be_delivered else claims[index:]
            with contextlib.suppress(Exception):
                notifier._release(
                    [*release, *((stopped, "the sender stopped before sending it") for stopped in not_sent)]
                )
            raise
        self.recordings = _later(self.recordings, notifier._release(release))
        return given_back

    def _failed(self, claim: _Claim, error: MailDeliveryError) -> None:
        self.results[claim.key] = MailResult(*claim.key, SendOutcome.FAILED, error)
        log.warning(
            "expiry email not delivered; the interval stays open",
            extra={"token_id": claim.token.token_id, "interval": claim.interval, "error": str(error)},
        )
