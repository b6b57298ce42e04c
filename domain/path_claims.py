"""The claim on a username or namespace path that keeps it unique."""

from __future__ import annotations

from datetime import datetime

from eventsourcing.domain import Aggregate

from domain.streams import path_claim_id


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

    def __init__(self, full_path: str, owner_kind: str, owner_id: int) -> None:
        self.full_path = full_path
        self.owner_kind = owner_kind
        self.owner_id = owner_id

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
