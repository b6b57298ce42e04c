"""Pruning archived activity rows (behaviour [retention]): the SQL that retention needs, and its run lock.

A retention run archives the rows of a table older than a cut-off and up to a bound id, then deletes exactly
those rows. Three things make "exactly" hold while the activity writer keeps inserting:

- ``frozen_bound``: on PostgreSQL the bound is read under a ``SHARE`` lock on the table, held for that one
  query. Taking it waits for every open insert to commit, and identity values are handed out in order, so no
  row at or below the bound can appear afterwards (without it, an insert that had drawn a lower id but not
  committed yet would be missed by the archive and then deleted with it). SQLite has one writer at a time: a
  committed snapshot already holds every row at or below its highest id.
- ``ArchiveRange``: the archived rows are those with ``first_id <= id <= last_id`` and a time before the
  cut-off. Deleting by that range (never by time alone) leaves every row written since the archive, whatever
  its timestamp: a row a writer held through an outage can be old and new at once.
- ``delete_range`` deletes in short transactions of ``batch_size`` rows, so the writer (which needs the
  table's write lock on SQLite) never waits for more than one batch.

``retention_lock`` makes runs take turns: an advisory lock on PostgreSQL (for every process on every machine
that shares the database), a file lock in the archive folder with SQLite (whose database is on this machine).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import psycopg

from infrastructure.db import CONNECT_TIMEOUT, Database
from infrastructure.settings import DatabaseLocation

__all__ = [
    "ACTIVITY_TABLES",
    "ActivityTable",
    "ArchiveRange",
    "archive_range",
    "delete_range",
    "frozen_bound",
    "remaining_rows",
    "retention_lock",
]

ActivityTable = Literal["token_activity", "token_activity_rejected"]
# Each table and the time its rows are aged by.
ACTIVITY_TABLES: Final[dict[ActivityTable, str]] = {
    "token_activity": "occurred_at",
    "token_activity_rejected": "set_aside_at",
}


@dataclass(frozen=True)
class ArchiveRange:
    """The rows of ``table`` archived together: ``first_id <= id <= last_id`` and aged before ``cutoff``."""

    table: ActivityTable
    cutoff: datetime
    first_id: int
    last_id: int
    rows: int

    def where(self) -> tuple[str, list[object]]:
        time_column = ACTIVITY_TABLES[self.table]
        return f"id >= ? AND id <= ? AND {time_column} < ?", [self.first_id, self.last_id, self.cutoff]


def _table(table: str) -> ActivityTable:
    if table == "token_activity":
        return "token_activity"
    if table == "token_activity_rejected":
        return "token_activity_rejected"
    raise ValueError(f"not an activity table: {table!r}")


def frozen_bound(db: Database, table: str) -> int:
    """The highest id of ``table`` such that no row at or below it can still be added, and whose row may go
    (0: none may).

    SQLite gives a new row the id max(id) + 1: were the newest row deleted, the next row would take its id
    again (an empty table starts over at 1), and a reader paging by id (``after_id``, an export's ``upto``)
    would never see it. So on SQLite the newest row always stays, until a newer one exists; PostgreSQL's ids
    come from a sequence and are never reused."""
    name = _table(table)
    with db.transaction() as cursor:
        if db.dialect == "postgresql":
            # Waits for the inserts in flight (ROW EXCLUSIVE conflicts with SHARE), blocks new ones for the
            # length of one indexed MAX: the writer queues for milliseconds.
            cursor.execute(f"LOCK TABLE {name} IN SHARE MODE")
        row = cursor.execute(f"SELECT MAX(id) FROM {name}").fetchone()
    highest = int(row[0]) if row and row[0] is not None else 0
    return highest if db.dialect == "postgresql" else max(highest - 1, 0)


def archive_range(db: Database, table: str, cutoff: datetime, upto: int) -> ArchiveRange | None:
    """The rows of ``table`` at or below ``upto`` aged before ``cutoff``, or None when there are none."""
    name = _table(table)
    time_column = ACTIVITY_TABLES[name]
    with db.read() as cursor:
        row = cursor.execute(
            f"SELECT MIN(id), MAX(id), COUNT(*) FROM {name} WHERE id <= ? AND {time_column} < ?",
            [upto, cutoff],
        ).fetchone()
    if row is None or not row[2]:
        return None
    return ArchiveRange(name, cutoff, int(row[0]), int(row[1]), int(row[2]))


def remaining_rows(db: Database, archived: ArchiveRange) -> int:
    """How many of the archived rows are still stored."""
    where, params = archived.where()
    with db.read() as cursor:
        row = cursor.execute(f"SELECT COUNT(*) FROM {archived.table} WHERE {where}", params).fetchone()
    return int(row[0]) if row else 0


def delete_range(
    db: Database,
    archived: ArchiveRange,
    *,
    batch_size: int,
    after_batch: Callable[[int], None] = lambda deleted: None,
) -> int:
    """Delete the archived rows, oldest id first, ``batch_size`` to a transaction; returns how many went.

    Safe to repeat: rows already gone are simply not found again. ``after_batch`` is told the running total
    after each committed batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    where, params = archived.where()
    table = archived.table
    deleted = 0
    after = archived.first_id - 1
    while True:
        with db.transaction() as cursor:
            ids = cursor.execute(
                f"SELECT id FROM {table} WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                [*params, after, batch_size],
            ).fetchall()
            if not ids:
                return deleted
            last = int(ids[-1][0])
            cursor.execute(
                f"DELETE FROM {table} WHERE {where} AND id > ? AND id <= ?", [*params, after, last]
            )
            deleted += cursor.rowcount
        after = last
        after_batch(deleted)


@contextmanager
def retention_lock(location: DatabaseLocation, folder: Path) -> Iterator[bool]:
    """Yields whether this process holds the retention lock (False: another run holds it; do nothing)."""
    if location.dialect == "postgresql":
        with psycopg.connect(
            location.conninfo(), autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as connection:
            key = f"deploy-tokens-retention:{location.dbname}:{location.schema}"
            row = connection.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    connection.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
        return
    descriptor = os.open(folder / ".retention.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)
