"""Audit streaming destinations as a read model (behaviour [audit-streaming]), and the audit rows to stream.

``audit_destinations`` has one row per destination ever created: its name, URL, the vault reference of its
verification token, and ``start_after``, the log position after which its deliveries begin (0 for
``start="beginning"``; the position of its own creation for ``"now"``, so that a rebuild gives the same
answer). A deleted destination keeps its row, with ``deleted_at`` set. The verification token itself is
never here (``infrastructure.vault``).

``audit_rows_after`` is what the streamer delivers: the audit trail's rows (``projections.audit``) after a
position, in the log's order. The audit projection writes a batch of rows and its tracking position in one
transaction, so rows appear in position order: a row below a position already read never appears later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.audit_streaming import AuditStreaming
from infrastructure.db import Cursor, Database, to_datetime
from projections.audit_queries import AuditRecord, audit_from_row
from projections.audit_rows import AUDIT_COLUMNS
from projections.projection import EventHandlers, EventProjection, on


@dataclass(frozen=True)
class DestinationRecord:
    destination_id: int
    name: str
    destination_url: str
    start: str  # "now" or "beginning"
    start_after: int  # deliveries begin after this log position
    secret_ref: str  # where the vault keeps the verification token
    created_at: datetime
    created_by: str
    deleted_at: datetime | None


_COLUMNS = (
    "destination_id, name, destination_url, start, start_after, secret_ref, "
    "created_at, created_by, deleted_at"
)


def _record(row: Sequence[Any]) -> DestinationRecord:
    created_at = to_datetime(row[6])
    assert created_at is not None
    return DestinationRecord(
        destination_id=int(row[0]),
        name=row[1],
        destination_url=row[2],
        start=row[3],
        start_after=int(row[4]),
        secret_ref=row[5],
        created_at=created_at,
        created_by=row[7],
        deleted_at=to_datetime(row[8]),
    )


def _created(cursor: Cursor, event: AuditStreaming.DestinationCreated, position: int) -> None:
    cursor.execute(
        f"INSERT INTO audit_destinations ({_COLUMNS}, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event.destination_id,
            event.name,
            event.destination_url,
            event.start,
            0 if event.start == "beginning" else position,
            event.secret_ref,
            cursor.timestamp(event.timestamp),
            str(event.actor.get("username", "")),
            None,
            position,
        ),
    )


def _deleted(cursor: Cursor, event: AuditStreaming.DestinationDeleted, position: int) -> None:
    cursor.execute(
        "UPDATE audit_destinations SET deleted_at = ?, position = ? WHERE destination_id = ?",
        (cursor.timestamp(event.timestamp), position, event.destination_id),
    )


class AuditDestinations(EventProjection):
    name = "audit_destinations"
    tables = ("audit_destinations",)
    handlers = EventHandlers(
        on(AuditStreaming.DestinationCreated, _created),
        on(AuditStreaming.DestinationDeleted, _deleted),
    )

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS audit_destinations (
                destination_id BIGINT PRIMARY KEY, name TEXT NOT NULL, destination_url TEXT NOT NULL,
                start TEXT NOT NULL, start_after BIGINT NOT NULL, secret_ref TEXT NOT NULL,
                created_at TIMESTAMPTZ NOT NULL, created_by TEXT NOT NULL, deleted_at TIMESTAMPTZ,
                position BIGINT NOT NULL)""",
        )


def destinations(db: Database, *, include_deleted: bool = False) -> list[DestinationRecord]:
    """Every destination (the deleted ones too, if asked), by id."""
    where = "" if include_deleted else " WHERE deleted_at IS NULL"
    with db.read() as cursor:
        rows = cursor.execute(
            f"SELECT {_COLUMNS} FROM audit_destinations{where} ORDER BY destination_id"
        ).fetchall()
    return [_record(row) for row in rows]


def destination(db: Database, destination_id: int) -> DestinationRecord | None:
    with db.read() as cursor:
        row = cursor.execute(
            f"SELECT {_COLUMNS} FROM audit_destinations WHERE destination_id = ?", (destination_id,)
        ).fetchone()
    return None if row is None else _record(row)


# The audit rows to stream ---------------------------------------------------------------------------------


def audit_rows_after(db: Database, position: int, limit: int) -> list[AuditRecord]:
    """Up to ``limit`` audit rows after ``position``, in the log's order."""
    with db.read() as cursor:
        rows = cursor.execute(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_events WHERE position > ? ORDER BY position LIMIT ?",
            (position, limit),
        ).fetchall()
    return [audit_from_row(row) for row in rows]


def audit_rows_behind(db: Database, positions: Sequence[int]) -> list[int]:
    """For each position, how many audit rows lie after it (a destination's lag), from one snapshot."""
    if not positions:
        return []
    answers = db.read_each(
        [("SELECT COUNT(*) FROM audit_events WHERE position > ?", (position,)) for position in positions]
    )
    return [int(rows[0][0]) for rows in answers]
