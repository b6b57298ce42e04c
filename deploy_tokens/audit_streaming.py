"""Audit event streaming (behaviour [audit-streaming]): the destinations, and the streamer that delivers every
audit event to each of them.

``AuditStreamingService`` creates, lists and deletes destinations (administrators; auditors may list). A
destination's verification token goes into the vault before its event is saved, under a fresh reference, so
no event, read model or log ever holds it.

``AuditStreamer`` runs one thread per destination. Each thread takes the destination's lease, reads the audit
trail after the destination's position and POSTs one event at a time, in the log's order; a 2xx moves the
position past that event (in the database, like a projection's tracking row) and only then is the next event
sent. Anything else, or no answer within the timeout, is retried with doubling waits, capped. So each event
reaches the destination at least once, in order, and the only event that can arrive twice is the one in
flight when a streamer stopped (crashed, was killed, or lost the database) before it recorded the
acknowledgement: it is sent again, with the same ``id``. Threads share no lock, and none holds a database
connection during a delivery: a slow or dead destination delays nothing but itself.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploy_tokens.access import AccessService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.actors import Actor
from domain.audit_streaming import (
    AUDIT_STREAMING_ID,
    AuditStreaming,
    check_verification_token,
    generate_verification_token,
    is_public_address,
)
from domain.clock import Clock
from domain.errors import NotFound
from infrastructure.audit_delivery import (
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    SIGNATURE_HEADER,
    TOKEN_HEADER,
    DeliveryPolicy,
    DeliveryPositions,
    LeaseLost,
    new_owner,
    post_event,
    signature,
)
from infrastructure.db import Database
from infrastructure.vault import DestinationTokenVault
from projections.audit_destinations import (
    DestinationRecord,
    audit_rows_after,
    audit_rows_behind,
    destination,
    destinations,
)
from projections.audit_instance import DESTINATION_DELETED
from projections.audit_queries import AuditRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Destination:
    """A destination as the API shows it; ``verification_token`` only to administrators."""

    id: int
    name: str
    destination_url: str
    start: str
    verification_token: str | None
    created_at: datetime


class AuditStreamingService:
    def __init__(
        self,
        uow: UnitOfWork,
        access: AccessService,
        db: Database,
        vault: DestinationTokenVault,
        clock: Clock,
        *,
        allow_insecure: bool = False,
    ) -> None:
        self.uow = uow
        self.access = access
        self.db = db
        self.vault = vault
        self.clock = clock
        self.allow_insecure = (
            allow_insecure  # http and local hosts too (DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE)
        )

    def _register(self) -> AuditStreaming:
        try:
            return self.uow.get(AuditStreaming, AUDIT_STREAMING_ID, "404 Destination")
        except NotFound:
            return AuditStreaming.initial(self.clock.now())

    def create_destination(
        self,
        actor: Actor,
        *,
        name: str,
        destination_url: str,
        verification_token: str | None = None,
        start: str = "now",
    ) -> Destination:
        self.access.require_admin(actor)
        token = generate_verification_token() if verification_token is None else verification_token
        check_verification_token(token)
        secret_ref = str(uuid.uuid4())
        stored = False
        created: list[int] = []

        def attempt() -> Sequence[AuditStreaming]:
            nonlocal stored
            register = self._register()
            created[:] = [
                register.create_destination(
                    name=name,
                    destination_url=destination_url,
                    start=start,
                    secret_ref=secret_ref,
                    actor=actor,
                    now=self.clock.now(),
                    allow_insecure=self.allow_insecure,
                )
            ]
            if not stored:  # decided: the token goes into the vault before the event that names it is saved
                self.vault.put(secret_ref, token)
                stored = True
            return [register]

        self.uow.retry(attempt)
        record = destination(self.db, created[0])
        assert record is not None
        return _shown(record, token)

    def destinations(self, actor: Actor) -> list[Destination]:
        self.access.require_audit_reader(actor)  # administrators and auditors (behaviour [auditors])
        shown = []
        for record in destinations(self.db):
            token = self.vault.get(record.secret_ref) if actor.is_admin else None
            shown.append(_shown(record, token))
        return shown

    def delete_destination(self, actor: Actor, destination_id: int) -> None:
        self.access.require_admin(actor)
        removed: list[str] = []

        def attempt() -> Sequence[AuditStreaming]:
            register = self._register()
            removed[:] = [
                register.delete_destination(destination_id, actor=actor, now=self.clock.now()).secret_ref
            ]
            return [register]

        self.uow.retry(attempt)
        # A crash before this line: the streamer destroys the token when it sees the deletion.
        self.vault.destroy(removed[0])


def _shown(record: DestinationRecord, token: str | None) -> Destination:
    return Destination(
        record.destination_id, record.name, record.destination_url, record.start, token, record.created_at
    )


# What is delivered ----------------------------------------------------------------------------------------


def _gitlab_time(moment: datetime) -> str:
    """As the audit API writes times: UTC with milliseconds and a Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def event_document(record: AuditRecord) -> dict[str, Any]:
    """The audit API's JSON for one event (``GET /api/v4/audit_events``), with ``id``: its log position,
    which never changes and names the event in every delivery of it."""
    return {
        "id": record.position,
        "position": record.position,
        "occurred_at": _gitlab_time(record.occurred_at),
        "event_type": record.event_type,
        "actor_kind": record.actor_kind,
        "actor_id": record.actor_id,
        "actor_username": record.actor_username,
        "actor_address": record.actor_address,
        "target_type": record.target_type,
        "target_id": record.target_id,
        "target_name": record.target_name,
        "namespace_kind": record.namespace_kind,
        "namespace_id": record.namespace_id,
        "message": record.message,
        "details": record.details,
    }


