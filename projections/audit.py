"""The audit trail (R21): one row per lifecycle event of tokens and directory, GitLab-style, queryable.

Each row is keyed by the event's log position and says when, who (kind, id, username, address), what (a
GitLab-style ``event_type`` and human ``message``), to which target (type, id, name) and in which namespace
(a token belongs to its holder; users and personal access tokens to the user's namespace; groups and projects
to themselves; settings to the instance). ``details`` is JSON and never holds a digest or a token value.

Deploy-token types and messages are GitLab's (``deploy_token_created``/``group_deploy_token_created``,
``..._revoked``, ``..._destroyed``); our other events follow the same pattern. Events that carry too little to
render a message (a ``Revoked`` has no name or scopes) are rendered from ``audit_subjects``, the projection's
own record of each stream's name, namespace and scopes. Nothing here ever deletes an ``audit_events`` row:
``DeployToken.Deleted`` adds a ``..._destroyed`` row.

One row is completed after it is written: GitLab's creation message names the scopes, but our ``Created``
event does not carry them; the ``Scoped`` event recorded with it (same save, next position) does. So the
first ``Scoped`` of a token fills the scopes into its ``..._created`` row, and adds its own row. If the two
events fall into different projector batches, the ``..._created`` row reads ``with scopes: [].`` in between.

No rows for ``PathClaim.Created``, ``UserNamespace.Created`` and ``InstanceSettings.Created``: they are
bookkeeping saved atomically with the event that caused them (the user's, group's or project's creation,
or the first settings change), carry no actor, and would only repeat that event's row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from eventsourcing.domain import DomainEventProtocol

from domain.clock import as_utc
from domain.deploy_token import INTERVAL_NAMES, DeployToken, default_username
from domain.directory import (
    AccessLevel,
    Group,
    InstanceSettings,
    PersonalAccessToken,
    Project,
    User,
    stream_id,
)
from infrastructure.db import Cursor, Database, to_datetime
from projections.base import Projection

TARGET_DEPLOY_TOKEN: Final = "DeployToken"
TARGET_USER: Final = "User"
TARGET_PERSONAL_ACCESS_TOKEN: Final = "PersonalAccessToken"
TARGET_GROUP: Final = "Group"
TARGET_PROJECT: Final = "Project"
TARGET_INSTANCE_SETTINGS: Final = "InstanceSettings"

_SYSTEM_ACTOR: Final[dict[str, Any]] = {"kind": "system", "id": None, "username": "system", "address": None}


# Queries ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditRecord:
    """One audit row: one lifecycle event."""

    position: int
    occurred_at: datetime
    event_type: str
    actor_kind: str
    actor_id: int | None
    actor_username: str
    actor_address: str | None
    target_type: str
    target_id: int | None  # None only for InstanceSettings
    target_name: str
    namespace_kind: str  # "project", "group", "user" or "instance"
    namespace_id: int | None  # None only for "instance"
    message: str
    details: dict[str, Any]
    stream_id: str
    version: int


AUDIT_COLUMNS: Final = (
    "position, occurred_at, event_type, actor_kind, actor_id, actor_username, actor_address, target_type, "
    "target_id, target_name, namespace_kind, namespace_id, message, details, stream_id, version"
)


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    occurred_at = to_datetime(row[1])
    assert occurred_at is not None
    return AuditRecord(
        position=int(row[0]),
        occurred_at=occurred_at,
        event_type=row[2],
        actor_kind=row[3],
        actor_id=None if row[4] is None else int(row[4]),
        actor_username=row[5],
        actor_address=row[6],
        target_type=row[7],
        target_id=None if row[8] is None else int(row[8]),
        target_name=row[9],
        namespace_kind=row[10],
        namespace_id=None if row[11] is None else int(row[11]),
        message=row[12],
        details=dict(json.loads(row[13])),
        stream_id=row[14],
        version=int(row[15]),
    )


@dataclass(frozen=True)
class AuditQuery:
    """Filters, all optional and combined with AND; results are ordered by position (the log's order).

    ``since``/``until`` select the half-open interval ``[since, until)`` of event times (naive times are
    UTC). ``namespace_id`` needs ``namespace_kind``; ``namespace_kind`` alone selects every namespace of
    that kind (``"instance"`` has no id). Page with ``after_position`` = the last position of the previous
    page. ``limit=None`` returns everything.
    """

    token_id: int | None = None
    namespace_kind: str | None = None
    namespace_id: int | None = None
    actor_id: int | None = None
    actor_username: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    after_position: int = 0
    limit: int | None = 100

    def __post_init__(self) -> None:
        if self.namespace_id is not None and self.namespace_kind is None:
            raise ValueError("namespace_id needs namespace_kind")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.after_position < 0:
            raise ValueError("after_position must not be negative")


def audit_events(db: Database, query: AuditQuery) -> list[AuditRecord]:
    where = ["position > ?"]
    params: list[Any] = [query.after_position]
    if query.token_id is not None:
        where.append("target_type = ? AND target_id = ?")
        params += [TARGET_DEPLOY_TOKEN, query.token_id]
    if query.namespace_kind is not None:
        where.append("namespace_kind = ?")
        params.append(query.namespace_kind)
    if query.namespace_id is not None:
        where.append("namespace_id = ?")
        params.append(query.namespace_id)
    if query.actor_id is not None:
        where.append("actor_id = ?")
        params.append(query.actor_id)
    if query.actor_username is not None:
        where.append("actor_username = ?")
        params.append(query.actor_username)
    if query.since is not None:
        where.append("occurred_at >= ?")
        params.append(as_utc(query.since))
    if query.until is not None:
        where.append("occurred_at < ?")
        params.append(as_utc(query.until))
    sql = f"SELECT {AUDIT_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} ORDER BY position"
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    with db.read() as cursor:
        rows = cursor.execute(sql, params).fetchall()
    return [audit_from_row(row) for row in rows]


# The projection -----------------------------------------------------------------------------------------


class AuditTrail(Projection):
    name: ClassVar[str] = "audit_trail"
    tables: ClassVar[tuple[str, ...]] = ("audit_events", "audit_subjects", "audit_memberships")

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS audit_events (
                position BIGINT PRIMARY KEY, occurred_at TIMESTAMPTZ NOT NULL, event_type TEXT NOT NULL,
                actor_kind TEXT NOT NULL, actor_id BIGINT, actor_username TEXT NOT NULL, actor_address TEXT,
                target_type TEXT NOT NULL, target_id BIGINT, target_name TEXT NOT NULL,
                namespace_kind TEXT NOT NULL, namespace_id BIGINT, message TEXT NOT NULL,
                details TEXT NOT NULL, stream_id TEXT NOT NULL, version BIGINT NOT NULL)""",
            "CREATE UNIQUE INDEX IF NOT EXISTS audit_events_stream ON audit_events (stream_id, version)",
            "CREATE INDEX IF NOT EXISTS audit_events_target ON audit_events (target_type, target_id, position)",
            "CREATE INDEX IF NOT EXISTS audit_events_namespace ON audit_events "
            "(namespace_kind, namespace_id, position)",
            "CREATE INDEX IF NOT EXISTS audit_events_actor_id ON audit_events (actor_id, position)",
            "CREATE INDEX IF NOT EXISTS audit_events_actor_username ON audit_events (actor_username, position)",
            "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (occurred_at, position)",
            # What later events of a stream need to render their message: name, namespace, scopes.
            """CREATE TABLE IF NOT EXISTS audit_subjects (
                stream_id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject_id BIGINT NOT NULL, name TEXT NOT NULL,
                namespace_kind TEXT NOT NULL, namespace_id BIGINT, scopes TEXT NOT NULL,
                created_position BIGINT NOT NULL, data TEXT NOT NULL, position BIGINT NOT NULL)""",
            # Current access levels, so that a change can say "from Reporter to Developer".
            """CREATE TABLE IF NOT EXISTS audit_memberships (
                stream_id TEXT NOT NULL, user_id BIGINT NOT NULL, access_level INTEGER NOT NULL,
                position BIGINT NOT NULL, PRIMARY KEY (stream_id, user_id))""",
        )

    def apply(self, cursor: Cursor, event: DomainEventProtocol[Any], position: int) -> None:
        handler = _HANDLERS.get(type(event))
        if handler is not None:
            handler(cursor, event, position)


