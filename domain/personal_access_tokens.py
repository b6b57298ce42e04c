"""Personal access tokens: a user's credential for the management API."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from typing import Any, Final

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.deploy_token import normalise_expiry
from domain.errors import ErrorCollector
from domain.names import validate_display_name
from domain.streams import stream_id

PERSONAL_ACCESS_TOKEN_SCOPES: Final[tuple[str, ...]] = ("api", "read_api", "read_user", "sudo", "admin_mode")


class PersonalAccessToken(Aggregate):
    """A user's credential for the management API. Only its keyed digest is recorded."""

    TOPIC = "deploy_tokens:PersonalAccessToken"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:PersonalAccessToken.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:PersonalAccessToken.Created"
        pat_id: int
        user_id: int
        name: str
        scopes: list[str]
        expires_at: datetime | None
        digest: str
        actor: dict[str, Any]

    class Revoked(Aggregate.Event):
        TOPIC = "deploy_tokens:PersonalAccessToken.Revoked"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, PersonalAccessToken)
            aggregate.revoked = True

    def __init__(
        self,
        pat_id: int,
        user_id: int,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        digest: str,
        actor: dict[str, Any],
    ) -> None:
        self.pat_id = pat_id
        self.user_id = user_id
        self.name = name
        self.scopes = tuple(scopes)
        self.expires_at = expires_at
        self.digest = digest
        self.revoked = False

    @classmethod
    def issue(
        cls,
        *,
        pat_id: int,
        user_id: int,
        name: str,
        scopes: Iterable[str],
        expires_at: date | datetime | None,
        digest: str,
        actor: Actor,
        now: datetime,
    ) -> PersonalAccessToken:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        given = list(scopes)
        unknown = sorted(set(given) - set(PERSONAL_ACCESS_TOKEN_SCOPES))
        if not given:
            errors.add("scopes", "can't be blank")
        elif unknown:
            errors.add("scopes", f"does not have a valid value: {', '.join(unknown)}")
        checked_expiry = errors.check(normalise_expiry, expires_at)
        if checked_expiry is not None and checked_expiry <= now:
            errors.add("expires_at", "must be in the future")
        errors.raise_if_any()
        assert checked_name
        ordered = [scope for scope in PERSONAL_ACCESS_TOKEN_SCOPES if scope in given]
        return cls._create(
            cls.Created,
            id=stream_id("pat", pat_id),
            timestamp=now,
            pat_id=pat_id,
            user_id=user_id,
            name=checked_name,
            scopes=ordered,
            expires_at=checked_expiry,
            digest=digest,
            actor=actor.as_event_data(),
        )

    def revoke(self, *, actor: Actor, now: datetime) -> bool:
        if self.revoked:
            return False
        self.trigger_event(self.Revoked, timestamp=now, actor=actor.as_event_data())
        return True
