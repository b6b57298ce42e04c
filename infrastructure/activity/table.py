"""The ``token_activity`` table: one row per auth decision, declared once by ``ActivityEvent``; its queries.

``ActivityEvent``'s fields are the table's columns, in order, each annotated with its SQL type (``NOT NULL``
unless the Python type admits ``None``). The column list, the table's definition, the insert statements,
what the writer binds (``infrastructure.activity.writer``) and how a stored row is read back all derive from
that one declaration, so a new column is one line there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Final, NamedTuple, get_args, get_type_hints

from infrastructure.db import Cursor, Database, to_datetime

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "INSERT_CHUNK_ROWS",
    "INSERT_REJECTED",
    "TOKEN_REF_LENGTH",
    "ActivityEvent",
    "ActivityRow",
    "Column",
    "RejectedActivityRow",
    "activity_rows",
    "create_activity_table",
    "insert_statement",
    "rejected_activity_rows",
]

# A value that matched no token is recorded by this many hex characters of its keyed digest: a pseudonym that
# lets repeated attempts with one unknown value be correlated, never the value itself.
TOKEN_REF_LENGTH: Final = 12


class ActivityEvent(NamedTuple):
    """One auth decision, as the request thread queues it: the columns of ``token_activity``, in order."""

    occurred_at: Annotated[datetime, "TIMESTAMPTZ"]
    token_id: Annotated[int | None, "BIGINT"]
    token_ref: Annotated[str | None, "TEXT"]  # only when no token matched (see TOKEN_REF_LENGTH)
    endpoint: Annotated[str, "TEXT"]  # auth_request, jwt or check
    action: Annotated[str, "TEXT"]
    resource_kind: Annotated[str | None, "TEXT"]
    resource_ref: Annotated[str | None, "TEXT"]  # the id or full path the request named
    allowed: Annotated[bool, "BOOLEAN"]
    reason: Annotated[str, "TEXT"]
    status: Annotated[int, "INTEGER"]  # the HTTP status of the answer
    client_addr: Annotated[str | None, "TEXT"]
    user_agent: Annotated[str | None, "TEXT"]


class ActivityRow(NamedTuple):
    """A stored event and its row id, which grows with insertion (an export pages by it)."""

    id: int
    event: ActivityEvent


class Column(NamedTuple):
    """One column of ``token_activity``, as ``ActivityEvent`` declares it."""

    name: str
    value_type: type  # datetime, int, bool or str
    nullable: bool
    sql_type: str

    @property
    def definition(self) -> str:
        return f"{self.name} {self.sql_type}" + ("" if self.nullable else " NOT NULL")


def _columns() -> tuple[Column, ...]:
    declared = get_type_hints(ActivityEvent, include_extras=True)
    columns = []
    for name in ActivityEvent._fields:
        python_type, sql_type = get_args(declared[name])
        members = get_args(python_type)  # int | None -> (int, NoneType); a plain type has none
        value_types = [member for member in members if member is not type(None)] or [python_type]
        columns.append(Column(name, value_types[0], type(None) in members, sql_type))
    return tuple(columns)


COLUMNS: Final = _columns()

_COLUMN_LIST: Final = ", ".join(column.name for column in COLUMNS)
_ROW: Final = "(" + ", ".join("?" for _ in COLUMNS) + ")"
# Rows one INSERT takes at most: 100 rows at a dozen parameters a row stay well under the parameter limits
# of SQLite and PostgreSQL (32,766 and 65,535).
INSERT_CHUNK_ROWS: Final = 100
INSERT_REJECTED: Final = (
    "INSERT INTO token_activity_rejected (set_aside_at, error, row_json) VALUES (?, ?, ?)"
)


@cache
def insert_statement(rows: int) -> str:
    """One ``INSERT`` of ``rows`` rows (at most ``INSERT_CHUNK_ROWS``), their parameters in column order."""
    if not 1 <= rows <= INSERT_CHUNK_ROWS:
        raise ValueError(f"an activity INSERT takes 1 to {INSERT_CHUNK_ROWS} rows, not {rows}")
    return f"INSERT INTO token_activity ({_COLUMN_LIST}) VALUES " + ", ".join([_ROW] * rows)


_ID_COLUMN: Final = {
    # The rowid alias: new ids are max(id) + 1, so they grow with insertion while old rows are pruned from the
    # oldest end, the newest always kept (``pruning.frozen_bound``); AUTOINCREMENT would add a sqlite_sequence
    # update to every insert for no gain here.
    "sqlite": "id INTEGER PRIMARY KEY",
    "postgresql": "id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
}


@dataclass(frozen=True)
class RejectedActivityRow:
    """A row the database refused on its own, kept for auditors instead of being retried forever."""

    id: int
    set_aside_at: datetime
    error: str  # the exception's class (and SQLSTATE), never its message
    row: dict[str, Any]  # the queued fields, token-shaped text redacted


def create_activity_table(db: Database) -> None:
    """Idempotent; safe when several processes start at once (a lost race on PostgreSQL is retried)."""
    definitions = ", ".join(column.definition for column in COLUMNS)
    statements = (
        f"CREATE TABLE IF NOT EXISTS token_activity ({_ID_COLUMN[db.dialect]}, {definitions})",
        "CREATE INDEX IF NOT EXISTS token_activity_token ON token_activity (token_id, occurred_at)",
        "CREATE INDEX IF NOT EXISTS token_activity_time ON token_activity (occurred_at)",
        # TEXT, not JSON/JSONB: the column must accept whatever the writer produced without a parser's opinion.
        f"""CREATE TABLE IF NOT EXISTS token_activity_rejected (
            {_ID_COLUMN[db.dialect]},
            set_aside_at TIMESTAMPTZ NOT NULL, error TEXT NOT NULL, row_json TEXT NOT NULL)""",
    )
    for attempt in range(2):
        try:
            with db.transaction() as cursor:
                for statement in statements:
                    cursor.execute(statement)
            return
        except Exception:
            # Two processes creating the table at the same instant: one loses on the catalog's unique index.
            if attempt:
                raise
            log.info("token_activity creation raced; retrying", exc_info=True)


# Reading ---------------------------------------------------------------------------------------------------


def _reader(column: Column) -> Callable[[Any], Any]:
    """How a stored value becomes the declared type the same way on both backends (SQLite: text, 0/1)."""
    if column.value_type is datetime:
        return to_datetime
    if column.value_type in (int, bool):
        convert = column.value_type
        return lambda value: None if value is None else convert(value)
    return lambda value: value


_READERS: Final = tuple(_reader(column) for column in COLUMNS)


def _activity_row(values: Sequence[Any]) -> ActivityRow:
    event = ActivityEvent._make(read(value) for read, value in zip(_READERS, values[1:], strict=True))
    return ActivityRow(int(values[0]), event)


def activity_rows(
    db: Database,
    token_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    after_id: int | None = None,
    limit: int = 1000,
) -> list[ActivityRow]:
    """Activity in time order: optionally one token's, in ``[since, until)``, after row ``after_id``.

    ``after_id`` pages an export: pass the last row's id to continue (the id grows with insertion).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    where: list[str] = []
    params: list[Any] = []
    if token_id is not None:
        where.append("token_id = ?")
        params.append(token_id)
    if since is not None:
        where.append("occurred_at >= ?")
        params.append(since)
    if until is not None:
        where.append("occurred_at < ?")
        params.append(until)
    if after_id is not None:
        where.append("id > ?")
        params.append(after_id)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    order = " ORDER BY id" if after_id is not None else " ORDER BY occurred_at, id"
    with db.read() as cursor:
        rows = _select(
            cursor, f"SELECT id, {_COLUMN_LIST} FROM token_activity{clause}{order} LIMIT ?", [*params, limit]
        )
    return [_activity_row(row) for row in rows]


def _select(cursor: Cursor, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    return cursor.execute(sql, params).fetchall()


def rejected_activity_rows(
    db: Database, *, after_id: int | None = None, limit: int = 1000
) -> list[RejectedActivityRow]:
    """Rows set aside by the writer, in the order they were set aside (page with ``after_id``)."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    clause, params = ("", [limit]) if after_id is None else (" WHERE id > ?", [after_id, limit])
    with db.read() as cursor:
        rows = _select(
            cursor,
            f"SELECT id, set_aside_at, error, row_json FROM token_activity_rejected{clause} ORDER BY id LIMIT ?",
            params,
        )
    rejected: list[RejectedActivityRow] = []
    for row_id, set_aside_at, error, row_json in rows:
        moment = to_datetime(set_aside_at)
        assert moment is not None
        rejected.append(RejectedActivityRow(int(row_id), moment, error, json.loads(row_json)))
    return rejected
