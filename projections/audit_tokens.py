"""The audit rows of deploy tokens: GitLab's event types and messages, from creation to deletion.

GitLab names project-token rows ``deploy_token_<action>`` and group-token rows
``group_deploy_token_<action>``; expiry and its notifications follow the same pattern.

One row is completed after it is written: GitLab's creation message names the scopes, but our ``Created``
event does not carry them; the ``Scoped`` event recorded with it (same save, next position) does. So the
first ``Scoped`` of a token fills the scopes into its ``..._created`` row, and adds its own row. If the two
events fall into different projector batches, the ``..._created`` row reads ``with scopes: [].`` in between.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Final

from domain.deploy_token import INTERVAL_NAMES, DeployToken, default_username
from infrastructure.db import Cursor
from projections.audit_rows import (
    Subject,
    iso,
    record_creation,
    record_for,
    subject_of,
    symbols,
    update_subject,
)
from projections.base import EventHandler, on


def _token_type(subject: Subject, action: str) -> str:
    """GitLab's naming: ``deploy_token_<action>`` for project tokens, ``group_deploy_token_<action>``."""
    prefix = "group_" if subject.namespace_kind == "group" else ""
    return f"{prefix}deploy_token_{action}"


def _token_words(subject: Subject) -> str:
    return (
        f"{subject.namespace_kind} deploy token with name: {subject.name} with token_id: {subject.subject_id}"
    )


def _token_sentence(verb: str, subject: Subject) -> str:
    """GitLab's message: ``<Verb> project deploy token with name: N with token_id: I with scopes: [...].``"""
    return f"{verb} {_token_words(subject)} with scopes: {symbols(subject.scopes)}"


def _token_created(cursor: Cursor, event: DeployToken.Created, position: int) -> None:
    subject = Subject.created_by(
        event,
        position,
        kind="deploy_token",
        subject_id=event.token_id,
        name=event.name,
        namespace=(event.holder_kind, event.holder_id),
    )
    record_creation(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "created"),
        _token_sentence("Created", subject) + ".",
        {
            "name": event.name,
            "username": event.username or default_username(event.token_id),
            "holder_kind": event.holder_kind,
            "holder_id": event.holder_id,
            "expires_at": iso(event.expires_at),
            "scopes": [],  # the Scoped event saved with it fills them in
        },
    )


def _token_scoped(cursor: Cursor, event: DeployToken.Scoped, position: int) -> None:
    subject = subject_of(cursor, event)
    previous = subject.scopes
    scoped = replace(subject, scopes=tuple(event.scopes))
    update_subject(cursor, subject.stream_id, "scopes = ?", (",".join(event.scopes),), position)
    if not previous:
        # The Scoped recorded with Created: complete the creation row's message (see the module docstring).
        _complete_created_row(cursor, scoped)
        message = _token_sentence("Scoped", scoped) + "."
    else:
        message = (
            f"Narrowed scopes of {_token_words(scoped)} from {symbols(previous)} to {symbols(scoped.scopes)}."
        )
    details = {"scopes": list(event.scopes), "previous_scopes": list(previous)}
    record_for(cursor, event, position, scoped, _token_type(scoped, "scoped"), message, details)


def _complete_created_row(cursor: Cursor, subject: Subject) -> None:
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


def _token_revoked(cursor: Cursor, event: DeployToken.Revoked, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "revoked"),
        _token_sentence("Revoked", subject) + ".",
        {"reason": event.reason, "scopes": list(subject.scopes)},
    )


def _token_deleted(cursor: Cursor, event: DeployToken.Deleted, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "destroyed"),
        _token_sentence("Destroyed", subject) + ".",
        {"scopes": list(subject.scopes)},
    )


def _token_rotated(cursor: Cursor, event: DeployToken.Rotated, position: int) -> None:
    subject = subject_of(cursor, event)
    until = iso(event.previous_valid_until)
    if until is None:
        grace = "without a grace period: the previous value stopped working at once"
    else:
        grace = f"with a grace period: the previous value stays valid until {until}"
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "rotated"),
        f"{_token_sentence('Rotated', subject)} {grace}.",
        {"grace_period": until is not None, "previous_valid_until": until, "scopes": list(subject.scopes)},
    )


def _token_expired(cursor: Cursor, event: DeployToken.Expired, position: int) -> None:
    subject = subject_of(cursor, event)
    expires_at = iso(event.expires_at)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "expired"),
        f"{_token_sentence('Expired', subject)} at {expires_at}.",
        {"expires_at": expires_at, "scopes": list(subject.scopes)},
    )


def _interval_details(interval: int, message_id: str | None = None) -> dict[str, Any]:
    return {
        "interval": interval,
        "interval_name": INTERVAL_NAMES.get(interval, str(interval)),
        **({"message_id": message_id} if message_id is not None else {}),
    }


def _token_notification_due(cursor: Cursor, event: DeployToken.NotificationDue, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_due"),
        f"The {event.interval}-day expiry notification of {_token_words(subject)} became due.",
        _interval_details(event.interval),
    )


def _token_notification_claimed(
    cursor: Cursor, event: DeployToken.NotificationClaimed, position: int
) -> None:
    subject = subject_of(cursor, event)
    lease_until = iso(event.lease_until)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_claimed"),
        f"Claimed the {event.interval}-day expiry notification of {_token_words(subject)} until {lease_until}.",
        {**_interval_details(event.interval, event.message_id), "lease_until": lease_until},
    )


def _token_notification_failed(cursor: Cursor, event: DeployToken.NotificationFailed, position: int) -> None:
    subject = subject_of(cursor, event)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_failed"),
        f"Failed to send the {event.interval}-day expiry notification of {_token_words(subject)}; "
        "it will be retried.",
        {**_interval_details(event.interval, event.message_id), "error": event.error},
    )


def _token_notified(cursor: Cursor, event: DeployToken.Notified, position: int) -> None:
    subject = subject_of(cursor, event)
    count = len(event.recipients)
    record_for(
        cursor,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notified"),
        f"Sent the {event.interval}-day expiry notification of {_token_words(subject)} "
        f"to {count} recipient{'' if count == 1 else 's'}.",
        {**_interval_details(event.interval, event.message_id), "recipients": list(event.recipients)},
    )


TOKEN_HANDLERS: Final[tuple[EventHandler, ...]] = (
    on(DeployToken.Created, _token_created),
    on(DeployToken.Scoped, _token_scoped),
    on(DeployToken.Revoked, _token_revoked),
    on(DeployToken.Rotated, _token_rotated),
    on(DeployToken.Expired, _token_expired),
    on(DeployToken.NotificationDue, _token_notification_due),
    on(DeployToken.NotificationClaimed, _token_notification_claimed),
    on(DeployToken.NotificationFailed, _token_notification_failed),
    on(DeployToken.Notified, _token_notified),
    on(DeployToken.Deleted, _token_deleted),
)