Handler = Callable[[Cursor, Any, int], None]


# Formatting ---------------------------------------------------------------------------------------------


def _symbols(scopes: Sequence[str]) -> str:
    """Ruby's ``Array#to_s`` of symbols, as GitLab prints scopes: ``[:read_repository, :read_registry]``."""
    return "[" + ", ".join(f":{scope}" for scope in scopes) + "]"


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _level_name(level: int | None) -> str | None:
    if level is None:
        return None
    try:
        return AccessLevel(level).name.title()
    except ValueError:
        return str(level)


def _enabled(flag: bool) -> str:
    return "enabled" if flag else "disabled"


# Subjects -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Subject:
    stream_id: str
    kind: str
    subject_id: int
    name: str
    namespace_kind: str
    namespace_id: int | None
    scopes: tuple[str, ...]
    created_position: int
    data: dict[str, Any]


def _put_subject(cursor: Cursor, subject: _Subject, position: int) -> None:
    cursor.execute(
        "INSERT INTO audit_subjects (stream_id, kind, subject_id, name, namespace_kind, namespace_id, scopes, "
        "created_position, data, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            subject.stream_id,
            subject.kind,
            subject.subject_id,
            subject.name,
            subject.namespace_kind,
            subject.namespace_id,
            ",".join(subject.scopes),
            subject.created_position,
            json.dumps(subject.data, sort_keys=True),
            position,
        ),
    )


