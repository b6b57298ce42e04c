"""The claims that keep usernames, namespace paths and user emails unique, across processes.

A claim is a stream whose id is derived from the claimed text (lower case), saved in the same transaction
as its owner: two owners cannot both create or take the same claim, because the store refuses a second event
at the same version of one stream. A path is freed when its holder is deleted or moves (``Released``) and
taken again by whoever claims it next (``Reclaimed``), so paths can be reused while ids never are.
"""

from __future__ import annotations

from datetime import datetime

from eventsourcing.domain import Aggregate

from domain.streams import email_claim_id, path_claim_id


class PathClaim(Aggregate):
    """Claims a username or namespace path; saved atomically with its owner so two cannot share it."""

    TOPIC = "deploy_tokens:PathClaim"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:PathClaim.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:PathClaim.Created"
        full_path: str
        owner_kind: str
        owner_id: int

    class Released(Aggregate.Event):
        """The owner was deleted or moved away: the path is free."""

        TOPIC = "deploy_tokens:PathClaim.Released"

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, PathClaim)
            aggregate.released = True

    class Reclaimed(Aggregate.Event):
        """A free path taken by a new owner (never the same object as before: ids are never reused)."""

        TOPIC = "deploy_tokens:PathClaim.Reclaimed"
        full_path: str
        owner_kind: str
        owner_id: int

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, PathClaim)
            aggregate.full_path = self.full_path
            aggregate.owner_kind = self.owner_kind
            aggregate.owner_id = self.owner_id
            aggregate.released = False

    def __init__(self, full_path: str, owner_kind: str, owner_id: int) -> None:
        self.full_path = full_path
        self.owner_kind = owner_kind
        self.owner_id = owner_id
        self.released = False

    @classmethod
    def claim(cls, full_path: str, owner_kind: str, owner_id: int, now: datetime) -> PathClaim:
        return cls._create(
            cls.Created,
            id=path_claim_id(full_path),
            timestamp=now,
            full_path=full_path,
            owner_kind=owner_kind,
            owner_id=owner_id,
        )

    def held_by(self, owner_kind: str, owner_id: int) -> bool:
        return not self.released and (self.owner_kind, self.owner_id) == (owner_kind, owner_id)

    def release(self, *, now: datetime) -> None:
        if not self.released:
            self.trigger_event(self.Released, timestamp=now)

    def reclaim(self, full_path: str, owner_kind: str, owner_id: int, *, now: datetime) -> None:
        assert self.released, "only a released path can be claimed again"
        self.trigger_event(
            self.Reclaimed, timestamp=now, full_path=full_path, owner_kind=owner_kind, owner_id=owner_id
        )


class EmailClaim(Aggregate):
    """Claims a user's email address (any case): no two users share one (GitLab's ``has already been taken``)."""

    TOPIC = "deploy_tokens:EmailClaim"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:EmailClaim.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:EmailClaim.Created"
        email: str
        user_id: int

    class Released(Aggregate.Event):
        TOPIC = "deploy_tokens:EmailClaim.Released"

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, EmailClaim)
            aggregate.released = True

    class Reclaimed(Aggregate.Event):
        TOPIC = "deploy_tokens:EmailClaim.Reclaimed"
        email: str
        user_id: int

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, EmailClaim)
            aggregate.email = self.email
            aggregate.user_id = self.user_id
            aggregate.released = False

    def __init__(self, email: str, user_id: int) -> None:
        self.email = email
        self.user_id = user_id
        self.released = False

    @classmethod
    def claim(cls, email: str, user_id: int, now: datetime) -> EmailClaim:
        return cls._create(cls.Created, id=email_claim_id(email), timestamp=now, email=email, user_id=user_id)

    def held_by(self, user_id: int) -> bool:
        return not self.released and self.user_id == user_id

    def release(self, *, now: datetime) -> None:
        if not self.released:
            self.trigger_event(self.Released, timestamp=now)

    def reclaim(self, email: str, user_id: int, *, now: datetime) -> None:
        assert self.released, "only a released email can be claimed again"
        self.trigger_event(self.Reclaimed, timestamp=now, email=email, user_id=user_id)
