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
``InstanceSettings.Created``, ``Group.ChildAdded``, ``ActivityRetention.Created``, ``AuditStreaming.Created``
and ``IdTokenUse.Created``: they are bookkeeping saved atomically with the event that caused them (the user's,
group's or project's creation, move or deletion, the first settings change, the first archive of old
activity, the first streaming destination, the token an ID token was exchanged for), and would only repeat
that event's row (a federated token's ``..._created`` row names the ID token's issuer, subject, policy and
``jti``). Renamed, moved and deleted groups and projects have rows of their own
(``projections.audit_directory``); the instance's own housekeeping has its rows in
``projections.audit_instance``; trust policies and the trusted OIDC issuers in ``projections.audit_federation``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any, Final
from uuid import UUID

from eventsourcing.persistence import Notification

from domain.groups import Group
from domain.instance_settings import InstanceSettings
from domain.personal_access_tokens import PersonalAccessToken
from domain.projects import Project
from domain.streams import stream_id
from domain.users import User
from infrastructure.db import Cursor
from projections.audit_directory import AUDIT_PATHS_SCHEMA, DIRECTORY_LIFECYCLE_HANDLERS
from projections.audit_federation import FEDERATION_HANDLERS
from projections.audit_instance import INSTANCE_HANDLERS
from projections.audit_rows import (
    TARGET_INSTANCE_SETTINGS,
    TARGET_USER,
    AuditBatch,
    AuditedEvent,
    Subject,
    enabled_word,
    iso,
    level_name,
    record,
    record_creation,
    record_for,
    symbols,
)
from projections.audit_tokens import TOKEN_HANDLERS
from projections.projection import BatchedEventProjection, Decode, EventHandlers, on

# Users and personal access tokens -----------------------------------------------------------------------


def _user_words(subject: Subject) -> str:
    return f"user with username: {subject.name} with user_id: {subject.subject_id}"


def _user_registered(trail: AuditBatch, event: User.Registered, position: int) -> None:
    subject = Subject.created_by(
        trail.stream_of(event, position),
        position,
        kind="user",
        subject_id=event.user_id,
        name=event.username,
        namespace=("user", event.namespace_id),
    )
    suffix = " as an administrator" if event.is_admin else ""
    record_creation(
        trail,
        event,
        position,
        subject,
        "user_created",
        f"Created {_user_words(subject)}{suffix}.",
        {"username": event.username, "email": event.email, "name": event.name, "is_admin": event.is_admin},
    )