def _find_subject(cursor: Cursor, stream: str) -> _Subject | None:
    row = cursor.execute(
        "SELECT stream_id, kind, subject_id, name, namespace_kind, namespace_id, scopes, created_position, data "
        "FROM audit_subjects WHERE stream_id = ?",
        (stream,),
    ).fetchone()
    if row is None:
        return None
    return _Subject(
        stream_id=row[0],
        kind=row[1],
        subject_id=int(row[2]),
        name=row[3],
        namespace_kind=row[4],
        namespace_id=None if row[5] is None else int(row[5]),
        scopes=tuple(row[6].split(",")) if row[6] else (),
        created_position=int(row[7]),
        data=dict(json.loads(row[8])),
    )


def _subject_of(cursor: Cursor, event: Any) -> _Subject:
    """The subject of the event's own stream; its creation event always comes first in the log."""
    subject = _find_subject(cursor, str(event.originator_id))
    if subject is None:
        raise LookupError(
            f"audit trail: {type(event).__qualname__} of stream {event.originator_id} came before its creation"
        )
    return subject


def _update_subject(
    cursor: Cursor, stream: str, assignments: str, values: tuple[Any, ...], position: int
) -> None:
    cursor.execute(
        f"UPDATE audit_subjects SET {assignments}, position = ? WHERE stream_id = ?",
        (*values, position, stream),
    )


def _username_of(cursor: Cursor, user_id: int) -> str:
    user = _find_subject(cursor, str(stream_id("user", user_id)))
    return user.name if user is not None else f"#{user_id}"


# Rows ---------------------------------------------------------------------------------------------------


def _record(
    cursor: Cursor,
    event: Any,
    position: int,
    *,
    event_type: str,
    target: tuple[str, int | None, str],
    namespace: tuple[str, int | None],
    message: str,
    details: dict[str, Any],
) -> None:
    actor: dict[str, Any] = getattr(event, "actor", None) or _SYSTEM_ACTOR
    target_type, target_id, target_name = target
    namespace_kind, namespace_id = namespace
    cursor.execute(
        f"INSERT INTO audit_events ({AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            position,
            event.timestamp,
            event_type,
            actor.get("kind") or "system",
            actor.get("id"),
            actor.get("username") or "system",
            actor.get("address"),
            target_type,
            target_id,
            target_name,
            namespace_kind,
            namespace_id,
            message,
            json.dumps(details, sort_keys=True),
            str(event.originator_id),
            event.originator_version,
        ),
    )


