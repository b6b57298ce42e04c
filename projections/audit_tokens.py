"""The audit rows of deploy tokens: GitLab's event types and messages, from creation to deletion.

GitLab names project-token rows ``deploy_token_<action>`` and group-token rows
``group_deploy_token_<action>``; expiry and its notifications follow the same pattern.

One row is completed after it is written: GitLab's creation message names the scopes, but our ``Created``
event does not carry them; the ``Scoped`` event recorded with it (same save, next position) does. So the
first ``Scoped`` of a token fills the scopes into its ``..._created`` row, and adds its own row. If the two
events fall into different projector batches, the ``..._created`` row reads ``with scopes: [].`` in between.

A token a CI job got in exchange for an ID token (behaviour [federation]) is created by a federated actor: the
row's author is the ID token's subject (it has no user id), and its details add ``federation``: the issuer,
subject, trust policy, the ID token's ``jti`` and the claims the policy matched, as the actor recorded them.
The ID token itself is in no event, so in no row.
"""

from __future__ import annotations

from typing import Any, Final

from domain.deploy_token import INTERVAL_NAMES, DeployToken, default_username, is_federated
from projections.audit_rows import AuditBatch, Subject, iso, record_creation, record_for, symbols
from projections.projection import HandlerEntry, on


def _token_type(subject: Subject, action: str) -> str:
    """GitLab's naming: ``deploy_token_<action>`` for project tokens, ``group_deploy_token_<action>``."""
    if subject.namespace_kind == "group":
        return "group_deploy_token_" + action
    return "deploy_token_" + action


def _token_words(subject: Subject) -> str:
    return (
        f"{subject.namespace_kind} deploy token with name: {subject.name} with token_id: {subject.subject_id}"
    )


def _token_sentence(verb: str, subject: Subject) -> str:
    """GitLab's message: ``<Verb> project deploy token with name: N with token_id: I with scopes: [...].``"""
    return f"{verb} {_token_words(subject)} with scopes: {symbols(subject.scopes)}"


def _token_created(trail: AuditBatch, event: DeployToken.Created, position: int) -> None:
    # ``Subject.created_by`` without its keywords (they cost more than the rest of the subject): every token
    # has one. Its scopes come with the ``Scoped`` saved beside it.
    subject = Subject(
        trail.stream_of(event, position),
        "deploy_token",
        event.token_id,
        event.name,
        event.holder_kind,
        event.holder_id,
        (),
        position,
        {},
        position,
    )
    details: dict[str, Any] = {
        "name": event.name,
        "username": event.username or default_username(event.token_id),
        "holder_kind": event.holder_kind,
        "holder_id": event.holder_id,
        "expires_at": iso(event.expires_at),
        "scopes": [],  # the Scoped event saved with it fills them in
    }
    if is_federated(event.actor):
        details["federation"] = _federation(event.actor)
    record_creation(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "created"),
        _token_sentence("Created", subject) + ".",
        details,
    )


def _federation(actor: dict[str, Any]) -> dict[str, Any]:
    """Who vouched for a federated creator, by name: only what ``FederatedIdentity`` records, never more."""
    identity = actor.get("federation") or {}
    return {
        "issuer": identity.get("issuer"),
        "subject": identity.get("subject"),
        "policy_id": identity.get("policy_id"),
        "jti": identity.get("jti"),
        "claims": dict(identity.get("claims") or {}),
    }


def _token_scoped(trail: AuditBatch, event: DeployToken.Scoped, position: int) -> None:
    subject = trail.subject_of(event, position)
    previous = subject.scopes
    scoped = subject.with_scopes(position, event.scopes)
    trail.update_subject(scoped)
    words, granted = _token_words(scoped), symbols(scoped.scopes)
    if not previous:
        # The Scoped recorded with Created: complete the creation row's message (see the module docstring).
        trail.complete_row(
            scoped.created_position,
            f"Created {words} with scopes: {granted}.",
            {"scopes": list(scoped.scopes)},
        )
        message = f"Scoped {words} with scopes: {granted}."
    else:
        message = f"Narrowed scopes of {words} from {symbols(previous)} to {granted}."
    details = trail.encoded(
        ("scoped", scoped.scopes, previous),
        {"scopes": list(scoped.scopes), "previous_scopes": list(previous)},
    )
    record_for(trail, event, position, scoped, _token_type(scoped, "scoped"), message, details)