def event_body(record: AuditRecord) -> bytes:
    return json.dumps(event_document(record), separators=(",", ":")).encode()


def delivery_headers(record: AuditRecord, body: bytes, verification_token: str) -> dict[str, str]:
    return {
        TOKEN_HEADER: verification_token,
        EVENT_TYPE_HEADER: record.event_type,
        EVENT_ID_HEADER: str(record.position),
        SIGNATURE_HEADER: signature(body, verification_token),
    }


# Lag and failures, for /metrics ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DestinationFigures:
    destination_id: int
    name: str
    position: int
    lag: int
    delivered: int
    failures: int
    last_success_at: float | None


def stream_figures(db: Database) -> list[DestinationFigures]:
    """Per live destination: its position, the audit events after it, deliveries and failed attempts."""
    active = destinations(db)
    rows = DeliveryPositions(db).rows()
    positions = [
        rows[d.destination_id].position if d.destination_id in rows else d.start_after for d in active
    ]
    lags = audit_rows_behind(db, positions)
    figures = []
    for record, position, lag in zip(active, positions, lags, strict=True):
        row = rows.get(record.destination_id)
        figures.append(
            DestinationFigures(
                record.destination_id,
                record.name,
                position,
                lag,
                row.delivered if row else 0,
                row.failures if row else 0,
                row.last_success_at if row else None,
            )
        )
    return figures


# The streamer ---------------------------------------------------------------------------------------------


class MissingToken(Exception):
    """A destination whose verification token is not in the vault (it cannot be delivered to)."""


