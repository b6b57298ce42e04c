"""Groups and subgroups: a tree of namespaces whose members' roles reach everything below them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ErrorCollector
from domain.membership import Membership
from domain.names import GROUP_ROUTES, RESERVED_TOP_LEVEL_PATHS, validate_display_name, validate_path
from domain.streams import stream_id


class Group(Membership):
    TOPIC = "deploy_tokens:Group"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:Group.Created"
        group_id: int
        name: str
        path: str
        parent_id: int | None
        full_path: str
        ancestor_ids: list[int]
        actor: dict[str, Any]

    class MemberSet(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.MemberSet"
        user_id: int
        access_level: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.members[self.user_id] = self.access_level

    class MemberRemoved(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.MemberRemoved"
        user_id: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.members.pop(self.user_id, None)

    class DependencyProxyChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.DependencyProxyChanged"
        enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.dependency_proxy_enabled = self.enabled

    def __init__(
        self,
        group_id: int,
        name: str,
        path: str,
        parent_id: int | None,
        full_path: str,
        ancestor_ids: list[int],
        actor: dict[str, Any],
    ) -> None:
        self.group_id = group_id
        self.name = name
        self.path = path
        self.parent_id = parent_id
        self.full_path = full_path
        self.ancestor_ids = tuple(ancestor_ids)
        self.members: dict[int, int] = {}
        self.dependency_proxy_enabled = True

    @classmethod
    def found(
        cls, *, group_id: int, name: str, path: str, parent: Group | None, actor: Actor, now: datetime
    ) -> Group:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        reserved = GROUP_ROUTES if parent else RESERVED_TOP_LEVEL_PATHS
        checked_path = errors.check(lambda value: validate_path(value, "path", reserved), path)
        errors.raise_if_any()
        assert checked_name and checked_path
        full_path = f"{parent.full_path}/{checked_path}" if parent else checked_path
        ancestors = [*parent.ancestor_ids, parent.group_id] if parent else []
        return cls._create(
            cls.Created,
            id=stream_id("namespace", group_id),
            timestamp=now,
            group_id=group_id,
            name=checked_name,
            path=checked_path,
            parent_id=parent.group_id if parent else None,
            full_path=full_path,
            ancestor_ids=ancestors,
            actor=actor.as_event_data(),
        )

    def _member_set_event(self) -> type[Aggregate.Event]:
        return self.MemberSet

    def _member_removed_event(self) -> type[Aggregate.Event]:
        return self.MemberRemoved

    def set_dependency_proxy(self, enabled: bool, *, actor: Actor, now: datetime) -> bool:
        if self.dependency_proxy_enabled == enabled:
            return False
        self.trigger_event(
            self.DependencyProxyChanged, timestamp=now, enabled=enabled, actor=actor.as_event_data()
        )
        return True