def _user_blocked(trail: AuditBatch, event: User.Blocked, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(trail, event, position, subject, "user_blocked", f"Blocked {_user_words(subject)}.", {})


def _user_unblocked(trail: AuditBatch, event: User.Unblocked, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(trail, event, position, subject, "user_unblocked", f"Unblocked {_user_words(subject)}.", {})


def _user_admin_changed(trail: AuditBatch, event: User.AdminChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    if event.is_admin:
        message = f"Granted administrator access to {_user_words(subject)}."
    else:
        message = f"Removed administrator access from {_user_words(subject)}."
    record_for(trail, event, position, subject, "user_admin_changed", message, {"is_admin": event.is_admin})


def _user_auditor_changed(trail: AuditBatch, event: User.AuditorChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    if event.is_auditor:
        message = f"Granted auditor access to {_user_words(subject)}."
    else:
        message = f"Removed auditor access from {_user_words(subject)}."
    record_for(
        trail, event, position, subject, "user_auditor_changed", message, {"is_auditor": event.is_auditor}
    )


def _pat_sentence(verb: str, subject: Subject) -> str:
    return (
        f"{verb} personal access token with name: {subject.name} with token_id: {subject.subject_id} "
        f"for user: {subject.data['username']} with scopes: {symbols(subject.scopes)}."
    )


def _pat_created(trail: AuditBatch, event: PersonalAccessToken.Created, position: int) -> None:
    owner = trail.find_subject(str(stream_id("user", event.user_id)))
    subject = Subject.created_by(
        trail.stream_of(event, position),
        position,
        kind="personal_access_token",
        subject_id=event.pat_id,
        name=event.name,
        namespace=("user", owner.namespace_id if owner is not None else event.user_id),
        scopes=event.scopes,
        data={"user_id": event.user_id, "username": owner.name if owner is not None else f"#{event.user_id}"},
    )
    record_creation(
        trail,
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


def _pat_revoked(trail: AuditBatch, event: PersonalAccessToken.Revoked, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        "personal_access_token_revoked",
        _pat_sentence("Revoked", subject),
        {**subject.data, "scopes": list(subject.scopes)},
    )


# Groups and projects ------------------------------------------------------------------------------------


def _group_created(trail: AuditBatch, event: Group.Created, position: int) -> None:
    subject = Subject.created_by(
        trail.stream_of(event, position),
        position,
        kind="group",
        subject_id=event.group_id,
        name=event.full_path,
        namespace=("group", event.group_id),
    )
    trail.remember_path("group", event.group_id, event.full_path, position)
    record_creation(
        trail,
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


def _project_created(trail: AuditBatch, event: Project.Created, position: int) -> None:
    features = _project_features(event)
    subject = Subject.created_by(
        trail.stream_of(event, position),
        position,
        kind="project",
        subject_id=event.project_id,
        name=event.full_path,
        namespace=("project", event.project_id),
        data=features,
    )
    trail.remember_path("project", event.project_id, event.full_path, position)
    record_creation(
        trail,
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


def _member_set(trail: AuditBatch, event: Group.MemberSet | Project.MemberSet, position: int) -> None:
    source = trail.subject_of(event, position)
    previous = trail.access_level(source, event.user_id)
    trail.set_access_level(source, event.user_id, event.access_level, position)
    username = trail.username_of(event.user_id)
    level = level_name(event.access_level)
    where = f"for user: {username} with user_id: {event.user_id}"
    if previous is None:
        message = f"Added user access as {level} {where} to {source.kind}: {source.name}."
    else:
        change = f"from {level_name(previous)} to {level}"
        message = f"Changed access level {change} {where} in {source.kind}: {source.name}."
    record(
        trail,
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
    trail: AuditBatch, event: Group.MemberRemoved | Project.MemberRemoved, position: int
) -> None:
    source = trail.subject_of(event, position)
    previous = trail.access_level(source, event.user_id)
    trail.set_access_level(source, event.user_id, None, position)
    username = trail.username_of(event.user_id)
    record(
        trail,
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


def _dependency_proxy_changed(trail: AuditBatch, event: Group.DependencyProxyChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    verb = "Enabled" if event.enabled else "Disabled"
    record_for(
        trail,
        event,
        position,
        subject,
        "group_dependency_proxy_changed",
        f"{verb} the dependency proxy of group: {subject.name}.",
        {"enabled": event.enabled},
    )


def _project_features_changed(trail: AuditBatch, event: Project.FeaturesChanged, position: int) -> None:
    subject = trail.subject_of(event, position)
    features = _project_features(event)
    trail.update_subject(subject.changed_by(position, data=features))
    record_for(
        trail,
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
    trail: AuditBatch,
    event: AuditedEvent,
    position: int,
    event_type: str,
    message: str,
    details: dict[str, Any],
) -> None:
    record(
        trail,
        event,
        position,
        event_type=event_type,
        target=(TARGET_INSTANCE_SETTINGS, None, "instance settings"),
        namespace=("instance", None),
        message=message,
        details=details,
    )


def _external_authorization_changed(
    trail: AuditBatch, event: InstanceSettings.ExternalAuthorizationChanged, position: int
) -> None:
    verb = "Enabled" if event.enabled else "Disabled"
    _record_settings(
        trail,
        event,
        position,
        "external_authorization_changed",
        f"{verb} external authorization.",
        {"enabled": event.enabled},
    )


def _feature_changed(trail: AuditBatch, event: InstanceSettings.FeatureChanged, position: int) -> None:
    verb = "Enabled" if event.enabled else "Disabled"
    _record_settings(
        trail,
        event,
        position,
        "feature_flag_changed",
        f"{verb} feature flag: {event.name}.",
        {"name": event.name, "enabled": event.enabled},
    )


# The projection -----------------------------------------------------------------------------------------

# Subjects carried from one batch to the next (``AuditTrail.apply_batch``): only from batches this large (a
# rebuild's, a catch-up's), and at most this many, the oldest dropped first.
CARRY_FROM_EVENTS: Final = 200
CARRIED_SUBJECTS: Final = 20_000


class AuditTrail(BatchedEventProjection[AuditBatch]):
    name = "audit_trail"
    tables = ("audit_events", "audit_subjects", "audit_memberships", "audit_paths")
    version = 2  # 2: audit_paths, the path each holder had at each moment (behaviour [history-paths])
    # No rows (see the module docstring): claims, UserNamespace.Created, InstanceSettings.Created,
    # Group.ChildAdded, ActivityRetention.Created, AuditStreaming.Created, IdTokenUse.Created.
    handlers = EventHandlers(
        *TOKEN_HANDLERS,
        *DIRECTORY_LIFECYCLE_HANDLERS,
        *INSTANCE_HANDLERS,
        *FEDERATION_HANDLERS,
        on(User.Registered, _user_registered),
        on(User.Blocked, _user_blocked),
        on(User.Unblocked, _user_unblocked),
        on(User.AdminChanged, _user_admin_changed),
        on(User.AuditorChanged, _user_auditor_changed),
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

    def __init__(self) -> None:
        # The subjects as the tables hold them at log position ``_carried_until`` (-1: none held).
        self._carried: dict[str, Subject] = {}
        self._carried_until = -1
        self._carrying = False

    def apply_batch(self, cursor: Cursor, notifications: Sequence[Notification], decode: Decode) -> None:
        """Applies the batch, carrying its subjects to the next one, which then reads only the others.

        Most events of a large batch render from subjects of streams an earlier batch touched; reading them
        back cost a rebuild 4% of its instructions on SQLite, and more on PostgreSQL. What the tables hold up
        to a position is a function of the log alone, whoever applied it; so the carried subjects hold for a
        batch that starts right after the position they were carried to: its first event's position is the
        next integer (no event in between, so its tracking position is exactly that one). Any other batch
        (after a rollback, or when another process or projector applied events in between) drops them. The
        projector holds the tracking row from before this call until its commit, so no two batches of this
        projection run at once, whatever the threads.
        """
        if not notifications:
            return
        self._carrying = len(notifications) >= CARRY_FROM_EVENTS
        if notifications[0].id != self._carried_until + 1 or not self._carrying:
            self._carried.clear()
        self._carried_until = -1  # until the batch is applied
        super().apply_batch(cursor, notifications, decode)
        if self._carrying:
            self._carried_until = notifications[-1].id

    def open_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> AuditBatch:
        # Most events of a batch render from their own stream's subject: read them all at once, except those
        # of the streams whose first event (version 1) is in the batch (they have none yet) and those carried
        # from the previous batch. The text of each stream's id is worked out once per batch (a token's
        # events come in twos and threes).
        texts: dict[int | str, str] = {}
        streams: dict[int, str] = {}
        created: list[str] = []
        for notification in notifications:
            originator = notification.originator_id
            key = originator.int if isinstance(originator, UUID) else originator  # a UUID's hash is Python's
            text = texts.get(key)
            if text is None:
                text = texts[key] = str(originator)
            streams[notification.id] = text
            if notification.originator_version == 1:
                created.append(text)
        return AuditBatch(cursor, streams, created, self._carried)

    def close_batch(self, context: AuditBatch) -> None:
        context.flush()
        if self._carrying:
            carried = self._carried
            carried.update(context.subjects())
            if (excess := len(carried) - CARRIED_SUBJECTS) > 0:
                for stream in list(islice(carried, excess)):
                    del carried[stream]

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS audit_events (
                position BIGINT PRIMARY KEY, occurred_at TIMESTAMPTZ NOT NULL, event_type TEXT NOT NULL,
                actor_kind TEXT NOT NULL, actor_id BIGINT, actor_username TEXT NOT NULL, actor_address TEXT,
                target_type TEXT NOT NULL, target_id BIGINT, target_name TEXT NOT NULL,
                namespace_kind TEXT NOT NULL, namespace_id BIGINT, message TEXT NOT NULL,
                details TEXT NOT NULL, stream_id TEXT NOT NULL, version BIGINT NOT NULL)""",
            # Not UNIQUE: the log itself keeps (stream, version) unique and ``position`` is the key here, so a
            # rebuild builds this index once at the end instead of maintaining it row by row.
            "CREATE INDEX IF NOT EXISTS audit_events_stream ON audit_events (stream_id, version)",
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
