"""Rows a projection's batch touches, read once and written once: the bulk writer behind batched handlers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from infrastructure.db import Cursor

Row = dict[str, Any]


class KeyedRows:
    """One table's rows that a batch touches, by a unique key: each read at most once, written once at the end.

    A projection whose events mostly update the row of their own stream would otherwise send one statement
    per event (and read a row back whenever it needs one). Here the rows the batch will touch are read in
    one query (``prefetch``), every change is made to the row in memory, and ``flush`` writes each row once:
    DELETEs, then UPDATEs of the columns that changed (one ``executemany`` per set of columns), then the new
    rows in bulk (``insert_many``: COPY on PostgreSQL). The rows come out as if each change had been written
    at once, provided ``key`` is unique and no other unique column passes from one row to another within a
    batch (the flush does not keep the order of changes across rows).
    """

    def __init__(self, cursor: Cursor, table: str, key: str, columns: Sequence[str]) -> None:
        self._cursor = cursor
        self._table = table
        self._key = key
        self._columns = tuple(columns)
        if key not in self._columns:
            raise ValueError(f"{table}: the key {key} must be one of the columns")
        self._rows: dict[Any, Row | None] = {}  # what the batch knows: the row, or None for no row
        self._stored: dict[Any, bool] = {}  # keys whose row exists in the table (before the flush)
        self._changed: dict[Any, set[str]] = {}  # stored rows' changed columns
        # Dicts as ordered sets: rows are written in the order the batch first touched them.
        self._new: dict[Any, None] = {}  # rows to insert (a stored row deleted and re-created is both)
        self._deleted: dict[Any, None] = {}  # stored rows to delete

    def prefetch(self, keys: Iterable[Any], chunk: int = 500) -> None:
        """Read the rows of ``keys`` not yet known, a chunk of keys per query."""
        wanted = list(dict.fromkeys(key for key in keys if key not in self._rows))
        for offset in range(0, len(wanted), chunk):
            part = wanted[offset : offset + chunk]
            self._load(part)

    def none_stored(self, keys: Iterable[Any]) -> None:
        """The caller knows that ``keys`` have no stored row (their streams begin in this batch): no query."""
        for key in keys:
            if key not in self._rows:
                self._rows[key] = None
                self._stored[key] = False

    def _load(self, keys: Sequence[Any]) -> None:
        condition, params = self._cursor.any_of(self._key, keys)
        rows = self._cursor.execute(
            f"SELECT {', '.join(self._columns)} FROM {self._table} WHERE {condition}", params
        ).fetchall()
        for key in keys:
            self._rows[key] = None
            self._stored[key] = False
        at = self._columns.index(self._key)
        for values in rows:
            self._rows[values[at]] = dict(zip(self._columns, values, strict=True))
            self._stored[values[at]] = True

    def get(self, key: Any) -> Row | None:
        """The row as the batch has it so far (a copy: change it through ``update``), or None."""
        if key not in self._rows:
            self._load([key])
        row = self._rows[key]
        return None if row is None else dict(row)

    def insert(self, row: Row) -> None:
        key = row[self._key]
        if self.get(key) is not None:
            raise ValueError(f"{self._table}: a row with {self._key} = {key!r} exists already")
        self._rows[key] = {column: row.get(column) for column in self._columns}
        self._new[key] = None

    def update(self, key: Any, **values: Any) -> bool:
        """Set columns of the row of ``key``; False (and nothing changes) when there is no such row."""
        if key not in self._rows:
            self._load([key])
        row = self._rows[key]
        if row is None:
            return False
        row.update(values)
        if key not in self._new:
            self._changed.setdefault(key, set()).update(values)
        return True

    def delete(self, key: Any) -> bool:
        if self.get(key) is None:
            return False
        self._rows[key] = None
        self._new.pop(key, None)
        self._changed.pop(key, None)
        if self._stored[key]:
            self._deleted[key] = None
        return True

    def flush(self) -> None:
        """Write what changed, then start over from what is now stored."""
        cursor, table, key = self._cursor, self._table, self._key
        if self._deleted:
            cursor.executemany(f"DELETE FROM {table} WHERE {key} = ?", [(each,) for each in self._deleted])
        by_columns: dict[tuple[str, ...], list[list[Any]]] = {}
        for each, columns in self._changed.items():
            row = self._rows[each]
            assert row is not None
            names = tuple(sorted(columns))
            by_columns.setdefault(names, []).append([row[name] for name in names] + [each])
        for names, params in by_columns.items():
            assignments = ", ".join(f"{name} = ?" for name in names)
            cursor.executemany(f"UPDATE {table} SET {assignments} WHERE {key} = ?", params)
        new_rows = [self._rows[each] for each in self._new]
        cursor.insert_many(
            table, self._columns, [[row[column] for column in self._columns] for row in new_rows if row]
        )
        for each in self._new:
            self._stored[each] = True
        for each in self._deleted:
            self._stored[each] = False
        self._new, self._deleted, self._changed = {}, {}, {}
