"""Queries for the auditor pages (behaviour [history], [activity]): the instance audit log a page at a time,
newest first, and a token's recorded uses (per day, allowed and denied; the last and the most recent ones).

The audit log is filtered exactly as the audit API and the lifecycle export filter it (``AuditFilter``),
plus an event type: the page and its CSV / JSON Lines download select the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from threading import Lock
from typing import Any, Final
from weakref import WeakKeyDictionary

from domain.clock import start_of_day
from infrastructure.db import Database, to_datetime
from projections.audit_queries import AuditFilter, AuditRecord, audit_from_row
from projections.audit_rows import AUDIT_COLUMNS

_SELECTED: Final = ", ".join(AUDIT_COLUMNS)


@dataclass(frozen=True)
class AuditLogFilter:
    """The audit API's filter (``AuditFilter``) and, optionally, one event type (``deploy_token_created``, …)."""

    rows: AuditFilter = field(default_factory=AuditFilter)
    event_type: str | None = None

    def where(self) -> tuple[list[str], list[Any]]:
        where, params = self.rows.where()
        if self.event_type is not None:
            where.append("event_type = ?")
            params.append(self.event_type)
        return where, params


@dataclass(frozen=True)
class AuditLogPage:
    """One page of the log, newest first, and where the neighbouring pages start.

    ``newer``: pass it as ``after`` for the page of newer rows (None: there is none). ``older``: pass it as
    ``before`` for the page of older rows (None: there is none).
    """

    rows: list[AuditRecord]
    newer: int | None
    older: int | None