def _record_for(
    cursor: Cursor,
    event: Any,
    position: int,
    subject: _Subject,
    target_type: str,
    event_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """A row whose target is the subject of the event's own stream, in the subject's namespace."""
    _record(
        cursor,
        event,
        position,
        event_type=event_type,
        target=(target_type, subject.subject_id, subject.name),
        namespace=(subject.namespace_kind, subject.namespace_id),
        message=message,
        details=details,
    )


# Deploy tokens ------------------------------------------------------------------------------------------


def _token_type(subject: _Subject, action: str) -> str:
    """GitLab's naming: ``deploy_token_<action>`` for project tokens, ``group_deploy_token_<action>``."""
    prefix = "group_" if subject.namespace_kind == "group" else ""
    return f"{prefix}deploy_token_{action}"


def _token_words(subject: _Subject) -> str:
    return (
        f"{subject.namespace_kind} deploy token with name: {subject.name} with token_id: {subject.subject_id}"
    )


def _token_sentence(verb: str, subject: _Subject) -> str:
    """GitLab's message: ``<Verb> project deploy token with name: N with token_id: I with scopes: [...].``"""
    return f"{verb} {_token_words(subject)} with scopes: {_symbols(subject.scopes)}"


def _token_created(cursor: Cursor, event: Any, position: int) -> None:
    subject = _Subject(
        stream_id=str(event.originator_id),
        kind="deploy_token",
        subject_id=event.token_id,
        name=event.name,
        namespace_kind=event.holder_kind,
        namespace_id=event.holder_id,
        scopes=(),
        created_position=position,
        data={},
    )
    _put_subject(cursor, subject, position)
    details = _token_created_details(event, ())
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "created"),
        _token_sentence("Created", subject) + ".",
        details,
    )


def _token_created_details(event: Any, scopes: Sequence[str]) -> dict[str, Any]:
    return {
        "name": event.name,
        "username": event.username or default_username(event.token_id),
        "holder_kind": event.holder_kind,
        "holder_id": event.holder_id,
        "expires_at": _iso(event.expires_at),
        "scopes": list(scopes),
    }


def _token_scoped(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    previous = subject.scopes
    scoped = replace(subject, scopes=tuple(event.scopes))
    _update_subject(cursor, subject.stream_id, "scopes = ?", (",".join(event.scopes),), position)
    if not previous:
        # The Scoped recorded with Created: complete the creation row's message (see the module docstring).
        _complete_created_row(cursor, scoped)
        message = _token_sentence("Scoped", scoped) + "."
    else:
        message = f"Narrowed scopes of {_token_words(scoped)} from {_symbols(previous)} to {_symbols(scoped.scopes)}."
    details = {"scopes": list(event.scopes), "previous_scopes": list(previous)}
    _record_for(
        cursor, event, position, scoped, TARGET_DEPLOY_TOKEN, _token_type(scoped, "scoped"), message, details
    )


def _complete_created_row(cursor: Cursor, subject: _Subject) -> None:
    row = cursor.execute(
        "SELECT details FROM audit_events WHERE position = ?", (subject.created_position,)
    ).fetchone()
    if row is None:
        return
    details = dict(json.loads(row[0]))
    details["scopes"] = list(subject.scopes)
    cursor.execute(
        "UPDATE audit_events SET message = ?, details = ? WHERE position = ?",
        (
            _token_sentence("Created", subject) + ".",
            json.dumps(details, sort_keys=True),
            subject.created_position,
        ),
    )


def _token_revoked(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "revoked"),
        _token_sentence("Revoked", subject) + ".",
        {"reason": event.reason, "scopes": list(subject.scopes)},
    )


def _token_deleted(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "destroyed"),
        _token_sentence("Destroyed", subject) + ".",
        {"scopes": list(subject.scopes)},
    )


def _token_rotated(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    until = _iso(event.previous_valid_until)
    if until is None:
        grace = "without a grace period: the previous value stopped working at once"
    else:
        grace = f"with a grace period: the previous value stays valid until {until}"
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "rotated"),
        f"{_token_sentence('Rotated', subject)} {grace}.",
        {"grace_period": until is not None, "previous_valid_until": until, "scopes": list(subject.scopes)},
    )


