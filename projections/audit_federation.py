"""The audit rows of federation (behaviour [federation]): trust policies and the instance's trusted issuers.

A policy's rows belong to its holder's namespace (``namespace_kind``/``namespace_id`` of the project or group),
so that the holder's audit page lists them beside its tokens' rows; their target is the policy. Every row
carries the policy's terms as they stand after the event, and a change also what each changed term was before
(``previous_<term>``, as the directory's rows do), rendered from the policy's subject: ``TrustPolicy.Changed``
carries the new terms whole, not the old ones. The trusted issuers are an instance setting; the settings stream
keeps a subject of its own for the same reason (the event carries only the new list).

A federated actor (a CI job that exchanged an ID token) needs nothing here: its row's author is the ID token's
subject (``Actor.federated``), and the rows of the tokens it creates carry who vouched for it
(``projections.audit_tokens``). ``IdTokenUse.Created`` has no row: it is saved with the ``DeployToken.Created``
of the token it gave, whose row names the same issuer, subject, policy and ``jti`` (see ``projections.audit``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from domain.federation import TrustPolicy
from domain.instance_settings import InstanceSettings
from projections.audit_rows import (
    TARGET_INSTANCE_SETTINGS,
    AuditBatch,
    AuditedEvent,
    Subject,
    record,
    symbols,
)
from projections.projection import HandlerEntry, on

TARGET_TRUST_POLICY: Final = "TrustPolicy"
POLICY_KIND: Final = "trust_policy"
SETTINGS_KIND: Final = "instance_settings"
# The order in which a change lists the terms it changed: the order a policy is read in.
TERMS: Final = ("name", "issuer", "audience", "conditions", "scopes", "ttl_seconds")
# The terms a policy's subject keeps in its data (its name and scopes have fields of their own).
_SUBJECT_DATA: Final = ("issuer", "audience", "conditions", "ttl_seconds")


# Trust policies -----------------------------------------------------------------------------------------


def _terms(event: TrustPolicy.Created | TrustPolicy.Changed) -> dict[str, Any]:
    """The policy's terms as the event states them, as a row's details hold them."""
    return {
        "name": event.name,
        "issuer": event.issuer,
        "audience": event.audience,
        "conditions": [dict(condition) for condition in event.conditions],
        "scopes": list(event.scopes),
        "ttl_seconds": event.ttl_seconds,
    }


def _subject_terms(subject: Subject) -> dict[str, Any]:
    """The policy's terms as its subject remembers them (name and scopes in their own fields)."""
    return {"name": subject.name, **subject.data, "scopes": list(subject.scopes)}


def _policy_words(subject: Subject) -> str:
    return f"trust policy with name: {subject.name} with policy_id: {subject.subject_id}"


def _conditions_text(conditions: Sequence[Mapping[str, Any]]) -> str:
    """``[project_path: acme/api, ref: refs/heads/* (glob)]``: each claim and the value it must have."""
    return (
        "["
        + ", ".join(
            f"{condition['claim']}: {condition['value']}"
            + (" (glob)" if condition.get("match", "exact") != "exact" else "")
            for condition in conditions
        )
        + "]"
    )


def _term_text(term: str, value: Any) -> str:
    if term == "conditions":
        return _conditions_text(value)
    if term == "scopes":
        return symbols(value)
    return str(value)


def _record_policy(
    trail: AuditBatch,
    event: AuditedEvent,
    position: int,
    subject: Subject,
    action: str,
    message: str,
    details: dict[str, Any],
) -> None:
    """A policy's row: its target is the policy, its namespace the policy's holder."""
    record(
        trail,
        event,
        position,
        event_type=f"{POLICY_KIND}_{action}",
        target=(TARGET_TRUST_POLICY, subject.subject_id, subject.name),
        namespace=(subject.namespace_kind, subject.namespace_id),
        message=message,
        details=details,
    )


def _policy_created(trail: AuditBatch, event: TrustPolicy.Created, position: int) -> None:
    terms = _terms(event)
    subject = Subject.created_by(
        trail.stream_of(event, position),
        position,
        kind=POLICY_KIND,
        subject_id=event.policy_id,
        name=event.name,
        namespace=(event.holder_kind, event.holder_id),
        scopes=event.scopes,
        data={key: terms[key] for key in _SUBJECT_DATA},
    )
    trail.put_subject(subject)
    _record_policy(
        trail,
        event,
        position,
        subject,
        "created",
        f"Created {_policy_words(subject)} for issuer: {event.issuer} with scopes: {symbols(event.scopes)}.",
        {**terms, "holder_kind": event.holder_kind, "holder_id": event.holder_id},
    )


def _policy_changed(trail: AuditBatch, event: TrustPolicy.Changed, position: int) -> None:
    subject = trail.subject_of(event, position)
    before, after = _subject_terms(subject), _terms(event)
    changed = [term for term in TERMS if before.get(term) != after[term]]
    updated = subject.changed_by(
        position,
        name=event.name,
        scopes=event.scopes,
        data={key: after[key] for key in _SUBJECT_DATA},
    )
    trail.update_subject(updated)
    listed = ", ".join(
        f"{term} from {_term_text(term, before.get(term))} to {_term_text(term, after[term])}"
        for term in changed
    )
    _record_policy(
        trail,
        event,
        position,
        updated,
        "updated",
        f"Changed {_policy_words(subject)}: {listed or 'nothing'}.",
        {**after, "changed": changed, **{f"previous_{term}": before.get(term) for term in changed}},
    )


def _policy_deleted(trail: AuditBatch, event: TrustPolicy.Deleted, position: int) -> None:
    subject = trail.subject_of(event, position)
    _record_policy(
        trail,
        event,
        position,
        subject,
        "destroyed",
        f"Destroyed {_policy_words(subject)} for issuer: {subject.data.get('issuer')}.",
        _subject_terms(subject),
    )


# The instance's trusted issuers -------------------------------------------------------------------------


def _issuers_text(issuers: Sequence[str]) -> str:
    return "[" + ", ".join(issuers) + "]"


def _oidc_issuers_changed(
    trail: AuditBatch, event: InstanceSettings.OidcIssuersChanged, position: int
) -> None:
    stream = trail.stream_of(event, position)
    settings = trail.find_subject(stream)
    previous: list[str] = [] if settings is None else list(settings.data.get("oidc_issuers", []))
    issuers = list(event.issuers)
    if settings is None:
        # The settings stream has no other subject: its own ``Created`` is bookkeeping (``projections.audit``).
        trail.put_subject(
            Subject.created_by(
                stream,
                position,
                kind=SETTINGS_KIND,
                subject_id=0,  # the instance has no id; the column has no NULL
                name="instance settings",
                namespace=("instance", None),
                data={"oidc_issuers": issuers},
            )
        )
    else:
        trail.update_subject(settings.changed_by(position, data={**settings.data, "oidc_issuers": issuers}))
    record(
        trail,
        event,
        position,
        event_type="oidc_issuers_changed",
        target=(TARGET_INSTANCE_SETTINGS, None, "instance settings"),
        namespace=("instance", None),
        message=f"Changed the trusted OIDC issuers from {_issuers_text(previous)} to {_issuers_text(issuers)}.",
        details={"issuers": issuers, "previous_issuers": previous},
    )


FEDERATION_HANDLERS: Final[tuple[HandlerEntry[AuditBatch], ...]] = (
    on(TrustPolicy.Created, _policy_created),
    on(TrustPolicy.Changed, _policy_changed),
    on(TrustPolicy.Deleted, _policy_deleted),
    on(InstanceSettings.OidcIssuersChanged, _oidc_issuers_changed),
)
