"""The directory projection: users, personal access tokens and memberships, for the management API.

Permission decisions in the service are taken from the aggregates (strongly consistent); this read model
serves listings, personal-access-token authentication and the expiry emails' recipient lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.groups import Group
from domain.personal_access_tokens import PersonalAccessToken
from domain.projects import Project
from domain.users import User
from infrastructure.db import Cursor, to_datetime
from projections.projection import EventHandler, EventHandlers, EventProjection, StreamEvent, StreamEventT, on


@dataclass(frozen=True)
class UserRecord:
    user_id: int
    username: str
    email: str
    name: str
    is_admin: bool
    blocked: bool
    namespace_id: int
    created_at: datetime

    @property
    def state(self) -> str:
        return "blocked" if self.blocked else "active"


USER_COLUMNS = "user_id, username, email, name, is_admin, blocked, namespace_id, created_at"


def user_from_row(row: Sequence[Any]) -> UserRecord:
    created_at = to_datetime(row[7])
    assert created_at is not None
    return UserRecord(
        user_id=int(row[0]),
        username=row[1],
        email=row[2],
        name=row[3],
        is_admin=bool(row[4]),
        blocked=bool(row[5]),
        namespace_id=int(row[6]),
        created_at=created_at,
    )


@dataclass(frozen=True)
class PersonalAccessTokenRecord:
    pat_id: int
    user_id: int
    name: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    revoked: bool
    created_at: datetime

    def is_active(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)


PAT_COLUMNS = "pat_id, user_id, name, scopes, expires_at, revoked, created_at"


def pat_from_row(row: Sequence[Any]) -> PersonalAccessTokenRecord:
    created_at = to_datetime(row[6])
    assert created_at is not None
    return PersonalAccessTokenRecord(
        pat_id=int(row[0]),
        user_id=int(row[1]),
        name=row[2],
        scopes=tuple(row[3].split(",")),
        expires_at=to_datetime(row[4]),
        revoked=bool(row[5]),
        created_at=created_at,
    )


@dataclass(frozen=True)
class MemberRecord:
    source_kind: str  # "group" or "project": where the membership is recorded
    source_id: int
    user_id: int
    access_level: int


def _user_registered(cursor: Cursor, event: User.Registered, position: int) -> None:
    cursor.execute(
        "INSERT INTO dir_users (user_id, stream_id, username, username_lower, email, name, is_admin, blocked, "
        "namespace_id, created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.user_id,
            str(event.originator_id),
            event.username,
            event.username.lower(),
            event.email,
            event.name,
            event.is_admin,
            False,
            event.namespace_id,
            event.timestamp,
            position,
        ),
    )


def _user_update(
    event_class: type[StreamEventT], assignments: str, values: Callable[[StreamEventT], tuple[Any, ...]]
) -> EventHandler:
    def handler(cursor: Cursor, event: StreamEventT, position: int) -> None:
        cursor.execute(
            f"UPDATE dir_users SET {assignments}, position = ? WHERE stream_id = ?",
            (*values(event), position, str(event.originator_id)),
        )

    return on(event_class, handler)


def _pat_created(cursor: Cursor, event: PersonalAccessToken.Created, position: int) -> None:
    cursor.execute(
        "INSERT INTO dir_pats (pat_id, stream_id, user_id, name, scopes, expires_at, digest, revoked, "
        "created_at, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.pat_id,
            str(event.originator_id),
            event.user_id,
            event.name,
            ",".join(event.scopes),
            event.expires_at,
            event.digest,
            False,
            event.timestamp,
            position,
        ),
    )


def _pat_revoked(cursor: Cursor, event: PersonalAccessToken.Revoked, position: int) -> None:
    cursor.execute(
        "UPDATE dir_pats SET revoked = ?, position = ? WHERE stream_id = ?",
        (True, position, str(event.originator_id)),
    )


def _group_created(cursor: Cursor, event: Group.Created, position: int) -> None:
    _add_source(cursor, event, "group", event.group_id)


def _project_created(cursor: Cursor, event: Project.Created, position: int) -> None:
    _add_source(cursor, event, "project", event.project_id)


def _add_source(cursor: Cursor, event: StreamEvent, kind: str, source_id: int) -> None:
    cursor.execute(
        "INSERT INTO dir_sources (stream_id, source_kind, source_id) VALUES (?, ?, ?)",
        (str(event.originator_id), kind, source_id),
    )


def _member_set(cursor: Cursor, event: Group.MemberSet | Project.MemberSet, position: int) -> None:
    cursor.execute(
        "INSERT INTO dir_members (source_kind, source_id, user_id, access_level, position) "
        "SELECT source_kind, source_id, ?, ?, ? FROM dir_sources WHERE stream_id = ? "
        "ON CONFLICT (source_kind, source_id, user_id) DO UPDATE SET access_level = excluded.access_level, "
        "position = excluded.position",
        (event.user_id, event.access_level, position, str(event.originator_id)),
    )


def _member_removed(
    cursor: Cursor, event: Group.MemberRemoved | Project.MemberRemoved, position: int
) -> None:
    cursor.execute(
        "DELETE FROM dir_members WHERE user_id = ? AND (source_kind, source_id) IN "
        "(SELECT source_kind, source_id FROM dir_sources WHERE stream_id = ?)",
        (event.user_id, str(event.originator_id)),
    )


def _source_deleted(cursor: Cursor, event: Group.Deleted | Project.Deleted, position: int) -> None:
    """A deleted group's or project's members go with it (they no longer name anything to list)."""
    cursor.execute(
        "DELETE FROM dir_members WHERE (source_kind, source_id) IN "
        "(SELECT source_kind, source_id FROM dir_sources WHERE stream_id = ?)",
        (str(event.originator_id),),
    )


class Directory(EventProjection):
    name = "directory"
    tables = ("dir_users", "dir_pats", "dir_sources", "dir_members")
    handlers = EventHandlers(
        on(User.Registered, _user_registered),
        _user_update(User.Blocked, "blocked = ?", lambda e: (True,)),
        _user_update(User.Unblocked, "blocked = ?", lambda e: (False,)),
        _user_update(User.AdminChanged, "is_admin = ?", lambda e: (e.is_admin,)),
        _user_update(User.ProfileChanged, "email = ?, name = ?", lambda e: (e.email, e.name)),
        on(PersonalAccessToken.Created, _pat_created),
        on(PersonalAccessToken.Revoked, _pat_revoked),
        on(Group.Created, _group_created),
        on(Project.Created, _project_created),
        on(Group.MemberSet, _member_set),
        on(Project.MemberSet, _member_set),
        on(Group.MemberRemoved, _member_removed),
        on(Project.MemberRemoved, _member_removed),
        on(Group.Deleted, _source_deleted),
        on(Project.Deleted, _source_deleted),
    )

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS dir_users (
                user_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, username TEXT NOT NULL,
                username_lower TEXT NOT NULL, email TEXT NOT NULL, name TEXT NOT NULL,
                is_admin BOOLEAN NOT NULL, blocked BOOLEAN NOT NULL, namespace_id BIGINT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL, position BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS dir_users_stream ON dir_users (stream_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS dir_users_username ON dir_users (username_lower)",
            """CREATE TABLE IF NOT EXISTS dir_pats (
                pat_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, user_id BIGINT NOT NULL, name TEXT NOT NULL,
                scopes TEXT NOT NULL, expires_at TIMESTAMPTZ, digest TEXT NOT NULL, revoked BOOLEAN NOT NULL,
                created_at TIMESTAMPTZ NOT NULL, position BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS dir_pats_stream ON dir_pats (stream_id)",
            "CREATE UNIQUE INDEX IF NOT EXISTS dir_pats_digest ON dir_pats (digest)",
            # Membership events name only their group's or project's stream; this maps it to the id.
            """CREATE TABLE IF NOT EXISTS dir_sources (
                stream_id TEXT PRIMARY KEY, source_kind TEXT NOT NULL, source_id BIGINT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS dir_members (
                source_kind TEXT NOT NULL, source_id BIGINT NOT NULL, user_id BIGINT NOT NULL,
                access_level INTEGER NOT NULL, position BIGINT NOT NULL,
                PRIMARY KEY (source_kind, source_id, user_id))""",
            "CREATE INDEX IF NOT EXISTS dir_members_user ON dir_members (user_id)",
        )