def _token_expired(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    expires_at = _iso(event.expires_at)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "expired"),
        f"{_token_sentence('Expired', subject)} at {expires_at}.",
        {"expires_at": expires_at, "scopes": list(subject.scopes)},
    )


def _interval_details(event: Any) -> dict[str, Any]:
    return {
        "interval": event.interval,
        "interval_name": INTERVAL_NAMES.get(event.interval, str(event.interval)),
        **({"message_id": event.message_id} if hasattr(event, "message_id") else {}),
    }


def _token_notification_due(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "expiry_notification_due"),
        f"The {event.interval}-day expiry notification of {_token_words(subject)} became due.",
        _interval_details(event),
    )


def _token_notification_claimed(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    lease_until = _iso(event.lease_until)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "expiry_notification_claimed"),
        f"Claimed the {event.interval}-day expiry notification of {_token_words(subject)} until {lease_until}.",
        {**_interval_details(event), "lease_until": lease_until},
    )


def _token_notification_failed(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "expiry_notification_failed"),
        f"Failed to send the {event.interval}-day expiry notification of {_token_words(subject)}; "
        "it will be retried.",
        {**_interval_details(event), "error": event.error},
    )


def _token_notified(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    count = len(event.recipients)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_DEPLOY_TOKEN,
        _token_type(subject, "expiry_notified"),
        f"Sent the {event.interval}-day expiry notification of {_token_words(subject)} "
        f"to {count} recipient{'' if count == 1 else 's'}.",
        {**_interval_details(event), "recipients": list(event.recipients)},
    )


# Users and personal access tokens -----------------------------------------------------------------------


def _user_words(subject: _Subject) -> str:
    return f"user with username: {subject.name} with user_id: {subject.subject_id}"


def _user_registered(cursor: Cursor, event: Any, position: int) -> None:
    subject = _Subject(
        stream_id=str(event.originator_id),
        kind="user",
        subject_id=event.user_id,
        name=event.username,
        namespace_kind="user",
        namespace_id=event.namespace_id,
        scopes=(),
        created_position=position,
        data={},
    )
    _put_subject(cursor, subject, position)
    suffix = " as an administrator" if event.is_admin else ""
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_USER,
        "user_created",
        f"Created {_user_words(subject)}{suffix}.",
        {"username": event.username, "email": event.email, "name": event.name, "is_admin": event.is_admin},
    )


def _user_event(event_type: str, render: Callable[[_Subject, Any], str]) -> Handler:
    def handler(cursor: Cursor, event: Any, position: int) -> None:
        subject = _subject_of(cursor, event)
        details = {"is_admin": event.is_admin} if hasattr(event, "is_admin") else {}
        _record_for(
            cursor, event, position, subject, TARGET_USER, event_type, render(subject, event), details
        )

    return handler


def _admin_changed_message(subject: _Subject, event: Any) -> str:
    if event.is_admin:
        return f"Granted administrator access to {_user_words(subject)}."
    return f"Removed administrator access from {_user_words(subject)}."


def _pat_sentence(verb: str, subject: _Subject) -> str:
    return (
        f"{verb} personal access token with name: {subject.name} with token_id: {subject.subject_id} "
        f"for user: {subject.data['username']} with scopes: {_symbols(subject.scopes)}."
    )


def _pat_created(cursor: Cursor, event: Any, position: int) -> None:
    owner = _find_subject(cursor, str(stream_id("user", event.user_id)))
    subject = _Subject(
        stream_id=str(event.originator_id),
        kind="personal_access_token",
        subject_id=event.pat_id,
        name=event.name,
        namespace_kind="user",
        namespace_id=owner.namespace_id if owner is not None else event.user_id,
        scopes=tuple(event.scopes),
        created_position=position,
        data={"user_id": event.user_id, "username": owner.name if owner is not None else f"#{event.user_id}"},
    )
    _put_subject(cursor, subject, position)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_PERSONAL_ACCESS_TOKEN,
        "personal_access_token_created",
        _pat_sentence("Created", subject),
        {
            **subject.data,
            "name": event.name,
            "scopes": list(event.scopes),
            "expires_at": _iso(event.expires_at),
        },
    )


