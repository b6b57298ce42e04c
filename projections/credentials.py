"""The credential-lookup projection: tokens by keyed digest, the namespace tree, and instance settings.

Everything an auth decision needs, and nothing else: auth checks answer from an in-memory replica of these
rows (``projections.credential_index``). The token rows also serve the management API's token lists.

Groups and projects are rows by id: a move rewrites the row's path and place (``Moved``), a deletion removes
the row, so that its path is free, and leaves a tombstone in ``cred_removed`` for the replicas.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar

from eventsourcing.persistence import Notification

from domain.deploy_token import DeployToken
from domain.groups import Group
from domain.instance_settings import KNOWN_FEATURES, InstanceSettings
from domain.projects import Project
from domain.users import UserNamespace
from infrastructure.db import Cursor, to_datetime
from projections.credential_tokens import TOKEN_HANDLERS, CredentialBatch
from projections.projection import (
    BatchedEventProjection,
    Decode,
    EventHandlers,
    HandlerEntry,
    StreamEvent,
    StreamEventT,
    on,
)


@dataclass(frozen=True)
class TokenRecord:
    """A deploy token as the read side sees it (never its value)."""

    token_id: int
    name: str
    username: str
    holder_kind: str
    holder_id: int
    scopes: tuple[str, ...]
    expires_at: datetime | None
    revoked_at: datetime | None
    deleted_at: datetime | None
    digest: str
    previous_digest: str | None
    previous_valid_until: datetime | None
    created_at: datetime
    creator_id: int | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @cached_property
    def scope_set(self) -> frozenset[str]:
        """Computed once per record: the auth hot path tests scopes as sets."""
        return frozenset(self.scopes)

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def is_active(self, now: datetime) -> bool:
        return self.revoked_at is None and self.deleted_at is None and not self.is_expired(now)

    def state(self, now: datetime) -> str:
        """In words, the first that holds: deleted, revoked, expired, or active."""
        if self.deleted_at is not None:
            return "deleted"
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if self.is_expired(now) else "active"

    @classmethod
    def from_aggregate(cls, token: DeployToken) -> TokenRecord:
        return cls(
            token_id=token.token_id,
            name=token.name,
            username=token.username,
            holder_kind=token.holder_kind,
            holder_id=token.holder_id,
            scopes=token.scopes,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
            deleted_at=token.deleted_at,
            digest=token.digest,
            previous_digest=token.previous_digest,
            previous_valid_until=token.previous_valid_until,
            created_at=token.created_on,
            creator_id=token.creator.get("id"),
        )


TOKEN_COLUMNS = (
    "token_id, name, username, holder_kind, holder_id, scopes, expires_at, revoked_at, deleted_at, digest, "
    "previous_digest, previous_valid_until, created_at, creator_id"
)


def token_from_row(row: Sequence[Any]) -> TokenRecord:
    created_at = to_datetime(row[12])
    assert created_at is not None
    return TokenRecord(
        token_id=int(row[0]),
        name=row[1],
        username=row[2],
        holder_kind=row[3],
        holder_id=int(row[4]),
        scopes=tuple(row[5].split(",")) if row[5] else (),
        expires_at=to_datetime(row[6]),
        revoked_at=to_datetime(row[7]),
        deleted_at=to_datetime(row[8]),
        digest=row[9],
        previous_digest=row[10],
        previous_valid_until=to_datetime(row[11]),
        created_at=created_at,
        creator_id=None if row[13] is None else int(row[13]),
    )


@dataclass(frozen=True)
class NamespaceRecord:
    """A group or a user's personal namespace."""

    namespace_id: int
    kind: str  # "group" or "user"
    name: str
    path: str
    full_path: str
    parent_id: int | None
    ancestor_ids: tuple[int, ...]
    dependency_proxy_enabled: bool
    created_at: datetime


NAMESPACE_COLUMNS = (
    "namespace_id, kind, name, path, full_path, parent_id, ancestor_ids, dependency_proxy_enabled, created_at"
)


def namespace_from_row(row: Sequence[Any]) -> NamespaceRecord:
    created_at = to_datetime(row[8])
    assert created_at is not None
    return NamespaceRecord(
        namespace_id=int(row[0]),
        kind=row[1],
        name=row[2],
        path=row[3],
        full_path=row[4],
        parent_id=None if row[5] is None else int(row[5]),
        ancestor_ids=_ids(row[6]),
        dependency_proxy_enabled=bool(row[7]),
        created_at=created_at,
    )