class DestinationWorker(threading.Thread):
    """Delivers the audit trail to one destination, in order, until stopped."""

    def __init__(
        self,
        record: DestinationRecord,
        *,
        db: Database,
        vault: DestinationTokenVault,
        positions: DeliveryPositions,
        policy: DeliveryPolicy,
        owner: str,
        poll_interval: float,
        batch_size: int,
    ) -> None:
        super().__init__(name=f"audit-stream-{record.destination_id}", daemon=True)
        self.record = record
        self.db = db
        self.vault = vault
        self.positions = positions
        self.policy = policy
        self.owner = owner
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.stop = threading.Event()
        self._failing = False
        self._token: str | None = None
        self._position: int | None = None  # while the lease is held
        self._renewed_at = 0.0  # monotonic time the lease was last taken or renewed

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self._deliver_batch()
                self._failing = False
            except LeaseLost:
                self._position = None
                log.warning("audit stream %d: another streamer took it over", self.record.destination_id)
                self.stop.wait(self.poll_interval)
            except Exception as error:
                self._position = None  # read again from the database, whatever happened
                if not self._failing:
                    if isinstance(error, MissingToken):
                        log.error("audit stream %d: %s", self.record.destination_id, error)
                    else:
                        log.exception(
                            "audit stream %d: cannot read or record; retrying", self.record.destination_id
                        )
                self._failing = True
                self.stop.wait(max(self.poll_interval, self.policy.first_retry))
        try:
            self.positions.release(self.record.destination_id, self.owner)
        except Exception:  # the lease runs out by itself
            log.warning("audit stream %d: could not release its lease", self.record.destination_id)

    def _held_position(self) -> int | None:
        """The destination's position while this streamer holds its lease (claimed again when half of it has
        run, so that an idle destination costs a read per poll and a write now and then); None: held elsewhere."""
        if self._position is not None and time.monotonic() - self._renewed_at < self.policy.lease / 2:
            return self._position
        claimed_at = time.monotonic()
        self._position = self.positions.claim(
            self.record.destination_id, self.record.start_after, self.owner, self.policy.lease
        )
        self._renewed_at = claimed_at
        return self._position

    def _deliver_batch(self) -> None:
        if self._token is None:
            self._token = self.vault.get(self.record.secret_ref)
            if self._token is None:
                raise MissingToken("its verification token is not in the vault")
        position = self._held_position()
        if position is None:  # another streamer delivers to it
            self.stop.wait(self.poll_interval)
            return
        rows = audit_rows_after(self.db, position, self.batch_size)
        if not rows:
            self.stop.wait(self.poll_interval)
            return
        for row in rows:
            if row.event_type == DESTINATION_DELETED and row.target_id == self.record.destination_id:
                # Its own deletion: nothing from there on is for it, whenever the streamer notices the deletion.
                self.stop.set()
                return
            if not self._deliver(row, self._token):
                return

    def _deliver(self, row: AuditRecord, token: str) -> bool:
        """Send one event until it is acknowledged (True) or the worker is stopped (False)."""
        body = event_body(row)
        headers = delivery_headers(row, body, token)
        destination_id = self.record.destination_id
        failures = 0
        while not self.stop.is_set():
            attempt = post_event(
                self.record.destination_url,
                body,
                headers,
                timeout=self.policy.timeout,
                allowed=None if self.policy.allow_insecure else is_public_address,
            )
            if attempt.acknowledged:
                renewed_at = time.monotonic()
                self.positions.acknowledged(destination_id, self.owner, row.position, self.policy.lease)
                self._position, self._renewed_at = row.position, renewed_at
                return True
            failures += 1
            error = attempt.error or "not acknowledged"
            renewed_at = time.monotonic()
            self.positions.failed(destination_id, self.owner, error, self.policy.lease)
            self._renewed_at = renewed_at
            wait = self.policy.backoff(failures)
            log.warning(
                "audit stream %d: event %d not delivered (%s), attempt %d; retrying in %g s",
                destination_id,
                row.position,
                error,
                failures,
                wait,
            )
            self._wait_renewing(wait)
        return False

    def _wait_renewing(self, seconds: float) -> None:
        """Wait before the next attempt, keeping the lease (a long backoff must not look like a dead streamer)."""
        renew_every = self.policy.lease / 3
        remaining = seconds
        while remaining > 0 and not self.stop.is_set():
            step = min(remaining, renew_every)
            if self.stop.wait(step):
                return
            remaining -= step
            if remaining > 0:
                renewed_at = time.monotonic()
                self.positions.renew(self.record.destination_id, self.owner, self.policy.lease)
                self._renewed_at = renewed_at


class AuditStreamer:
    """Follows the destinations: one ``DestinationWorker`` per live destination, stopped when it is deleted."""

    def __init__(
        self,
        db: Database,
        vault: DestinationTokenVault,
        policy: DeliveryPolicy,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 100,
    ) -> None:
        self.db = db
        self.vault = vault
        self.positions = DeliveryPositions(db)
        self.policy = policy
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.owner = new_owner()
        self.workers: dict[int, DestinationWorker] = {}
        self._swept: set[int] = set()

    def tick(self) -> None:
        """Start a worker for each new destination; stop those of deleted ones (and destroy their tokens)."""
        for record in destinations(self.db, include_deleted=True):
            running = self.workers.get(record.destination_id)
            if record.deleted_at is not None:
                if running is not None:
                    running.stop.set()
                    del self.workers[record.destination_id]
                if record.destination_id not in self._swept:
                    self.vault.destroy(record.secret_ref)  # idempotent: the service usually did it already
                    self._swept.add(record.destination_id)
                continue
            if running is None or not running.is_alive():
                worker = DestinationWorker(
                    record,
                    db=self.db,
                    vault=self.vault,
                    positions=self.positions,
                    policy=self.policy,
                    owner=self.owner,
                    poll_interval=self.poll_interval,
                    batch_size=self.batch_size,
                )
                self.workers[record.destination_id] = worker
                worker.start()

    def run_forever(self, stop: threading.Event) -> None:
        failing = False
        try:
            while not stop.is_set():
                try:
                    self.tick()
                    failing = False
                except Exception:
                    if not failing:
                        log.exception("audit streamer: cannot read the destinations; retrying")
                    failing = True
                stop.wait(self.poll_interval)
        finally:
            self.close()

    def close(self) -> None:
        for worker in self.workers.values():
            worker.stop.set()
        for worker in self.workers.values():
            worker.join(timeout=self.policy.timeout + 1)
        self.workers.clear()