def _pat_revoked(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_PERSONAL_ACCESS_TOKEN,
        "personal_access_token_revoked",
        _pat_sentence("Revoked", subject),
        {**subject.data, "scopes": list(subject.scopes)},
    )


# Groups and projects ------------------------------------------------------------------------------------


def _group_created(cursor: Cursor, event: Any, position: int) -> None:
    subject = _Subject(
        stream_id=str(event.originator_id),
        kind="group",
        subject_id=event.group_id,
        name=event.full_path,
        namespace_kind="group",
        namespace_id=event.group_id,
        scopes=(),
        created_position=position,
        data={},
    )
    _put_subject(cursor, subject, position)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_GROUP,
        "group_created",
        f"Created group with name: {event.name} with path: {event.full_path} with group_id: {event.group_id}.",
        {"name": event.name, "path": event.path, "full_path": event.full_path, "parent_id": event.parent_id},
    )


def _project_created(cursor: Cursor, event: Any, position: int) -> None:
    features = {
        "repository_enabled": event.repository_enabled,
        "container_registry_enabled": event.container_registry_enabled,
    }
    subject = _Subject(
        stream_id=str(event.originator_id),
        kind="project",
        subject_id=event.project_id,
        name=event.full_path,
        namespace_kind="project",
        namespace_id=event.project_id,
        scopes=(),
        created_position=position,
        data=features,
    )
    _put_subject(cursor, subject, position)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_PROJECT,
        "project_created",
        f"Created project with name: {event.name} with path: {event.full_path} "
        f"with project_id: {event.project_id}.",
        {
            "name": event.name,
            "path": event.path,
            "full_path": event.full_path,
            "parent_namespace_kind": event.namespace_kind,
            "parent_namespace_id": event.namespace_id,
            **features,
        },
    )


def _member_set(cursor: Cursor, event: Any, position: int) -> None:
    source = _subject_of(cursor, event)
    row = cursor.execute(
        "SELECT access_level FROM audit_memberships WHERE stream_id = ? AND user_id = ?",
        (source.stream_id, event.user_id),
    ).fetchone()
    previous = None if row is None else int(row[0])
    cursor.execute(
        "INSERT INTO audit_memberships (stream_id, user_id, access_level, position) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (stream_id, user_id) DO UPDATE SET access_level = excluded.access_level, "
        "position = excluded.position",
        (source.stream_id, event.user_id, event.access_level, position),
    )
    username = _username_of(cursor, event.user_id)
    level = _level_name(event.access_level)
    where = f"for user: {username} with user_id: {event.user_id}"
    if previous is None:
        message = f"Added user access as {level} {where} to {source.kind}: {source.name}."
    else:
        change = f"from {_level_name(previous)} to {level}"
        message = f"Changed access level {change} {where} in {source.kind}: {source.name}."
    _record(
        cursor,
        event,
        position,
        event_type="member_updated",
        target=(TARGET_USER, event.user_id, username),
        namespace=(source.namespace_kind, source.namespace_id),
        message=message,
        details={
            "action": "added" if previous is None else "changed",
            "user_id": event.user_id,
            "access_level": event.access_level,
            "access_level_name": level,
            "previous_access_level": previous,
            "previous_access_level_name": _level_name(previous),
        },
    )


def _member_removed(cursor: Cursor, event: Any, position: int) -> None:
    source = _subject_of(cursor, event)
    row = cursor.execute(
        "SELECT access_level FROM audit_memberships WHERE stream_id = ? AND user_id = ?",
        (source.stream_id, event.user_id),
    ).fetchone()
    previous = None if row is None else int(row[0])
    cursor.execute(
        "DELETE FROM audit_memberships WHERE stream_id = ? AND user_id = ?", (source.stream_id, event.user_id)
    )
    username = _username_of(cursor, event.user_id)
    _record(
        cursor,
        event,
        position,
        event_type="member_destroyed",
        target=(TARGET_USER, event.user_id, username),
        namespace=(source.namespace_kind, source.namespace_id),
        message=f"Removed user access for user: {username} with user_id: {event.user_id} "
        f"from {source.kind}: {source.name}.",
        details={
            "user_id": event.user_id,
            "previous_access_level": previous,
            "previous_access_level_name": _level_name(previous),
        },
    )


