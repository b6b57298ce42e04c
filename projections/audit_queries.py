"""Queries over the audit trail: its rows by token, namespace, actor and time, in the log's order."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.clock import as_utc
from infrastructure.db import Database, to_datetime
from projections.audit_rows import AUDIT_COLUMNS, TARGET_DEPLOY_TOKEN


@dataclass(frozen=True)
class AuditRecord:
    """One audit row: one lifecycle event."""

    position: int
    occurred_at: datetime
    event_type: str
    actor_kind: str
    actor_id: int | None
    actor_username: str
    actor_address: str | None
    target_type: str
    target_id: int | None  # None only for InstanceSettings
    target_name: str
    namespace_kind: str  # "project", "group", "user" or "instance"
    namespace_id: int | None  # None only for "instance"
    message: str
    details: dict[str, Any]
    stream_id: str
    version: int


def audit_from_row(row: Sequence[Any]) -> AuditRecord:
    occurred_at = to_datetime(row[1])
    assert occurred_at is not None
    return AuditRecord(
        position=int(row[0]),
        occurred_at=occurred_at,
        event_type=row[2],
        actor_kind=row[3],
        actor_id=None if row[4] is None else int(row[4]),
        actor_username=row[5],
        actor_address=row[6],
        target_type=row[7],
        target_id=None if row[8] is None else int(row[8]),
        target_name=row[9],
        namespace_kind=row[10],
        namespace_id=None if row[11] is None else int(row[11]),
        message=row[12],
        details=dict(json.loads(row[13])),
        stream_id=row[14],
        version=int(row[15]),
    )


@dataclass(frozen=True)
class AuditFilter:
    """Which audit rows: filters, all optional and combined with AND.

    ``since``/``until`` select the half-open interval ``[since, until)`` of event times (naive times are
    UTC). ``namespace_id`` needs ``namespace_kind``; ``namespace_kind`` alone selects every namespace of
    that kind (``"instance"`` has no id).
    """

    token_id: int | None = None
    namespace_kind: str | None = None
    namespace_id: int | None = None
    actor_id: int | None = None
    actor_username: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.namespace_id is not None and self.namespace_kind is None:
            raise ValueError("namespace_id needs namespace_kind")

    def where(self) -> tuple[list[str], list[Any]]:
        """The SQL conditions on ``audit_events`` (to be joined with AND) and their parameters."""
        where: list[str] = []
        params: list[Any] = []
        if self.token_id is not None:
            where.append("target_type = ? AND target_id = ?")
            params += [TARGET_DEPLOY_TOKEN, self.token_id]
        if self.namespace_kind is not None:
            where.append("namespace_kind = ?")
            params.append(self.namespace_kind)
        if self.namespace_id is not None:
            where.append("namespace_id = ?")
            params.append(self.namespace_id)
        if self.actor_id is not None:
            where.append("actor_id = ?")
            params.append(self.actor_id)
        if self.actor_username is not None:
            where.append("actor_username = ?")
            params.append(self.actor_username)
        if self.since is not None:
            where.append("occurred_at >= ?")
            params.append(as_utc(self.since))
        if self.until is not None:
            where.append("occurred_at < ?")
            params.append(as_utc(self.until))
        return where, params


@dataclass(frozen=True)
class AuditQuery(AuditFilter):
    """A page of filtered rows, ordered by position (the log's order).

    Page with ``after_position`` = the last position of the previous page. ``limit=None`` returns everything.
    """

    after_position: int = 0
    limit: int | None = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if self.after_position < 0:
            raise ValueError("after_position must not be negative")


def audit_events(db: Database, query: AuditQuery) -> list[AuditRecord]:
    where, params = query.where()
    sql = (
        f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_events WHERE {' AND '.join(['position > ?', *where])} "
        "ORDER BY position"
    )
    params = [query.after_position, *params]
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    with db.read() as cursor:
        rows = cursor.execute(sql, params).fetchall()
    return [audit_from_row(row) for row in rows]
