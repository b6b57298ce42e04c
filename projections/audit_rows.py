"""How the audit trail writes: its columns, the subjects it remembers per stream, and one way to add a row.

Every handler of the audit projection (``projections.audit``) writes through ``record``, ``record_for`` or
``record_creation``, so every row is built the same way from its event: the position, the event's time and
actor (the system when it has none), its stream and version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from domain.membership import AccessLevel
from domain.streams import stream_id
from infrastructure.db import Cursor
from projections.base import StreamEvent

TARGET_DEPLOY_TOKEN: Final = "DeployToken"
TARGET_USER: Final = "User"
TARGET_PERSONAL_ACCESS_TOKEN: Final = "PersonalAccessToken"
TARGET_GROUP: Final = "Group"
TARGET_PROJECT: Final = "Project"
TARGET_INSTANCE_SETTINGS: Final = "InstanceSettings"

# A subject is the target of the rows of its own stream.
_TARGET_OF_KIND: Final[dict[str, str]] = {
    "deploy_token": TARGET_DEPLOY_TOKEN,
    "user": TARGET_USER,
    "personal_access_token": TARGET_PERSONAL_ACCESS_TOKEN,
    "group": TARGET_GROUP,
    "project": TARGET_PROJECT,
}

AUDIT_COLUMNS: Final = (
    "position, occurred_at, event_type, actor_kind, actor_id, actor_username, actor_address, target_type, "
    "target_id, target_name, namespace_kind, namespace_id, message, details, stream_id, version"
)

_SYSTEM_ACTOR: Final[dict[str, Any]] = {"kind": "system", "id": None, "username": "system", "address": None}


class AuditedEvent(StreamEvent, Protocol):
    """Every audited event says who caused it."""

    @property
    def actor(self) -> dict[str, Any]: ...


# Formatting ---------------------------------------------------------------------------------------------


def symbols(scopes: Sequence[str]) -> str:
    """Ruby's ``Array#to_s`` of symbols, as GitLab prints scopes: ``[:read_repository, :read_registry]``."""
    return "[" + ", ".join(f":{scope}" for scope in scopes) + "]"


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def level_name(level: int | None) -> str | None:
    if level is None:
        return None
    try:
        return AccessLevel(level).name.title()
    except ValueError:
        return str(level)


def enabled_word(flag: bool) -> str:
    return "enabled" if flag else "disabled"


# Subjects -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """What later events of a stream need to render their rows: name, namespace, scopes."""

    stream_id: str
    kind: str
    subject_id: int
    name: str
    namespace_kind: str
    namespace_id: int | None
    scopes: tuple[str, ...]
    created_position: int
    data: dict[str, Any]

    @classmethod
    def created_by(
        cls,
        event: StreamEvent,
        position: int,
        *,
        kind: str,
        subject_id: int,
        name: str,
        namespace: tuple[str, int | None],
        scopes: Sequence[str] = (),
        data: dict[str, Any] | None = None,
    ) -> Subject:
        """The subject of the stream that ``event`` creates."""
        namespace_kind, namespace_id = namespace
        return cls(
            stream_id=str(event.originator_id),
            kind=kind,
            subject_id=subject_id,
            name=name,
            namespace_kind=namespace_kind,
            namespace_id=namespace_id,
            scopes=tuple(scopes),
            created_position=position,
            data=data or {},
        )


def _put_subject(cursor: Cursor, subject: Subject, position: int) -> None:
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


def find_subject(cursor: Cursor, stream: str) -> Subject | None:
    row = cursor.execute(
        "SELECT stream_id, kind, subject_id, name, namespace_kind, namespace_id, scopes, created_position, data "
        "FROM audit_subjects WHERE stream_id = ?",
        (stream,),
    ).fetchone()
    if row is None:
        return None
    return Subject(
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


def subject_of(cursor: Cursor, event: StreamEvent) -> Subject:
    """The subject of the event's own stream; its creation event always comes first in the log."""
    subject = find_subject(cursor, str(event.originator_id))
    if subject is None:
        raise LookupError(
            f"audit trail: {type(event).__qualname__} of stream {event.originator_id} came before its creation"
        )
    return subject


def update_subject(
    cursor: Cursor, stream: str, assignments: str, values: tuple[Any, ...], position: int
) -> None:
    cursor.execute(
        f"UPDATE audit_subjects SET {assignments}, position = ? WHERE stream_id = ?",
        (*values, position, stream),
    )


def username_of(cursor: Cursor, user_id: int) -> str:
    user = find_subject(cursor, str(stream_id("user", user_id)))
    return user.name if user is not None else f"#{user_id}"


# Rows ---------------------------------------------------------------------------------------------------


def record(
    cursor: Cursor,
    event: AuditedEvent,
    position: int,
    *,
    event_type: str,
    target: tuple[str, int | None, str],
    namespace: tuple[str, int | None],
    message: str,
    details: dict[str, Any],
) -> None:
    actor = event.actor or _SYSTEM_ACTOR
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


def record_for(
    cursor: Cursor,
    event: AuditedEvent,
    position: int,
    subject: Subject,
    event_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """A row whose target is the subject of the event's own stream, in the subject's namespace."""
    record(
        cursor,
        event,
        position,
        event_type=event_type,
        target=(_TARGET_OF_KIND[subject.kind], subject.subject_id, subject.name),
        namespace=(subject.namespace_kind, subject.namespace_id),
        message=message,
        details=details,
    )


def record_creation(
    cursor: Cursor,
    event: AuditedEvent,
    position: int,
    subject: Subject,
    event_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """The first row of a stream: remembers its subject for the events that follow, then adds the row."""
    _put_subject(cursor, subject, position)
    record_for(cursor, event, position, subject, event_type, message, details)
