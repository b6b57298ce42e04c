"""Projects: in a group (inheriting its members' roles) or in a user's personal namespace.

A project records its place (namespace, the groups above it, full path) itself: a rename, a transfer, or a
move of a group above it records ``Moved``; a deletion, or the deletion of a group above it, ``Deleted``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import ErrorCollector
from domain.groups import Group
from domain.membership import Membership
from domain.names import RESERVED_PROJECT_PATHS, validate_display_name, validate_path
from domain.streams import stream_id
from domain.users import UserNamespace


class Project(Membership):
    TOPIC = "deploy_tokens:Project"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:Project.Created"
        project_id: int
        name: str
        path: str
        namespace_id: int
        namespace_kind: str
        group_ids: list[int]
        full_path: str
        repository_enabled: bool
        container_registry_enabled: bool
        actor: dict[str, Any]

    class FeaturesChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.FeaturesChanged"
        repository_enabled: bool
        container_registry_enabled: bool
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.repository_enabled = self.repository_enabled
            aggregate.container_registry_enabled = self.container_registry_enabled

    class NameChanged(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.NameChanged"
        name: str
        previous_name: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.name = self.name

    class Moved(Aggregate.Event):
        """The project's full path changed: its own path (``path_changed``), its namespace (``transferred``),
        or a group above it moved (``group_moved``, ``moved_with`` naming that group; 0 otherwise)."""

        TOPIC = "deploy_tokens:Project.Moved"
        path: str
        namespace_id: int
        namespace_kind: str
        group_ids: list[int]
        full_path: str
        previous_full_path: str
        cause: str
        moved_with: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.path = self.path
            aggregate.namespace_id = self.namespace_id
            aggregate.namespace_kind = self.namespace_kind
            aggregate.group_ids = tuple(self.group_ids)
            aggregate.full_path = self.full_path

    class Deleted(Aggregate.Event):
        """The project is gone; ``deleted_with`` is 0 when it was deleted itself, else the group whose deletion
        took it."""

        TOPIC = "deploy_tokens:Project.Deleted"
        deleted_with: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.deleted = True

    class MemberSet(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.MemberSet"
        user_id: int
        access_level: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.members[self.user_id] = self.access_level

    class MemberRemoved(Aggregate.Event):
        TOPIC = "deploy_tokens:Project.MemberRemoved"
        user_id: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Project)
            aggregate.members.pop(self.user_id, None)

    def __init__(
        self,
        project_id: int,
        name: str,
        path: str,
        namespace_id: int,
        namespace_kind: str,
        group_ids: list[int],
        full_path: str,
        repository_enabled: bool,
        container_registry_enabled: bool,
        actor: dict[str, Any],
    ) -> None:
        self.project_id = project_id
        self.name = name
        self.path = path
        self.namespace_id = namespace_id
        self.namespace_kind = namespace_kind
        self.group_ids = tuple(group_ids)
        self.full_path = full_path
        self.repository_enabled = repository_enabled
        self.container_registry_enabled = container_registry_enabled
        self.members: dict[int, int] = {}
        self.deleted = False

    @classmethod
    def found(
        cls,
        *,
        project_id: int,
        name: str,
        path: str | None,
        namespace: Group | UserNamespace,
        repository_enabled: bool,
        container_registry_enabled: bool,
        actor: Actor,
        now: datetime,
    ) -> Project:
        errors = ErrorCollector()
        checked_name = errors.check(validate_display_name, name)
        checked_path = errors.check(
            lambda value: validate_path(value, "path", RESERVED_PROJECT_PATHS), path or _path_from_name(name)
        )
        errors.raise_if_any()
        assert checked_name and checked_path
        if isinstance(namespace, Group):
            group_ids = [*namespace.ancestor_ids, namespace.group_id]
            parent_path, kind, namespace_id = namespace.full_path, "group", namespace.group_id
        else:
            group_ids, parent_path, kind, namespace_id = [], namespace.path, "user", namespace.namespace_id
        return cls._create(
            cls.Created,
            id=stream_id("project", project_id),
            timestamp=now,
            project_id=project_id,
            name=checked_name,
            path=checked_path,
            namespace_id=namespace_id,
            namespace_kind=kind,
            group_ids=group_ids,
            full_path=f"{parent_path}/{checked_path}",
            repository_enabled=repository_enabled,
            container_registry_enabled=container_registry_enabled,
            actor=actor.as_event_data(),
        )

    @property
    def group_id(self) -> int | None:
        """The group the project lives directly in (None in a user namespace)."""
        return self.group_ids[-1] if self.group_ids else None

    def _member_set_event(self) -> type[Aggregate.Event]:
        return self.MemberSet

    def _member_removed_event(self) -> type[Aggregate.Event]:
        return self.MemberRemoved

    def change_features(
        self,
        *,
        repository_enabled: bool | None,
        container_registry_enabled: bool | None,
        actor: Actor,
        now: datetime,
    ) -> bool:
        repository = self.repository_enabled if repository_enabled is None else repository_enabled
        registry = (
            self.container_registry_enabled
            if container_registry_enabled is None
            else container_registry_enabled
        )
        if (repository, registry) == (self.repository_enabled, self.container_registry_enabled):
            return False
        self.trigger_event(
            self.FeaturesChanged,
            timestamp=now,
            repository_enabled=repository,
            container_registry_enabled=registry,
            actor=actor.as_event_data(),
        )
        return True

    # Lifecycle: renaming, moving, deleting -------------------------------------------------------------

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
        self,
        *,
        path: str,
        namespace: Group | UserNamespace,
        cause: str,
        moved_with: int,
        actor: Actor,
        now: datetime,
    ) -> bool:
        """Record the project's new place; ``namespace`` is the (already moved) group or user namespace."""
        if isinstance(namespace, Group):
            group_ids = [*namespace.ancestor_ids, namespace.group_id]
            parent_path, kind, namespace_id = namespace.full_path, "group", namespace.group_id
        else:
            group_ids, parent_path, kind, namespace_id = [], namespace.path, "user", namespace.namespace_id
        full_path = f"{parent_path}/{path}"
        if (full_path, namespace_id, kind, group_ids) == (
            self.full_path,
            self.namespace_id,
            self.namespace_kind,
            list(self.group_ids),
        ):
            return False
        self.trigger_event(
            self.Moved,
            timestamp=now,
            path=path,
            namespace_id=namespace_id,
            namespace_kind=kind,
            group_ids=group_ids,
            full_path=full_path,
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


def checked_project_path(path: str | None) -> str:
    """A path chosen for a project (behaviour [reserved-paths])."""
    return validate_path(path, "path", RESERVED_PROJECT_PATHS)


def _path_from_name(name: str | None) -> str:
    """GitLab derives a project's path from its name when no path is given."""
    if not name:
        return ""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", name.strip()).strip("-")
    return slug.lower()
