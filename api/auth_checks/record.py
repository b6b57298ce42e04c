"""How every auth decision is accounted for: counted, recorded as activity, held against a guessing client.

Once per request, after its answer is decided: each decision is counted in ``/metrics``, queued as one
activity row (never the token value), and a failed credential counts once against the client's address
however many registry scopes it asked for. Nothing here waits for the database: the activity queue is
written by a background thread (``infrastructure.activity``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from flask import Flask

from api.activity import activity_of
from api.auth_checks.common import FAILED_CREDENTIALS, AuthWiring, Credentials
from infrastructure.activity import ACTIVITY_TEXT_LIMIT, TOKEN_REF_LENGTH, ActivityEvent
from projections.access import Action, Decision
from projections.credential_index import Resource

__all__ = ["Observed", "record_decisions"]

# Events are built by name through the named tuple's own ``__new__``: calling the class would first pack the
# keywords into a dict for it (three times the cost, on every auth check).
_new_event: Final = ActivityEvent.__new__

# One decision as recorded: what was asked, of what, and the answer (None: the index was stale). A plain
# tuple: one is built per decision on the hot path.
Observed = tuple[Action, Resource | None, Decision | None]


def record_decisions(
    app: Flask,
    wiring: AuthWiring,
    environ: Mapping[str, Any],
    endpoint: str,
    observed: Sequence[Observed],
    status: int,
    credentials: Credentials,
    client: str | None,
    now: datetime,
) -> None:
    """Count and record every decision of one request, then count a failed credential against ``client``.

    ``environ`` is the request's WSGI environ, read once by the view (each ``flask.request`` access goes
    through a context-local proxy). ``Action`` and ``Reason`` are ``StrEnum``s, used as the strings they are.
    """
    runtime, metrics = wiring.runtime, wiring.metrics
    counter = metrics.auth_decisions
    recorder = activity_of(app)
    value = credentials.value
    # Header texts are cut here, not only in the writer, so that queued rows stay small while the database is
    # down (the queue holds 100,000 of them). The client address is already a normalised IP address.
    user_agent = environ.get("HTTP_USER_AGENT")
    if user_agent is not None and len(user_agent) > ACTIVITY_TEXT_LIMIT:
        user_agent = user_agent[:ACTIVITY_TEXT_LIMIT]
    token_ref: str | None = None
    failed = False
    for action, resource, decision in observed:
        reason: str
        if decision is None:
            result, reason, token_id, allowed = "unavailable", "stale_index", None, False
        else:
            allowed, reason, token_id = decision.allowed, decision.reason, decision.token_id
            result = "allowed" if allowed else "denied"
            failed = failed or reason in FAILED_CREDENTIALS
        counter.inc(endpoint, action, result, reason)
        if recorder is None:
            continue
        if token_id is None and value and token_ref is None:
            # A value that matched no token is recorded by a prefix of its keyed digest, never as itself.
            token_ref = runtime.keys.digest(value)[:TOKEN_REF_LENGTH]
        recorder.record(
            _new_event(
                ActivityEvent,
                occurred_at=now,
                token_id=token_id,
                token_ref=None if token_id is not None else token_ref,
                endpoint=endpoint,
                action=action,
                resource_kind=None if resource is None else resource.kind,
                resource_ref=None if resource is None else _reference(resource),
                allowed=allowed,
                reason=reason,
                status=status,
                client_addr=client,
                user_agent=user_agent,
            )
        )
    if failed and runtime.bans.register_failure(client, now):
        metrics.auth_bans.inc(endpoint)


def _reference(resource: Resource) -> str:
    """How the request named the resource: its id, else its path (cut like every other free text)."""
    if resource.id is not None:
        return str(resource.id)
    return (resource.path or "")[:ACTIVITY_TEXT_LIMIT]