@dataclass(frozen=True)
class ProjectRecord:
    project_id: int
    name: str
    path: str
    full_path: str
    namespace_id: int
    namespace_kind: str
    group_ids: tuple[int, ...]  # the namespace group and its ancestors, root first; empty in a user namespace
    repository_enabled: bool
    container_registry_enabled: bool
    created_at: datetime


PROJECT_COLUMNS = (
    "project_id, name, path, full_path, namespace_id, namespace_kind, group_ids, repository_enabled, "
    "container_registry_enabled, created_at"
)


def project_from_row(row: Sequence[Any]) -> ProjectRecord:
    created_at = to_datetime(row[9])
    assert created_at is not None
    return ProjectRecord(
        project_id=int(row[0]),
        name=row[1],
        path=row[2],
        full_path=row[3],
        namespace_id=int(row[4]),
        namespace_kind=row[5],
        group_ids=_ids(row[6]),
        repository_enabled=bool(row[7]),
        container_registry_enabled=bool(row[8]),
        created_at=created_at,
    )


@dataclass(frozen=True)
class InstanceRecord:
    external_authorization_enabled: bool
    features: dict[str, bool]


def _ids(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",")) if text else ()


def _join_ids(ids: Sequence[int]) -> str:
    return ",".join(str(number) for number in ids)


EventT = TypeVar("EventT")


def _by_cursor(
    event_class: type[EventT], handler: Callable[[Cursor, EventT, int], None]
) -> HandlerEntry[CredentialBatch]:
    """The entry for a handler that writes its table through the batch's cursor, statement by statement."""

    def apply(batch: CredentialBatch, event: EventT, position: int) -> None:
        handler(batch.cursor, event, position)

    return on(event_class, apply)


def _update(
    event_class: type[StreamEventT],
    table: str,
    assignments: str,
    values: Callable[[StreamEventT], tuple[Any, ...]],
) -> HandlerEntry[CredentialBatch]:
    """The handler of ``event_class`` that sets columns of the row belonging to the event's stream."""

    def handler(cursor: Cursor, event: StreamEventT, position: int) -> None:
        cursor.execute(
            f"UPDATE {table} SET {assignments}, position = ? WHERE stream_id = ?",
            (*values(event), position, str(event.originator_id)),
        )

    return _by_cursor(event_class, handler)


def _namespace_group(cursor: Cursor, event: Group.Created, position: int) -> None:
    cursor.execute(
        f"INSERT INTO cred_namespaces ({NAMESPACE_COLUMNS}, stream_id, full_path_lower, position) "
        "VALUES (?, 'group', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.group_id,
            event.name,
            event.path,
            event.full_path,
            event.parent_id,
            _join_ids(event.ancestor_ids),
            True,
            event.timestamp,
            str(event.originator_id),
            event.full_path.lower(),
            position,
        ),
    )


def _namespace_user(cursor: Cursor, event: UserNamespace.Created, position: int) -> None:
    cursor.execute(
        f"INSERT INTO cred_namespaces ({NAMESPACE_COLUMNS}, stream_id, full_path_lower, position) "
        "VALUES (?, 'user', ?, ?, ?, NULL, '', ?, ?, ?, ?, ?)",
        (
            event.namespace_id,
            event.path,
            event.path,
            event.path,
            False,
            event.timestamp,
            str(event.originator_id),
            event.path.lower(),
            position,
        ),
    )


def _project_created(cursor: Cursor, event: Project.Created, position: int) -> None:
    cursor.execute(
        f"INSERT INTO cred_projects ({PROJECT_COLUMNS}, stream_id, full_path_lower, position) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.project_id,
            event.name,
            event.path,
            event.full_path,
            event.namespace_id,
            event.namespace_kind,
            _join_ids(event.group_ids),
            event.repository_enabled,
            event.container_registry_enabled,
            event.timestamp,
            str(event.originator_id),
            event.full_path.lower(),
            position,
        ),
    )


def _group_moved(cursor: Cursor, event: Group.Moved, position: int) -> None:
    cursor.execute(
        "UPDATE cred_namespaces SET path = ?, full_path = ?, full_path_lower = ?, parent_id = ?, "
        "ancestor_ids = ?, position = ? WHERE stream_id = ?",
        (
            event.path,
            event.full_path,
            event.full_path.lower(),
            event.parent_id,
            _join_ids(event.ancestor_ids),
            position,
            str(event.originator_id),
        ),
    )


