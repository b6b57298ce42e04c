"""The audit trail (behaviour [history]): one row per lifecycle event of tokens and directory, GitLab-style, queryable.

Each row is keyed by the event's log position and says when, who (kind, id, username, address), what (a
GitLab-style ``event_type`` and human ``message``), to which target (type, id, name) and in which namespace
(a token belongs to its holder; users and personal access tokens to the user's namespace; groups and projects
to themselves; settings to the instance). ``details`` is JSON and never holds a digest or a token value.

Deploy-token types and messages are GitLab's (``deploy_token_created``/``group_deploy_token_created``,
``..._revoked``, ``..._destroyed``); our other events follow the same pattern. Events that carry too little to
render a message (a ``Revoked`` has no name or scopes) are rendered from ``audit_subjects``, the projection's
own record of each stream's name, namespace and scopes. Nothing here ever deletes an ``audit_events`` row:
``DeployToken.Deleted`` adds a ``..._destroyed`` row.

No rows for the claims' events (``PathClaim``, ``EmailClaim``), ``UserNamespace.Created``,
``InstanceSettings.Created`` and ``Group.ChildAdded``: they are bookkeeping saved atomically with the event
that caused them (the user's, group's or project's creation, move or deletion, or the first settings change),
and would only repeat that event's row. Renamed, moved and deleted groups and projects have rows of their
own (``projections.audit_directory``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from domain.groups import Group
from domain.instance_settings import InstanceSettings
from domain.personal_access_tokens import PersonalAccessToken
from domain.projects import Project
from domain.streams import stream_id
from domain.users import User
from infrastructure.db import Cursor
from projections.audit_directory import AUDIT_PATHS_SCHEMA, DIRECTORY_LIFECYCLE_HANDLERS, remember_path
from projections.audit_rows import (
    TARGET_INSTANCE_SETTINGS,
    TARGET_USER,
    AuditedEvent,
    Subject,
    enabled_word,
    find_subject,
    iso,
    level_name,
    record,
    record_creation,
    record_for,
    subject_of,
    symbols,
    update_subject,
    username_of,
)
from projections.audit_tokens import TOKEN_HANDLERS
from projections.base import EventHandlers, EventProjection, on

# Users and personal access tokens -----------------------------------------------------------------------


def _user_words(subject: Subject) -> str:
    return f"user with username: {subject.name} with user_id: {subject.subject_id}"


def _user_registered(cursor: Cursor, event: User.Registered, position: int) -> None:
    subject = Subject.created_by(
        event,
        position,
        kind="user",
        subject_id=event.user_id,
        name=event.username,
        namespace=("user", event.namespace_id),
    )
    suffix = " as an administrator" if event.is_admin else ""
    record_creation(
        cursor,
        event,
        position,
        subject,
        "user_created",
        f"Created {_user_words(subject)}{suffix}.",
        {"username": event.username, "email": event.email, "name": event.name, "is_admin": event.is_admin},
    )


def _user_blocked(cursor: Cursor, event: User.Blocked, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(cursor, event, position, subject, "user_blocked", f"Blocked {_user_words(subject)}.", {})


def _user_unblocked(cursor: Cursor, event: User.Unblocked, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(cursor, event, position, subject, "user_unblocked", f"Unblocked {_user_words(subject)}.", {})


def _user_admin_changed(cursor: Cursor, event: User.AdminChanged, position: int) -> None:
    subject = subject_of(cursor, event)
    if event.is_admin:
        message = f"Granted administrator access to {_user_words(subject)}."
    else:
        message = f"Removed administrator access from {_user_words(subject)}."
    record_for(cursor, event, position, subject, "user_admin_changed", message, {"is_admin": event.is_admin})


def _pat_sentence(verb: str, subject: Subject) -> str:
    return (
        f"{verb} personal access token with name: {subject.name} with token_id: {subject.subject_id} "
        f"for user: {subject.data['username']} with scopes: {symbols(subject.scopes)}."
    )


def _pat_created(cursor: Cursor, event: PersonalAccessToken.Created, position: int) -> None:
    owner = find_subject(cursor, str(stream_id("user", event.user_id)))
    subject = Subject.created_by(
        event,
        position,
        kind="personal_access_token",
        subject_id=event.pat_id,
        name=event.name,
        namespace=("user", owner.namespace_id if owner is not None else event.user_id),
        scopes=event.scopes,
        data={"user_id": event.user_id, "username": owner.name if owner is not None else f"#{event.user_id}"},
    )
    record_creation(
        cursor,
        event,
        position,
        subject,
        "personal_access_token_created",
        _pat_sentence("Created", subject),
        {
            **subject.data,
            "name": event.name,
            "scopes": list(event.scopes),
            "expires_at": iso(event.expires_at),
        },
    )


def _pat_revoked(cursor: Cursor, event: PersonalAccessToken.Revoked, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(
        cursor,
        event,
        position,
        subject,
        "personal_access_token_revoked",
        _pat_sentence("Revoked", subject),
        {**subject.data, "scopes": list(subject.scopes)},
    )


# Groups and projects ------------------------------------------------------------------------------------


def _group_created(cursor: Cursor, event: Group.Created, position: int) -> None:
    subject = Subject.created_by(
        event,
        position,
        kind="group",
        subject_id=event.group_id,
        name=event.full_path,
        namespace=("group", event.group_id),
    )
    remember_path(cursor, "group", event.group_id, event.full_path, position)
    record_creation(
        cursor,
        event,
        position,
        subject,
        "group_created",
        f"Created group with name: {event.name} with path: {event.full_path} with group_id: {event.group_id}.",
        {"name": event.name, "path": event.path, "full_path": event.full_path, "parent_id": event.parent_id},
    )


def _project_features(event: Project.Created | Project.FeaturesChanged) -> dict[str, Any]:
    return {
        "repository_enabled": event.repository_enabled,
        "container_registry_enabled": event.container_registry_enabled,
    }


def _project_created(cursor: Cursor, event: Project.Created, position: int) -> None:
    features = _project_features(event)
    subject = Subject.created_by(
        event,
        position,
        kind="project",
        subject_id=event.project_id,
        name=event.full_path,
        namespace=("project", event.project_id),
        data=features,
    )
    remember_path(cursor, "project", event.project_id, event.full_path, position)
    record_creation(
        cursor,
        event,
        position,
        subject,
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


def _access_level(cursor: Cursor, source: Subject, user_id: int) -> int | None:
    row = cursor.execute(
        "SELECT access_level FROM audit_memberships WHERE stream_id = ? AND user_id = ?",
        (source.stream_id, user_id),
    ).fetchone()
    return None if row is None else int(row[0])


def _member_set(cursor: Cursor, event: Group.MemberSet | Project.MemberSet, position: int) -> None:
    source = subject_of(cursor, event)
    previous = _access_level(cursor, source, event.user_id)
    cursor.execute(
        "INSERT INTO audit_memberships (stream_id, user_id, access_level, position) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (stream_id, user_id) DO UPDATE SET access_level = excluded.access_level, "
        "position = excluded.position",
        (source.stream_id, event.user_id, event.access_level, position),
    )
    username = username_of(cursor, event.user_id)
    level = level_name(event.access_level)
    where = f"for user: {username} with user_id: {event.user_id}"
    if previous is None:
        message = f"Added user access as {level} {where} to {source.kind}: {source.name}."
    else:
        change = f"from {level_name(previous)} to {level}"
        message = f"Changed access level {change} {where} in {source.kind}: {source.name}."
    record(
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
            "previous_access_level_name": level_name(previous),
        },
    )


def _member_removed(
    cursor: Cursor, event: Group.MemberRemoved | Project.MemberRemoved, position: int
) -> None:
    source = subject_of(cursor, event)
    previous = _access_level(cursor, source, event.user_id)
    cursor.execute(
        "DELETE FROM audit_memberships WHERE stream_id = ? AND user_id = ?", (source.stream_id, event.user_id)
    )
    username = username_of(cursor, event.user_id)
    record(
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
            "previous_access_level_name": level_name(previous),
        },
    )


def _dependency_proxy_changed(cursor: Cursor, event: Group.DependencyProxyChanged, position: int) -> None:
    subject = subject_of(cursor, event)
    verb = "Enabled" if event.enabled else "Disabled"
    record_for(
        cursor,
        event,
        position,
        subject,
        "group_dependency_proxy_changed",
        f"{verb} the dependency proxy of group: {subject.name}.",
        {"enabled": event.enabled},
    )


def _project_features_changed(cursor: Cursor, event: Project.FeaturesChanged, position: int) -> None:
    subject = subject_of(cursor, event)
    features = _project_features(event)
    update_subject(cursor, subject.stream_id, "data = ?", (json.dumps(features, sort_keys=True),), position)
    record_for(
        cursor,
        event,
        position,
        subject,
        "project_features_changed",
        f"Changed features of project: {subject.name}: repository {enabled_word(event.repository_enabled)}, "
        f"container registry {enabled_word(event.container_registry_enabled)}.",
        {**features, **{f"previous_{key}": value for key, value in subject.data.items()}},
    )


# Instance settings --------------------------------------------------------------------------------------


def _record_settings(
    cursor: Cursor, event: AuditedEvent, position: int, event_type: str, message: str, details: dict[str, Any]
) -> None:
    record(
        cursor,
        event,
        position,
        event_type=event_type,
        target=(TARGET_INSTANCE_SETTINGS, None, "instance settings"),
        namespace=("instance", None),
        message=message,
        details=details,
    )


def _external_authorization_changed(
    cursor: Cursor, event: InstanceSettings.ExternalAuthorizationChanged, position: int
) -> None:
    verb = "Enabled" if event.enabled else "Disabled"
    _record_settings(
        cursor,
        event,
        position,
        "external_authorization_changed",
        f"{verb} external authorization.",
        {"enabled": event.enabled},
    )


def _feature_changed(cursor: Cursor, event: InstanceSettings.FeatureChanged, position: int) -> None:
    verb = "Enabled" if event.enabled else "Disabled"
    _record_settings(
        cursor,
        event,
        position,
        "feature_flag_changed",
        f"{verb} feature flag: {event.name}.",
        {"name": event.name, "enabled": event.enabled},
    )


# The projection -----------------------------------------------------------------------------------------


class AuditTrail(EventProjection):
    name = "audit_trail"
    tables = ("audit_events", "audit_subjects", "audit_memberships", "audit_paths")
    version = 2  # 2: audit_paths, the path each holder had at each moment (behaviour [history-paths])
    # No rows (see the module docstring): claims, UserNamespace.Created, InstanceSettings.Created,
    # Group.ChildAdded.
    handlers = EventHandlers(
        *TOKEN_HANDLERS,
        *DIRECTORY_LIFECYCLE_HANDLERS,
        on(User.Registered, _user_registered),
        on(User.Blocked, _user_blocked),
        on(User.Unblocked, _user_unblocked),
        on(User.AdminChanged, _user_admin_changed),
        on(PersonalAccessToken.Created, _pat_created),
        on(PersonalAccessToken.Revoked, _pat_revoked),
        on(Group.Created, _group_created),
        on(Group.MemberSet, _member_set),
        on(Group.MemberRemoved, _member_removed),
        on(Group.DependencyProxyChanged, _dependency_proxy_changed),
        on(Project.Created, _project_created),
        on(Project.MemberSet, _member_set),
        on(Project.MemberRemoved, _member_removed),
        on(Project.FeaturesChanged, _project_features_changed),
        on(InstanceSettings.ExternalAuthorizationChanged, _external_authorization_changed),
        on(InstanceSettings.FeatureChanged, _feature_changed),
    )

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
            # Each group's and project's full path from each position on (projections.audit_directory).
            *AUDIT_PATHS_SCHEMA,
        )


#: The event classes that have audit rows; every other event class in the log is bookkeeping.
AUDITED_EVENTS: Final[frozenset[type]] = AuditTrail.handlers.event_classes
