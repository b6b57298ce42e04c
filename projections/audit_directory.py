"""The audit rows of the directory's lifecycle: renamed, moved and deleted groups and projects, changed users.

A group's or project's audit subject is named by its full path; a move renames the subject, so every later
row (a member added, a token created) names the path it has then, and the rows written before keep the path
it had then. ``audit_paths`` keeps each holder's full path from each position on (and whether it was deleted
there), so that a token's history can show where its holder was at each of its events
(``holder_path_at``), however the holder moved since.
"""

from __future__ import annotations

from typing import Final

from domain.groups import Group
from domain.projects import Project
from domain.users import User
from infrastructure.db import Database
from projections.audit_rows import AuditBatch, Subject, record_for
from projections.projection import HandlerEntry, on

AUDIT_PATHS_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS audit_paths (
        kind TEXT NOT NULL, subject_id BIGINT NOT NULL, position BIGINT NOT NULL, full_path TEXT NOT NULL,
        deleted BOOLEAN NOT NULL, PRIMARY KEY (kind, subject_id, position))""",
)


def holder_path_at(db: Database, kind: str, holder_id: int, position: int) -> tuple[str, bool] | None:
    """The full path a project or group had at log position ``position``, and whether it was deleted by then.

    None when the trail has no path for it (a trail projected before paths were kept: rebuild it).
    """
    with db.read() as cursor:
        row = cursor.execute(
            "SELECT full_path, deleted FROM audit_paths WHERE kind = ? AND subject_id = ? AND position <= ? "
            "ORDER BY position DESC LIMIT 1",
            (kind, holder_id, position),
        ).fetchone()
    return None if row is None else (str(row[0]), bool(row[1]))


def holder_by_past_path(db: Database, kind: str, full_path: str) -> int | None:
    """The project or group that had ``full_path`` (any case) most recently, deleted or moved since."""
    with db.read() as cursor:
        row = cursor.execute(
            "SELECT subject_id FROM audit_paths WHERE kind = ? AND LOWER(full_path) = ? "
            "ORDER BY position DESC LIMIT 1",
            (kind, full_path.lower()),
        ).fetchone()
    return None if row is None else int(row[0])


def _words(subject: Subject) -> str:
    return f"{subject.kind}: {subject.name} with {subject.kind}_id: {subject.subject_id}"


def _name_changed(trail: AuditBatch, event: Group.NameChanged | Project.NameChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        f"{subject.kind}_name_updated",
        f"Changed name of {_words(subject)} from {event.previous_name} to {event.name}.",
        {"name": event.name, "previous_name": event.previous_name},
    )


_MOVE_TYPES: Final = {
    "path_changed": "path_updated",
    "transferred": "transferred",
    "group_moved": "path_updated",
}


def _moved(trail: AuditBatch, event: Group.Moved | Project.Moved, position: int) -> None:
    subject = trail.subject_of(event, position)
    moved = subject.changed_by(position, name=event.full_path)
    trail.update_subject(moved)
    trail.remember_path(subject.kind, subject.subject_id, event.full_path, position)
    because = ""
    if event.cause == "group_moved":
        group = trail.group_subject(event.moved_with)
        because = f" because group: {group.name if group else event.moved_with} moved"
    record_for(
        trail,
        event,
        position,
        moved,
        f"{subject.kind}_{_MOVE_TYPES.get(event.cause, 'path_updated')}",
        f"Moved {subject.kind} with {subject.kind}_id: {subject.subject_id} from {event.previous_full_path} "
        f"to {event.full_path}{because}.",
        {
            "full_path": event.full_path,
            "previous_full_path": event.previous_full_path,
            "path": event.path,
            "cause": event.cause,
            "moved_with": event.moved_with or None,
        },
    )


def _deleted(trail: AuditBatch, event: Group.Deleted | Project.Deleted, position: int) -> None:
    subject = trail.subject_of(event, position)
    trail.remember_path(subject.kind, subject.subject_id, subject.name, position, deleted=True)
    because = ""
    if event.deleted_with:
        group = trail.group_subject(event.deleted_with)
        because = f" with group: {group.name if group else event.deleted_with}"
    record_for(
        trail,
        event,
        position,
        subject,
        f"{subject.kind}_destroyed",
        f"Destroyed {_words(subject)}{because}.",
        {"full_path": subject.name, "deleted_with": event.deleted_with or None},
    )


def _profile_changed(trail: AuditBatch, event: User.ProfileChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        "user_profile_updated",
        f"Changed profile of user with username: {subject.name} with user_id: {subject.subject_id}.",
        {"email": event.email, "name": event.name},
    )


DIRECTORY_LIFECYCLE_HANDLERS: Final[tuple[HandlerEntry[AuditBatch], ...]] = (
    on(Group.NameChanged, _name_changed),
    on(Group.Moved, _moved),
    on(Group.Deleted, _deleted),
    on(Project.NameChanged, _name_changed),
    on(Project.Moved, _moved),
    on(Project.Deleted, _deleted),
    on(User.ProfileChanged, _profile_changed),
)