def _project_moved(cursor: Cursor, event: Project.Moved, position: int) -> None:
    cursor.execute(
        "UPDATE cred_projects SET path = ?, full_path = ?, full_path_lower = ?, namespace_id = ?, "
        "namespace_kind = ?, group_ids = ?, position = ? WHERE stream_id = ?",
        (
            event.path,
            event.full_path,
            event.full_path.lower(),
            event.namespace_id,
            event.namespace_kind,
            _join_ids(event.group_ids),
            position,
            str(event.originator_id),
        ),
    )


def _removed(kind: str, table: str, id_column: str) -> Callable[[Cursor, StreamEvent, int], None]:
    """A deleted holder's row goes (its path is free at once); a tombstone tells the in-memory replicas."""

    def handler(cursor: Cursor, event: StreamEvent, position: int) -> None:
        row = cursor.execute(
            f"SELECT {id_column} FROM {table} WHERE stream_id = ?", (str(event.originator_id),)
        ).fetchone()
        if row is None:
            return
        cursor.execute(f"DELETE FROM {table} WHERE stream_id = ?", (str(event.originator_id),))
        cursor.execute(
            "INSERT INTO cred_removed (kind, removed_id, position) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, removed_id) DO UPDATE SET position = excluded.position",
            (kind, int(row[0]), position),
        )

    return handler


def instance_settings(cursor: Cursor) -> InstanceRecord:
    """The instance settings row; the defaults until the settings are first changed."""
    row = cursor.execute(
        "SELECT external_authorization_enabled, features FROM cred_settings WHERE id = 1"
    ).fetchone()
    if row is None:
        return InstanceRecord(False, dict(KNOWN_FEATURES))
    return InstanceRecord(bool(row[0]), dict(json.loads(row[1])))


def _write_settings(cursor: Cursor, external: bool, features: dict[str, bool], position: int) -> None:
    cursor.execute(
        "INSERT INTO cred_settings (id, external_authorization_enabled, features, position) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET external_authorization_enabled = excluded.external_authorization_enabled, "
        "features = excluded.features, position = excluded.position",
        (external, json.dumps(features, sort_keys=True), position),
    )


def _external_authorization(
    cursor: Cursor, event: InstanceSettings.ExternalAuthorizationChanged, position: int
) -> None:
    _write_settings(cursor, event.enabled, instance_settings(cursor).features, position)


def _feature(cursor: Cursor, event: InstanceSettings.FeatureChanged, position: int) -> None:
    current = instance_settings(cursor)
    features = {**current.features, event.name: event.enabled}
    _write_settings(cursor, current.external_authorization_enabled, features, position)


