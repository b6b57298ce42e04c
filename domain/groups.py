"""Groups and subgroups: a tree of namespaces whose members' roles reach everything below them.

A group records its place in the tree (parent, ancestors, full path) itself, and so does every project. A
rename or transfer therefore records ``Moved`` on the group and on everything below it, in one transaction;
a deletion records ``Deleted`` on all of them. A subgroup or project created in (or moved into) a group
records ``ChildAdded`` on that group, so that it conflicts with a concurrent move or deletion of the group
(the store refuses the second writer of one version) instead of landing at a path that no longer exists.
"""

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

    class ChildAdded(Aggregate.Event):
        """Bookkeeping: a subgroup or project was created in or moved into this group (see the module doc)."""

        TOPIC = "deploy_tokens:Group.ChildAdded"
        child_kind: str
        child_id: int
        actor: dict[str, Any]

    class NameChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Group.NameChanged"
        name: str
        previous_name: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.name = self.name

    class Moved(Aggregate.Event):
        """The group's full path changed: its own path (``path_changed``), its parent (``transferred``), or a
        group above it moved (``group_moved``, ``moved_with`` naming that group; 0 otherwise)."""

        TOPIC = "deploy_tokens:Group.Moved"
        path: str
        parent_id: int | None
        full_path: str
        ancestor_ids: list[int]
        previous_full_path: str
        cause: str
        moved_with: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.path = self.path
            aggregate.parent_id = self.parent_id
            aggregate.full_path = self.full_path
            aggregate.ancestor_ids = tuple(self.ancestor_ids)

    class Deleted(Aggregate.Event):
        """The group is gone; ``deleted_with`` is 0 when it was deleted itself, else the group above whose
        deletion took it."""

        TOPIC = "deploy_tokens:Group.Deleted"
        deleted_with: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Group)
            aggregate.deleted = True

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
        self.deleted = False

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

    # Lifecycle: renaming, moving, deleting -------------------------------------------------------------

    def add_child(self, child_kind: str, child_id: int, *, actor: Actor, now: datetime) -> None:
        self.trigger_event(
            self.ChildAdded,
            timestamp=now,
            child_kind=child_kind,
            child_id=child_id,
            actor=actor.as_event_data(),
        )

    def change_name(self, name: str, *, actor: Actor, now: datetime) -> bool:
        checked = validate_display_name(name)
        if checked == self.name:
            return False
        self.trigger_event(
            self.NameChanged,
            timestamp=now,
            name=checked,
            previous_name=self.name,
            actor=actor.as_event_data(),
        )
        return True

    def move(
        self, *, path: str, parent: Group | None, cause: str, moved_with: int, actor: Actor, now: datetime
    ) -> bool:
        """Record the group's new place; ``parent`` is the (already moved) group it now lives in, or None."""
        full_path = f"{parent.full_path}/{path}" if parent else path
        ancestors = [*parent.ancestor_ids, parent.group_id] if parent else []
        parent_id = parent.group_id if parent else None
        if (full_path, ancestors, parent_id) == (self.full_path, list(self.ancestor_ids), self.parent_id):
            return False
        self.trigger_event(
            self.Moved,
            timestamp=now,
            path=path,
            parent_id=parent_id,
            full_path=full_path,
            ancestor_ids=ancestors,
            previous_full_path=self.full_path,
            cause=cause,
            moved_with=moved_with,
            actor=actor.as_event_data(),
        )
        return True

    def delete(self, *, deleted_with: int, actor: Actor, now: datetime) -> None:
        if not self.deleted:
            self.trigger_event(
                self.Deleted, timestamp=now, deleted_with=deleted_with, actor=actor.as_event_data()
            )


def checked_group_path(path: str | None, *, top_level: bool) -> str:
    """A path chosen for a group (behaviour [reserved-paths]): top level may not be a route's name, a subgroup
    may not be one of GitLab's group routes."""
    return validate_path(path, "path", RESERVED_TOP_LEVEL_PATHS if top_level else GROUP_ROUTES)
