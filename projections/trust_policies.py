"""Trust policies as a read model (behaviour [federation]): listed per holder, found by issuer for an exchange.

``trust_policies`` has one row per policy ever created, with its current terms; a deleted policy keeps its row
with ``deleted_at`` set. The exchange finds its candidates here by issuer and then decides on each policy's
aggregate, read fresh from the event store, so a policy changed or deleted a moment ago is never trusted on
an older row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.federation import ClaimCondition, TrustPolicy
from infrastructure.db import Cursor, Database, to_datetime
from projections.projection import EventHandlers, EventProjection, on


@dataclass(frozen=True)
class TrustPolicyRecord:
    policy_id: int
    holder_kind: str
    holder_id: int
    name: str
    issuer: str
    audience: str
    conditions: tuple[ClaimCondition, ...]
    scopes: tuple[str, ...]
    ttl_seconds: int
    created_at: datetime
    created_by: str
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def from_aggregate(cls, policy: TrustPolicy) -> TrustPolicyRecord:
        """The record of a policy just saved: the same row the projection writes."""
        return cls(
            policy.policy_id,
            policy.holder_kind,
            policy.holder_id,
            policy.name,
            policy.issuer,
            policy.audience,
            policy.conditions,
            policy.scopes,
            policy.ttl_seconds,
            policy.created_on,
            str(policy.creator.get("username", "")),
            policy.modified_on,
            policy.deleted_at,
        )


_COLUMNS = (
    "policy_id, holder_kind, holder_id, name, issuer, audience, conditions, scopes, ttl_seconds, "
    "created_at, created_by, updated_at, deleted_at"
)


def _record(row: Sequence[Any]) -> TrustPolicyRecord:
    created_at, updated_at = to_datetime(row[9]), to_datetime(row[11])
    assert created_at is not None and updated_at is not None
    return TrustPolicyRecord(
        policy_id=int(row[0]),
        holder_kind=row[1],
        holder_id=int(row[2]),
        name=row[3],
        issuer=row[4],
        audience=row[5],
        conditions=tuple(ClaimCondition.from_event_data(data) for data in json.loads(row[6])),
        scopes=tuple(row[7].split()),
        ttl_seconds=int(row[8]),
        created_at=created_at,
        created_by=row[10],
        updated_at=updated_at,
        deleted_at=to_datetime(row[12]),
    )


def _terms(event: TrustPolicy.Created | TrustPolicy.Changed) -> tuple[Any, ...]:
    return (
        event.name,
        event.issuer,
        event.audience,
        json.dumps(event.conditions, sort_keys=True),
        " ".join(event.scopes),
        event.ttl_seconds,
    )


def _created(cursor: Cursor, event: TrustPolicy.Created, position: int) -> None:
    cursor.execute(
        f"INSERT INTO trust_policies ({_COLUMNS}, stream_id, position) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.policy_id,
            event.holder_kind,
            event.holder_id,
            *_terms(event),
            cursor.timestamp(event.timestamp),
            str(event.actor.get("username", "")),
            cursor.timestamp(event.timestamp),
            None,
            str(event.originator_id),
            position,
        ),
    )


def _changed(cursor: Cursor, event: TrustPolicy.Changed, position: int) -> None:
    # Later events name their stream, not the integer id: the row keeps its stream for them.
    cursor.execute(
        "UPDATE trust_policies SET name = ?, issuer = ?, audience = ?, conditions = ?, scopes = ?, "
        "ttl_seconds = ?, updated_at = ?, position = ? WHERE stream_id = ?",
        (*_terms(event), cursor.timestamp(event.timestamp), position, str(event.originator_id)),
    )


def _deleted(cursor: Cursor, event: TrustPolicy.Deleted, position: int) -> None:
    cursor.execute(
        "UPDATE trust_policies SET deleted_at = ?, updated_at = ?, position = ? WHERE stream_id = ?",
        (
            cursor.timestamp(event.timestamp),
            cursor.timestamp(event.timestamp),
            position,
            str(event.originator_id),
        ),
    )


class TrustPolicies(EventProjection):
    name = "trust_policies"
    tables = ("trust_policies",)
    handlers = EventHandlers(
        on(TrustPolicy.Created, _created),
        on(TrustPolicy.Changed, _changed),
        on(TrustPolicy.Deleted, _deleted),
    )

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS trust_policies (
                policy_id BIGINT PRIMARY KEY, holder_kind TEXT NOT NULL, holder_id BIGINT NOT NULL,
                name TEXT NOT NULL, issuer TEXT NOT NULL, audience TEXT NOT NULL, conditions TEXT NOT NULL,
                scopes TEXT NOT NULL, ttl_seconds INTEGER NOT NULL, created_at TIMESTAMPTZ NOT NULL,
                created_by TEXT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, deleted_at TIMESTAMPTZ,
                stream_id TEXT NOT NULL UNIQUE, position BIGINT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS trust_policies_holder ON trust_policies (holder_kind, holder_id)",
            "CREATE INDEX IF NOT EXISTS trust_policies_issuer ON trust_policies (issuer)",
        )


def policies_of(db: Database, holder_kind: str, holder_id: int) -> list[TrustPolicyRecord]:
    """A holder's policies that are not deleted, by id."""
    with db.read() as cursor:
        rows = cursor.execute(
            f"SELECT {_COLUMNS} FROM trust_policies WHERE holder_kind = ? AND holder_id = ? "
            "AND deleted_at IS NULL ORDER BY policy_id",
            (holder_kind, holder_id),
        ).fetchall()
    return [_record(row) for row in rows]


def policy(db: Database, policy_id: int) -> TrustPolicyRecord | None:
    with db.read() as cursor:
        row = cursor.execute(
            f"SELECT {_COLUMNS} FROM trust_policies WHERE policy_id = ?", (policy_id,)
        ).fetchone()
    return None if row is None else _record(row)


def policy_ids_for_issuer(db: Database, issuer: str) -> list[int]:
    """The ids of the live policies that trust ``issuer``: the exchange's candidates."""
    with db.read() as cursor:
        rows = cursor.execute(
            "SELECT policy_id FROM trust_policies WHERE issuer = ? AND deleted_at IS NULL ORDER BY policy_id",
            (issuer,),
        ).fetchall()
    return [int(row[0]) for row in rows]