class CredentialLookup(BatchedEventProjection[CredentialBatch]):
    name = "credential_lookup"
    tables = ("cred_tokens", "cred_namespaces", "cred_projects", "cred_settings", "cred_removed")
    handlers = EventHandlers(
        *TOKEN_HANDLERS,
        _by_cursor(Group.Created, _namespace_group),
        _update(
            Group.DependencyProxyChanged,
            "cred_namespaces",
            "dependency_proxy_enabled = ?",
            lambda e: (e.enabled,),
        ),
        _by_cursor(Group.Moved, _group_moved),
        _update(Group.NameChanged, "cred_namespaces", "name = ?", lambda e: (e.name,)),
        _by_cursor(Group.Deleted, _removed("namespace", "cred_namespaces", "namespace_id")),
        _by_cursor(UserNamespace.Created, _namespace_user),
        _by_cursor(Project.Created, _project_created),
        _by_cursor(Project.Moved, _project_moved),
        _update(Project.NameChanged, "cred_projects", "name = ?", lambda e: (e.name,)),
        _by_cursor(Project.Deleted, _removed("project", "cred_projects", "project_id")),
        _update(
            Project.FeaturesChanged,
            "cred_projects",
            "repository_enabled = ?, container_registry_enabled = ?",
            lambda e: (e.repository_enabled, e.container_registry_enabled),
        ),
        _by_cursor(InstanceSettings.ExternalAuthorizationChanged, _external_authorization),
        _by_cursor(InstanceSettings.FeatureChanged, _feature),
    )

    def open_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> CredentialBatch:
        return CredentialBatch(cursor)

    def close_batch(self, context: CredentialBatch) -> None:
        context.write()

    def _apply_handled(
        self,
        cursor: Cursor,
        handled: Sequence[tuple[Callable[[CredentialBatch, Any, int], None], Notification]],
        decode: Decode,
    ) -> None:
        batch = self.open_batch(cursor, [notification for _, notification in handled])
        # Statement by statement, pipelined on PostgreSQL; the new tokens' bulk insert after the pipeline
        # (COPY has no pipeline mode).
        with cursor.pipelined():
            for handler, notification in handled:
                handler(batch, decode(notification), notification.id)
        self.close_batch(batch)

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS cred_tokens (
                token_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, name TEXT NOT NULL,
                username TEXT NOT NULL, holder_kind TEXT NOT NULL, holder_id BIGINT NOT NULL,
                scopes TEXT NOT NULL, expires_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ, deleted_at TIMESTAMPTZ,
                digest TEXT NOT NULL, previous_digest TEXT, previous_valid_until TIMESTAMPTZ,
                created_at TIMESTAMPTZ NOT NULL, creator_id BIGINT, position BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_tokens_stream ON cred_tokens (stream_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_tokens_digest ON cred_tokens (digest)",
            "CREATE INDEX IF NOT EXISTS cred_tokens_previous_digest ON cred_tokens (previous_digest)",
            "CREATE INDEX IF NOT EXISTS cred_tokens_holder ON cred_tokens (holder_kind, holder_id, token_id)",
            "CREATE INDEX IF NOT EXISTS cred_tokens_position ON cred_tokens (position)",
            # The in-memory index asks which tokens expired, and which rotated-out values' grace ended, since it
            # last looked, to take them out of memory (projections/credential_index.py).
            "CREATE INDEX IF NOT EXISTS cred_tokens_expiry ON cred_tokens (expires_at) WHERE expires_at IS NOT NULL",
            "CREATE INDEX IF NOT EXISTS cred_tokens_grace ON cred_tokens (previous_valid_until) "
            "WHERE previous_valid_until IS NOT NULL",
            """CREATE TABLE IF NOT EXISTS cred_namespaces (
                namespace_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, kind TEXT NOT NULL,
                name TEXT NOT NULL, path TEXT NOT NULL, full_path TEXT NOT NULL, full_path_lower TEXT NOT NULL,
                parent_id BIGINT, ancestor_ids TEXT NOT NULL, dependency_proxy_enabled BOOLEAN NOT NULL,
                created_at TIMESTAMPTZ NOT NULL, position BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_namespaces_stream ON cred_namespaces (stream_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_namespaces_path ON cred_namespaces (full_path_lower)",
            "CREATE INDEX IF NOT EXISTS cred_namespaces_parent ON cred_namespaces (parent_id)",
            "CREATE INDEX IF NOT EXISTS cred_namespaces_position ON cred_namespaces (position)",
            """CREATE TABLE IF NOT EXISTS cred_projects (
                project_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL,
                full_path TEXT NOT NULL, full_path_lower TEXT NOT NULL, namespace_id BIGINT NOT NULL,
                namespace_kind TEXT NOT NULL, group_ids TEXT NOT NULL, repository_enabled BOOLEAN NOT NULL,
                container_registry_enabled BOOLEAN NOT NULL, created_at TIMESTAMPTZ NOT NULL,
                position BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_projects_stream ON cred_projects (stream_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS cred_projects_path ON cred_projects (full_path_lower)",
            "CREATE INDEX IF NOT EXISTS cred_projects_namespace ON cred_projects (namespace_id)",
            "CREATE INDEX IF NOT EXISTS cred_projects_position ON cred_projects (position)",
            # Deleted groups and projects, by the position of their deletion: the replicas drop them.
            """CREATE TABLE IF NOT EXISTS cred_removed (
                kind TEXT NOT NULL, removed_id BIGINT NOT NULL, position BIGINT NOT NULL,
                PRIMARY KEY (kind, removed_id))""",
            "CREATE INDEX IF NOT EXISTS cred_removed_position ON cred_removed (position)",
            """CREATE TABLE IF NOT EXISTS cred_settings (
                id INTEGER PRIMARY KEY, external_authorization_enabled BOOLEAN NOT NULL,
                features TEXT NOT NULL, position BIGINT NOT NULL)""",
        )