def _select(db: Database, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    with db.read() as cursor:
        rows: list[tuple[Any, ...]] = cursor.execute(sql, params).fetchall()
    return rows


def _any(db: Database, selection: AuditLogFilter, condition: str, position: int) -> bool:
    where, params = selection.where()
    found = _select(
        db,
        f"SELECT position FROM audit_events WHERE {' AND '.join([condition, *where])} LIMIT 1",
        [position, *params],
    )
    return bool(found)


def audit_log_page(
    db: Database,
    selection: AuditLogFilter,
    *,
    limit: int,
    before: int | None = None,
    after: int | None = None,
) -> AuditLogPage:
    """``limit`` rows, newest first: the newest ones (no bound), those just older than position ``before``,
    or those just newer than position ``after`` (keyset paging: each page is one indexed range read)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if before is not None and after is not None:
        raise ValueError("give before or after, not both")
    where, params = selection.where()
    if after is not None:
        found = _select(
            db,
            f"SELECT {_SELECTED} FROM audit_events WHERE {' AND '.join(['position > ?', *where])} "
            "ORDER BY position LIMIT ?",
            [after, *params, limit + 1],
        )
        rows = [audit_from_row(row) for row in reversed(found[:limit])]
        newer = rows[0].position if len(found) > limit else None
        older_than = rows[-1].position if rows else after + 1
        older = older_than if _any(db, selection, "position < ?", older_than) else None
        return AuditLogPage(rows, newer, older)
    bound = [] if before is None else ["position < ?"]
    found = _select(
        db,
        f"SELECT {_SELECTED} FROM audit_events WHERE {' AND '.join(['1 = 1', *bound, *where])} "
        "ORDER BY position DESC LIMIT ?",
        [*([] if before is None else [before]), *params, limit + 1],
    )
    rows = [audit_from_row(row) for row in found[:limit]]
    older = rows[-1].position if len(found) > limit else None
    newer = None
    if before is not None:
        newer_than = rows[0].position if rows else before - 1
        newer = newer_than if _any(db, selection, "position > ?", newer_than) else None
    return AuditLogPage(rows, newer, older)


def audit_log_count(db: Database, selection: AuditLogFilter, *, cap: int) -> int:
    """How many rows the filter selects, counted up to ``cap + 1`` at most: a page says "more than ``cap``"
    rather than count millions of rows on every view."""
    where, params = selection.where()
    found = _select(
        db,
        "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events "
        f"WHERE {' AND '.join(['1 = 1', *where])} LIMIT ?) AS selected",
        [*params, cap + 1],
    )
    return int(found[0][0]) if found else 0


_KNOWN_TYPES: WeakKeyDictionary[Database, tuple[int, frozenset[str]]] = WeakKeyDictionary()
_KNOWN_TYPES_LOCK: Final = Lock()


def event_types(db: Database) -> list[str]:
    """Every event type the log holds, in alphabetical order (the page's choices).

    Audit rows are never changed or removed, so the types seen up to a position stay true: each call reads
    only the rows after the last position it saw (a range of the primary key), not the whole trail.
    """
    with _KNOWN_TYPES_LOCK:
        seen_upto, known = _KNOWN_TYPES.get(db, (0, frozenset()))
    found = _select(
        db,
        "SELECT event_type, MAX(position) FROM audit_events WHERE position > ? GROUP BY event_type",
        [seen_upto],
    )
    if found:
        known = known | {str(row[0]) for row in found}
        seen_upto = max(seen_upto, *(int(row[1]) for row in found))
        with _KNOWN_TYPES_LOCK:
            _KNOWN_TYPES[db] = (seen_upto, known)
    return sorted(known)


# A token's recorded uses ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DailyUses:
    """One UTC day of a token's recorded auth decisions."""

    day: date
    allowed: int
    denied: int


@dataclass(frozen=True)
class Use:
    """One recorded auth decision of a token (its text stored escaped: behaviour [activity])."""

    id: int
    occurred_at: datetime
    endpoint: str
    action: str
    resource_kind: str | None
    resource_ref: str | None
    allowed: bool
    reason: str
    status: int
    client_addr: str | None
    user_agent: str | None


_USE_COLUMNS: Final = (
    "id, occurred_at, endpoint, action, resource_kind, resource_ref, allowed, reason, status, client_addr, "
    "user_agent"
)
# The UTC day of a timestamp, as text: SQLite stores UTC ISO 8601 text; PostgreSQL a TIMESTAMPTZ.
_DAY: Final = {
    "sqlite": "substr(occurred_at, 1, 10)",
    "postgresql": "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def _use(row: Sequence[Any]) -> Use:
    occurred_at = to_datetime(row[1])
    assert occurred_at is not None
    return Use(
        id=int(row[0]),
        occurred_at=occurred_at,
        endpoint=str(row[2]),
        action=str(row[3]),
        resource_kind=row[4],
        resource_ref=row[5],
        allowed=bool(row[6]),
        reason=str(row[7]),
        status=int(row[8]),
        client_addr=row[9],
        user_agent=row[10],
    )


def daily_uses(db: Database, token_id: int, first: date, last: date) -> list[DailyUses]:
    """Every UTC day from ``first`` to ``last`` (both included), with its allowed and denied decisions; a day
    without any has zeros."""
    if last < first:
        raise ValueError("the last day comes before the first")
    day = _DAY[db.dialect]
    found = _select(
        db,
        f"SELECT {day}, SUM(CASE WHEN allowed THEN 1 ELSE 0 END), SUM(CASE WHEN allowed THEN 0 ELSE 1 END) "
        f"FROM token_activity WHERE token_id = ? AND occurred_at >= ? AND occurred_at < ? GROUP BY {day}",
        [token_id, start_of_day(first), start_of_day(last + timedelta(days=1))],
    )
    counts = {date.fromisoformat(str(row[0])): (int(row[1]), int(row[2])) for row in found}
    days = (first + timedelta(days=offset) for offset in range((last - first).days + 1))
    return [DailyUses(each, *counts.get(each, (0, 0))) for each in days]


def recent_uses(db: Database, token_id: int, *, limit: int) -> list[Use]:
    """The token's last ``limit`` recorded uses, newest first."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    found = _select(
        db,
        f"SELECT {_USE_COLUMNS} FROM token_activity WHERE token_id = ? ORDER BY occurred_at DESC, id DESC "
        "LIMIT ?",
        [token_id, limit],
    )
    return [_use(row) for row in found]


def last_use(db: Database, token_id: int) -> Use | None:
    found = recent_uses(db, token_id, limit=1)
    return found[0] if found else None
