"""GitLab's access levels, and the members holding them on a group or project."""

from __future__ import annotations

from datetime import datetime
from enum import IntEnum
from typing import Final

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ValidationError


class AccessLevel(IntEnum):
    """GitLab's access levels; a member's level on a group applies to everything below it."""

    NO_ACCESS = 0
    GUEST = 10
    REPORTER = 20
    DEVELOPER = 30
    MAINTAINER = 40
    OWNER = 50


MEMBER_LEVELS: Final = frozenset({10, 20, 30, 40, 50})


def validate_access_level(level: int) -> AccessLevel:
    if level not in MEMBER_LEVELS:
        raise ValidationError.single("access_level", "does not have a valid value")
    return AccessLevel(level)


class Membership(Aggregate):
    """Members with access levels, shared by groups and projects."""

    members: dict[int, int]

    def _member_set_event(self) -> type[Aggregate.Event]:
        raise NotImplementedError

    def _member_removed_event(self) -> type[Aggregate.Event]:
        raise NotImplementedError

    def owner_ids(self) -> frozenset[int]:
        """Users holding Owner directly on this group or project."""
        return frozenset(user_id for user_id, level in self.members.items() if level >= AccessLevel.OWNER)

    def set_member(self, user_id: int, level: int, *, actor: Actor, now: datetime) -> bool:
        checked = validate_access_level(level)
        if self.members.get(user_id) == int(checked):
            return False
        self.trigger_event(
            self._member_set_event(),
            timestamp=now,
            user_id=user_id,
            access_level=int(checked),
            actor=actor.as_event_data(),
        )
        return True

    def remove_member(self, user_id: int, *, actor: Actor, now: datetime) -> bool:
        if user_id not in self.members:
            return False
        self.trigger_event(
            self._member_removed_event(), timestamp=now, user_id=user_id, actor=actor.as_event_data()
        )
        return True
