"""The DeployToken aggregate: a token's whole life is the list of its events.

Topics are pinned (``TOPIC``) so that moving or renaming this module never breaks replay of stored events.
Every event carries the actor (who, and from which address) because auditors replay this history (behaviour [history]).
Event bodies only assign values passed in: ids, times and secrets are decided before an event is triggered.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.clock import as_utc, start_of_day
from domain.errors import ErrorCollector, TokenDeleted, ValidationError
from domain.scopes import canonical_scopes
from domain.text import check_text

HolderKind = Literal["project", "group"]

NAME_MAX_LENGTH: Final = 255
USERNAME_MAX_LENGTH: Final = 255
USERNAME_PATTERN: Final = re.compile(r"\A[a-zA-Z0-9.+_-]+\Z")
# Default usernames (``default_username``) are kept for tokens created without one: a custom name of that
# shape would pass for another token's default in Git's username check and in audit records.
DEFAULT_USERNAME_PATTERN: Final = re.compile(r"\Agitlab\+deploy-token-[0-9]+\Z", re.IGNORECASE)
CI_TOKEN_NAME: Final = "gitlab-deploy-token"

# Notification intervals (behaviour [notifications]), most distant first; the value is GitLab's ``days_to_expire``.
INTERVALS: Final[tuple[int, ...]] = (60, 30, 7)
INTERVAL_NAMES: Final[dict[int, str]] = {60: "sixty_days", 30: "thirty_days", 7: "seven_days"}

# behaviour [expiry]: the range of expiry instants accepted (the latest is the calendar's own end).
EARLIEST_EXPIRY: Final = datetime(1900, 1, 1, tzinfo=UTC)
EXPIRY_OUT_OF_RANGE: Final = "must be between 1900-01-01 and 9999-12-31"

_ID_NAMESPACE: Final = UUID("6f1d3c0e-5a4b-4f8e-9c61-2a7d8e9b0c11")


def deploy_token_uuid(token_id: int) -> UUID:
    """The stream id of token ``token_id``: deterministic, so integer ids are claimed by the event store."""
    return uuid5(_ID_NAMESPACE, f"deploy-token:{token_id}")


def default_username(token_id: int) -> str:
    return f"gitlab+deploy-token-{token_id}"


def validate_name(name: str | None) -> str:
    if name is None or not name.strip():
        raise ValidationError.single("name", "can't be blank")
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError.single("name", f"is too long (maximum is {NAME_MAX_LENGTH} characters)")
    return check_text(name, "name")


def validate_username(username: str | None) -> str | None:
    """behaviour [username]: an empty username means "use the default"; anything else must match GitLab's
    pattern and must not
    look like a default username."""
    if username is None or username == "":
        return None
    if len(username) > USERNAME_MAX_LENGTH:
        raise ValidationError.single("username", f"is too long (maximum is {USERNAME_MAX_LENGTH} characters)")
    if not USERNAME_PATTERN.match(username):
        raise ValidationError.single("username", "can contain only letters, digits, '_', '-', '+', and '.'")
    if DEFAULT_USERNAME_PATTERN.match(username):
        raise ValidationError.single(
            "username",
            "is reserved for default usernames (gitlab+deploy-token-<id>): leave it empty for the default",
        )
    return username


def normalise_expiry(expires_at: date | datetime | None) -> datetime | None:
    """behaviour [expiry]: a date means 00:00 UTC of that date; a datetime is kept as that instant, in UTC.

    Any instant from ``EARLIEST_EXPIRY`` on is accepted, today and the past included (such a token is simply
    expired): GitLab validates only that the value is ISO 8601. The bound keeps every computation on the
    instant (the notification windows count days back from it) inside the calendar.
    """
    if expires_at is None:
        return None
    try:
        instant = as_utc(expires_at) if isinstance(expires_at, datetime) else start_of_day(expires_at)
    except OverflowError:  # an offset that pushes the instant past year 9999 (or before year 1)
        raise ValidationError.single("expires_at", EXPIRY_OUT_OF_RANGE) from None
    if instant < EARLIEST_EXPIRY:
        raise ValidationError.single("expires_at", EXPIRY_OUT_OF_RANGE)
    return instant


def is_federated(creator: dict[str, Any]) -> bool:
    """Whether a token created by ``creator`` (a ``Created`` event's actor) came from a token exchange."""
    return creator.get("kind") == "federated"


def days_left(expires_at: datetime, today: date) -> int:
    """Whole days from the scan's UTC date to the expiry date, as GitLab's expiring worker counts them."""
    return (expires_at.date() - today).days


def due_interval(expires_at: datetime, today: date) -> int | None:
    """GitLab's windows: 0-7 days left -> 7, 8-30 -> 30, 31-60 -> 60; otherwise none."""
    left = days_left(expires_at, today)
    if left < 0:
        return None
    for interval in reversed(INTERVALS):
        if left <= interval:
            return interval
    return None


@dataclass(frozen=True)
class NotificationState:
    interval: int
    message_id: str
    recipients: tuple[str, ...]
    at: datetime


class DeployToken(Aggregate):
    TOPIC = "deploy_tokens:DeployToken"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:DeployToken.Event"

    class Created(Aggregate.Created):
        """A token was issued. Only the keyed digest of its value is recorded, never the value (behaviour [value])."""

        TOPIC = "deploy_tokens:DeployToken.Created"
        token_id: int
        name: str
        username: str | None
        holder_kind: str
        holder_id: int
        expires_at: datetime | None
        digest: str
        actor: dict[str, Any]

    class Scoped(Aggregate.Event):
        """The scopes granted: at creation, and at any later narrowing."""

        TOPIC = "deploy_tokens:DeployToken.Scoped"
        scopes: list[str]
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.scopes = tuple(self.scopes)

    class Revoked(Aggregate.Event):
        TOPIC = "deploy_tokens:DeployToken.Revoked"
        reason: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.revoked_at = self.timestamp
            aggregate.previous_digest = None
            aggregate.previous_valid_until = None

    class Rotated(Aggregate.Event):
        """A new secret replaced the old one; the old one may stay valid until ``previous_valid_until``."""

        TOPIC = "deploy_tokens:DeployToken.Rotated"
        digest: str
        previous_valid_until: datetime | None
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.previous_digest = aggregate.digest if self.previous_valid_until else None
            aggregate.previous_valid_until = self.previous_valid_until
            aggregate.digest = self.digest

    class Expired(Aggregate.Event):
        """behaviour [expiry-event]: the expiry instant has passed, and the service noticed."""

        TOPIC = "deploy_tokens:DeployToken.Expired"
        expires_at: datetime
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.expiry_recorded = True

    class NotificationDue(Aggregate.Event):
        """The daily scan found one interval's email due (the intent); it stays due until Notified."""

        TOPIC = "deploy_tokens:DeployToken.NotificationDue"
        interval: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.due_intervals.add(self.interval)

    class NotificationClaimed(Aggregate.Event):
        """A sender took the right to send one interval's email until ``lease_until`` (behaviour [notifications])."""

        TOPIC = "deploy_tokens:DeployToken.NotificationClaimed"
        interval: int
        message_id: str
        lease_until: datetime
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.claims[self.interval] = self.lease_until

    class NotificationFailed(Aggregate.Event):
        """The claimed send failed (SMTP refused or unreachable): the claim is released, the interval stays open."""

        TOPIC = "deploy_tokens:DeployToken.NotificationFailed"
        interval: int
        message_id: str
        error: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.claims.pop(self.interval, None)

    class Notified(Aggregate.Event):
        """The SMTP server accepted one interval's expiry email (behaviour [notifications])."""

        TOPIC = "deploy_tokens:DeployToken.Notified"
        interval: int
        message_id: str
        recipients: list[str]
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.notified[self.interval] = NotificationState(
                self.interval, self.message_id, tuple(self.recipients), self.timestamp
            )
            aggregate.claims.pop(self.interval, None)

    class Deleted(Aggregate.Event):
        """GitLab's DELETE: the token disappears and stops working; its history stays for auditors."""

        TOPIC = "deploy_tokens:DeployToken.Deleted"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, DeployToken)
            aggregate.deleted_at = self.timestamp

    def __init__(
        self,
        token_id: int,
        name: str,
        username: str | None,
        holder_kind: str,
        holder_id: int,
        expires_at: datetime | None,
        digest: str,
        actor: dict[str, Any],
    ) -> None:
        self.token_id = token_id
        self.name = name
        self.custom_username = username
        self.holder_kind = holder_kind
        self.holder_id = holder_id
        self.expires_at = expires_at
        self.digest = digest
        self.creator = actor
        self.scopes: tuple[str, ...] = ()
        self.revoked_at: datetime | None = None
        self.deleted_at: datetime | None = None
        self.expiry_recorded = False
        self.previous_digest: str | None = None
        self.previous_valid_until: datetime | None = None
        self.notified: dict[int, NotificationState] = {}
        self.claims: dict[int, datetime] = {}
        self.due_intervals: set[int] = set()

    @classmethod
    def issue(
        cls,
        *,
        token_id: int,
        name: str,
        username: str | None,
        holder_kind: HolderKind,
        holder_id: int,
        scopes: Iterable[str],
        expires_at: date | datetime | None,
        digest: str,
        actor: Actor,
        now: datetime,
    ) -> DeployToken:
        """Validate every field first (all errors at once), then record Created and Scoped together."""
        errors = ErrorCollector()
        checked_name = errors.check(validate_name, name)
        checked_username = errors.check(validate_username, username)
        checked_scopes = errors.check(canonical_scopes, scopes)
        # behaviour [expiry]: an expiry today or in the past is accepted; the token is then simply expired.
        checked_expiry = errors.check(normalise_expiry, expires_at)
        errors.raise_if_any()
        assert checked_name is not None and checked_scopes is not None
        token = cls._create(
            cls.Created,
            id=deploy_token_uuid(token_id),
            timestamp=now,
            token_id=token_id,
            name=checked_name,
            username=checked_username,
            holder_kind=holder_kind,
            holder_id=holder_id,
            expires_at=checked_expiry,
            digest=digest,
            actor=actor.as_event_data(),
        )
        token.trigger_event(
            cls.Scoped, timestamp=now, scopes=list(checked_scopes), actor=actor.as_event_data()
        )
        return token

    # Queries -------------------------------------------------------------------------------------------

    @property
    def username(self) -> str:
        return self.custom_username or default_username(self.token_id)

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def federated(self) -> bool:
        """Issued in exchange for an ID token (behaviour [federation]): short-lived, and never mailed about."""
        return is_federated(self.creator)

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    def is_expired(self, now: datetime) -> bool:
        """behaviour [expiry], the one rule everywhere: expired iff ``now >= expires_at``."""
        return self.expires_at is not None and now >= self.expires_at

    def is_active(self, now: datetime) -> bool:
        return not (self.revoked or self.deleted or self.is_expired(now))

    def interval_due(self, now: datetime) -> int | None:
        """The interval whose email is due now and not yet sent; no back-fill of larger intervals."""
        if self.expires_at is None or self.federated or not self.is_active(now):
            return None
        interval = due_interval(self.expires_at, now.date())
        if interval is None or interval in self.notified:
            return None
        return interval

    # Commands ------------------------------------------------------------------------------------------

    def _ensure_not_deleted(self) -> None:
        if self.deleted:
            raise TokenDeleted(self.token_id)

    def narrow_scopes(self, scopes: Iterable[str], *, actor: Actor, now: datetime) -> bool:
        """Scopes may only shrink: widening a live credential would need a new token."""
        self._ensure_not_deleted()
        narrowed = canonical_scopes(scopes)
        extra = sorted(set(narrowed) - set(self.scopes))
        if extra:
            raise ValidationError.single("scopes", f"can only be narrowed; not granted: {', '.join(extra)}")
        if narrowed == self.scopes:
            return False
        self.trigger_event(self.Scoped, timestamp=now, scopes=list(narrowed), actor=actor.as_event_data())
        return True

    def revoke(self, *, actor: Actor, now: datetime, reason: str = "revoked") -> bool:
        """Idempotent: revoking a revoked token records nothing (behaviour [manage])."""
        self._ensure_not_deleted()
        if self.revoked:
            return False
        self.trigger_event(self.Revoked, timestamp=now, reason=reason, actor=actor.as_event_data())
        return True

    def rotate(self, *, digest: str, grace_until: datetime | None, actor: Actor, now: datetime) -> None:
        self._ensure_not_deleted()
        if not self.is_active(now):
            raise ValidationError.single("base", "only an active token can be rotated")
        if grace_until is not None and grace_until <= now:
            grace_until = None
        self.trigger_event(
            self.Rotated,
            timestamp=now,
            digest=digest,
            previous_valid_until=grace_until,
            actor=actor.as_event_data(),
        )

    def record_expiry(self, *, now: datetime) -> bool:
        """behaviour [expiry-event], recorded once and only once the expiry has passed."""
        self._ensure_not_deleted()
        if self.expiry_recorded or self.expires_at is None or now < self.expires_at:
            return False
        self.trigger_event(
            self.Expired,
            timestamp=now,
            expires_at=self.expires_at,
            actor=Actor.system("expiry-scan").as_event_data(),
        )
        return True

    def mark_notification_due(self, interval: int, *, now: datetime) -> bool:
        """Record the intent to send ``interval``'s email, once; later scans re-dispatch without new events.
        Never for a federated token (behaviour [federation]): it is not mailed about."""
        self._ensure_not_deleted()
        _check_interval(interval)
        if self.federated or interval in self.notified or interval in self.due_intervals:
            return False
        self.trigger_event(
            self.NotificationDue,
            timestamp=now,
            interval=interval,
            actor=Actor.system("expiry-scan").as_event_data(),
        )
        return True

    def claim_notification(
        self, interval: int, *, message_id: str, lease_until: datetime, actor: Actor, now: datetime
    ) -> bool:
        """Take the right to send ``interval``'s email. Refused while notified or while another lease runs, and
        always for a federated token."""
        self._ensure_not_deleted()
        _check_interval(interval)
        if self.federated or interval in self.notified:
            return False
        current = self.claims.get(interval)
        if current is not None and now < current:
            return False
        self.trigger_event(
            self.NotificationClaimed,
            timestamp=now,
            interval=interval,
            message_id=message_id,
            lease_until=lease_until,
            actor=actor.as_event_data(),
        )
        return True

    def release_notification(
        self, interval: int, *, message_id: str, error: str, actor: Actor, now: datetime
    ) -> bool:
        """The claim holder gives the interval back after a failed send, so a retry need not wait for the lease."""
        self._ensure_not_deleted()
        _check_interval(interval)
        if interval in self.notified or interval not in self.claims:
            return False
        self.trigger_event(
            self.NotificationFailed,
            timestamp=now,
            interval=interval,
            message_id=message_id,
            error=error[:500],
            actor=actor.as_event_data(),
        )
        return True

    def record_notification(
        self, interval: int, *, message_id: str, recipients: Iterable[str], actor: Actor, now: datetime
    ) -> bool:
        """At most once per interval: a second record of the same interval is a no-op."""
        self._ensure_not_deleted()
        _check_interval(interval)
        if interval in self.notified:
            return False
        self.trigger_event(
            self.Notified,
            timestamp=now,
            interval=interval,
            message_id=message_id,
            recipients=sorted(recipients),
            actor=actor.as_event_data(),
        )
        return True

    def delete(self, *, actor: Actor, now: datetime) -> None:
        self._ensure_not_deleted()
        self.trigger_event(self.Deleted, timestamp=now, actor=actor.as_event_data())


def _check_interval(interval: int) -> None:
    if interval not in INTERVALS:
        raise ValidationError.single("interval", f"must be one of {', '.join(map(str, INTERVALS))}")