def _dependency_proxy_changed(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    verb = "Enabled" if event.enabled else "Disabled"
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_GROUP,
        "group_dependency_proxy_changed",
        f"{verb} the dependency proxy of group: {subject.name}.",
        {"enabled": event.enabled},
    )


def _project_features_changed(cursor: Cursor, event: Any, position: int) -> None:
    subject = _subject_of(cursor, event)
    features = {
        "repository_enabled": event.repository_enabled,
        "container_registry_enabled": event.container_registry_enabled,
    }
    _update_subject(cursor, subject.stream_id, "data = ?", (json.dumps(features, sort_keys=True),), position)
    _record_for(
        cursor,
        event,
        position,
        subject,
        TARGET_PROJECT,
        "project_features_changed",
        f"Changed features of project: {subject.name}: repository {_enabled(event.repository_enabled)}, "
        f"container registry {_enabled(event.container_registry_enabled)}.",
        {**features, **{f"previous_{key}": value for key, value in subject.data.items()}},
    )


# Instance settings --------------------------------------------------------------------------------------


def _instance_event(
    event_type: str, render: Callable[[Any], str], details: Callable[[Any], dict[str, Any]]
) -> Handler:
    def handler(cursor: Cursor, event: Any, position: int) -> None:
        _record(
            cursor,
            event,
            position,
            event_type=event_type,
            target=(TARGET_INSTANCE_SETTINGS, None, "instance settings"),
            namespace=("instance", None),
            message=render(event),
            details=details(event),
        )

    return handler


_HANDLERS: dict[type, Handler] = {
    DeployToken.Created: _token_created,
    DeployToken.Scoped: _token_scoped,
    DeployToken.Revoked: _token_revoked,
    DeployToken.Rotated: _token_rotated,
    DeployToken.Expired: _token_expired,
    DeployToken.NotificationDue: _token_notification_due,
    DeployToken.NotificationClaimed: _token_notification_claimed,
    DeployToken.NotificationFailed: _token_notification_failed,
    DeployToken.Notified: _token_notified,
    DeployToken.Deleted: _token_deleted,
    User.Registered: _user_registered,
    User.Blocked: _user_event("user_blocked", lambda s, e: f"Blocked {_user_words(s)}."),
    User.Unblocked: _user_event("user_unblocked", lambda s, e: f"Unblocked {_user_words(s)}."),
    User.AdminChanged: _user_event("user_admin_changed", _admin_changed_message),
    PersonalAccessToken.Created: _pat_created,
    PersonalAccessToken.Revoked: _pat_revoked,
    Group.Created: _group_created,
    Group.MemberSet: _member_set,
    Group.MemberRemoved: _member_removed,
    Group.DependencyProxyChanged: _dependency_proxy_changed,
    Project.Created: _project_created,
    Project.MemberSet: _member_set,
    Project.MemberRemoved: _member_removed,
    Project.FeaturesChanged: _project_features_changed,
    InstanceSettings.ExternalAuthorizationChanged: _instance_event(
        "external_authorization_changed",
        lambda e: f"{'Enabled' if e.enabled else 'Disabled'} external authorization.",
        lambda e: {"enabled": e.enabled},
    ),
    InstanceSettings.FeatureChanged: _instance_event(
        "feature_flag_changed",
        lambda e: f"{'Enabled' if e.enabled else 'Disabled'} feature flag: {e.name}.",
        lambda e: {"name": e.name, "enabled": e.enabled},
    ),
    # No rows (see the module docstring): PathClaim.Created, UserNamespace.Created, InstanceSettings.Created.
}

#: The event classes that have audit rows; every other event class in the log is bookkeeping.
AUDITED_EVENTS: Final[frozenset[type]] = frozenset(_HANDLERS)