def _token_revoked(trail: AuditBatch, event: DeployToken.Revoked, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "revoked"),
        _token_sentence("Revoked", subject) + ".",
        trail.encoded(
            ("revoked", event.reason, subject.scopes),
            {"reason": event.reason, "scopes": list(subject.scopes)},
        ),
    )


def _token_deleted(trail: AuditBatch, event: DeployToken.Deleted, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "destroyed"),
        _token_sentence("Destroyed", subject) + ".",
        trail.encoded(("destroyed", subject.scopes), {"scopes": list(subject.scopes)}),
    )


def _token_rotated(trail: AuditBatch, event: DeployToken.Rotated, position: int) -> None:
    subject = trail.subject_of(event, position)
    until = iso(event.previous_valid_until)
    if until is None:
        grace = "without a grace period: the previous value stopped working at once"
    else:
        grace = f"with a grace period: the previous value stays valid until {until}"
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "rotated"),
        f"{_token_sentence('Rotated', subject)} {grace}.",
        trail.encoded(
            ("rotated", until, subject.scopes),
            {
                "grace_period": until is not None,
                "previous_valid_until": until,
                "scopes": list(subject.scopes),
            },
        ),
    )


def _token_expired(trail: AuditBatch, event: DeployToken.Expired, position: int) -> None:
    subject = trail.subject_of(event, position)
    expires_at = iso(event.expires_at)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "expired"),
        f"{_token_sentence('Expired', subject)} at {expires_at}.",
        trail.encoded(
            ("expired", expires_at, subject.scopes),
            {"expires_at": expires_at, "scopes": list(subject.scopes)},
        ),
    )


def _interval_details(interval: int, message_id: str | None = None) -> dict[str, Any]:
    return {
        "interval": interval,
        "interval_name": INTERVAL_NAMES.get(interval, str(interval)),
        **({"message_id": message_id} if message_id is not None else {}),
    }


def _token_notification_due(trail: AuditBatch, event: DeployToken.NotificationDue, position: int) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_due"),
        f"The {event.interval}-day expiry notification of {_token_words(subject)} became due.",
        trail.encoded(("due", event.interval), _interval_details(event.interval)),
    )


def _token_notification_claimed(
    trail: AuditBatch, event: DeployToken.NotificationClaimed, position: int
) -> None:
    subject = trail.subject_of(event, position)
    lease_until = iso(event.lease_until)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_claimed"),
        f"Claimed the {event.interval}-day expiry notification of {_token_words(subject)} until {lease_until}.",
        {**_interval_details(event.interval, event.message_id), "lease_until": lease_until},
    )


def _token_notification_failed(
    trail: AuditBatch, event: DeployToken.NotificationFailed, position: int
) -> None:
    subject = trail.subject_of(event, position)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notification_failed"),
        f"Failed to send the {event.interval}-day expiry notification of {_token_words(subject)}; "
        "it will be retried.",
        {**_interval_details(event.interval, event.message_id), "error": event.error},
    )


def _token_notified(trail: AuditBatch, event: DeployToken.Notified, position: int) -> None:
    subject = trail.subject_of(event, position)
    count = len(event.recipients)
    record_for(
        trail,
        event,
        position,
        subject,
        _token_type(subject, "expiry_notified"),
        f"Sent the {event.interval}-day expiry notification of {_token_words(subject)} "
        f"to {count} recipient{'' if count == 1 else 's'}.",
        {**_interval_details(event.interval, event.message_id), "recipients": list(event.recipients)},
    )


TOKEN_HANDLERS: Final[tuple[HandlerEntry[AuditBatch], ...]] = (
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
