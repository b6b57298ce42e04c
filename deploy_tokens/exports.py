"""Compliance exports (behaviour [history]): per-token activity — lifecycle events and recorded uses — as CSV
or JSON Lines.

Exports stream: rows are read in keyset pages and written out page by page, so memory stays flat however
large the export. Every export is bounded by a position fixed when it starts (the last audit position or
activity id included), so re-running it with the same filters and bound gives the same bytes. Its manifest
records the filters, the row count, the SHA-256 of the content, the range of the event log it covers and the
log's chain hash at that point (see ``projections.chain``), so an auditor can check the file and tie it to
the tamper-evident log.

CSV is opened in spreadsheets, which run a cell that begins like a formula; token names, user agents and
addresses are chosen by whoever sent them. So every text cell of a CSV that could start a formula is written
with a leading ``'`` (``csv_cell``); numbers, booleans and timestamps the service produced are written as they
are, and the manifest's hash covers the bytes as written. JSON Lines carries every value exactly as stored.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from infrastructure.activity import ActivityEvent
from infrastructure.db import Database, as_utc_text
from projections.audit_queries import AuditFilter
from projections.chain_queries import chain_head

Dataset = Literal["lifecycle", "usage", "usage_set_aside"]
Format = Literal["csv", "jsonl"]
CellKind = Literal["text", "number", "boolean", "time"]

PAGE: Final = 5000

_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "lifecycle": (
        "position",
        "occurred_at",
        "event_type",
        "actor_kind",
        "actor_id",
        "actor_username",
        "actor_address",
        "target_type",
        "target_id",
        "target_name",
        "namespace_kind",
        "namespace_id",
        "message",
        "details",
    ),
    "usage": ("id", *ActivityEvent._fields),  # the table's columns, declared once
    # Activity rows the writer could not store as they were (docs/architecture.md, "Per-token activity").
    "usage_set_aside": ("id", "set_aside_at", "error", "row_json"),
}
_TABLE: Final = {
    "lifecycle": "audit_events",
    "usage": "token_activity",
    "usage_set_aside": "token_activity_rejected",
}
# How a CSV cell is written is decided by its column, never guessed from the value: these columns hold what
# the service itself produces (ids, positions, HTTP statuses, decisions, its own clock); every other column is
# text and may start a formula. Column names mean the same in every dataset.
_CELL_KINDS: Final[dict[str, CellKind]] = {
    "position": "number",
    "id": "number",
    "actor_id": "number",
    "target_id": "number",
    "namespace_id": "number",
    "token_id": "number",
    "status": "number",
    "allowed": "boolean",
    "occurred_at": "time",
    "set_aside_at": "time",
}
_KEY: Final = {"lifecycle": "position", "usage": "id", "usage_set_aside": "id"}
# Lifecycle rows are filtered as the audit trail's queries filter them (``AuditFilter``).
_TIME: Final = {"usage": "occurred_at", "usage_set_aside": "set_aside_at"}


@dataclass(frozen=True)
class ExportRequest:
    dataset: Dataset
    format: Format = "jsonl"
    token_id: int | None = None
    namespace_kind: str | None = None  # "project" or "group": the tokens that namespace holds
    namespace_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    upto: int | None = None  # last audit position / activity id included; None: as of now

    def filters(self) -> dict[str, Any]:
        return {
            "token_id": self.token_id,
            "namespace_kind": self.namespace_kind,
            "namespace_id": self.namespace_id,
            "since": as_utc_text(self.since) if self.since else None,
            "until": as_utc_text(self.until) if self.until else None,
        }


@dataclass
class ExportManifest:
    dataset: str
    format: str
    filters: dict[str, Any]
    upto: int
    rows: int = 0
    bytes: int = 0
    sha256: str = ""
    log_range: dict[str, int] = field(default_factory=dict)
    chain_head: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)


class Export:
    """One export run: iterate ``chunks()`` once; then ``manifest`` is complete."""

    def __init__(self, db: Database, request: ExportRequest, chain_key: bytes) -> None:
        if request.dataset not in _TABLE:
            raise ValueError(f"unknown dataset {request.dataset!r}")
        if request.format not in ("csv", "jsonl"):
            raise ValueError(f"unknown format {request.format!r}")
        if request.dataset == "usage_set_aside" and (request.token_id or request.namespace_kind):
            # A set-aside row is kept as the text it arrived as: it has no token or namespace to filter by.
            raise ValueError("set-aside activity rows can be filtered by time only")
        self.db = db
        self.request = request
        self.lifecycle_filter = (
            AuditFilter(
                token_id=request.token_id,
                namespace_kind=request.namespace_kind,
                namespace_id=request.namespace_id,
                since=request.since,
                until=request.until,
            )
            if request.dataset == "lifecycle"
            else None
        )
        self.columns = _COLUMNS[request.dataset]
        self.cell_writers = tuple(_CELL_WRITERS[_CELL_KINDS.get(column, "text")] for column in self.columns)
        upto = request.upto if request.upto is not None else self._current_bound()
        head = chain_head(db, chain_key, at=self._log_position(upto))
        self.manifest = ExportManifest(
            dataset=request.dataset,
            format=request.format,
            filters=request.filters(),
            upto=upto,
            log_range={"first": 1 if head.position else 0, "last": head.position},
            chain_head=head.as_dict(),
        )

    def _current_bound(self) -> int:
        table, key = _TABLE[self.request.dataset], _KEY[self.request.dataset]
        with self.db.read() as cursor:
            row = cursor.execute(f"SELECT MAX({key}) FROM {table}").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _log_position(self, upto: int) -> int | None:
        """Lifecycle rows are log positions; usage rows are tied to the log as it was when the export ran."""
        return upto if self.request.dataset == "lifecycle" else None

    def count(self) -> int:
        where, params = self._where()
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT COUNT(*) FROM {_TABLE[self.request.dataset]} WHERE {where}", params
            ).fetchone()
        return int(row[0]) if row else 0

    def _where(self) -> tuple[str, list[Any]]:
        request = self.request
        key = _KEY[request.dataset]
        clauses: list[str] = [f"{key} <= ?"]
        params: list[Any] = [self.manifest.upto]
        if self.lifecycle_filter is not None:
            where, where_params = self.lifecycle_filter.where()
            return " AND ".join([*clauses, *where]), [*params, *where_params]
        if request.token_id is not None:
            clauses.append("token_id = ?")
            params.append(request.token_id)
        if request.namespace_kind is not None:
            clauses.append(
                "token_id IN (SELECT token_id FROM cred_tokens WHERE holder_kind = ? AND holder_id = ?)"
            )
            params += [request.namespace_kind, request.namespace_id]
        time_column = _TIME[request.dataset]
        if request.since is not None:
            clauses.append(f"{time_column} >= ?")
            params.append(request.since)
        if request.until is not None:
            clauses.append(f"{time_column} < ?")
            params.append(request.until)
        return " AND ".join(clauses), params

    def pages(self) -> Iterator[list[tuple[Any, ...]]]:
        """The rows in key order, a page at a time (keyset paging: each page is one indexed range read)."""
        dataset = self.request.dataset
        key = _KEY[dataset]
        where, params = self._where()
        sql = (
            f"SELECT {', '.join(self.columns)} FROM {_TABLE[dataset]} WHERE {where} AND {key} > ? "
            f"ORDER BY {key} LIMIT ?"
        )
        after = 0
        while True:
            with self.db.read() as cursor:
                page = cursor.execute(sql, [*params, after, PAGE]).fetchall()
            if not page:
                return
            yield page
            after = int(page[-1][0])

    def chunks(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        """The export's bytes, page by page; when exhausted, ``manifest`` holds the count and the SHA-256."""
        digest = hashlib.sha256()
        rows = 0

        def emitted(chunk: bytes) -> bytes:
            digest.update(chunk)
            self.manifest.bytes += len(chunk)
            return chunk

        if self.request.format == "csv":
            yield emitted(_csv_lines([[_text_cell(column) for column in self.columns]]))
        for page in self.pages():
            records = [
                tuple(_normalise(column, value) for column, value in zip(self.columns, row, strict=True))
                for row in page
            ]
            if self.request.format == "csv":
                cells = [
                    [write(value) for write, value in zip(self.cell_writers, record, strict=True)]
                    for record in records
                ]
                yield emitted(_csv_lines(cells))
            else:
                yield emitted(_jsonl_lines(self.columns, records))
            rows += len(page)
            if progress:
                progress(rows)
        self.manifest.rows = rows
        self.manifest.sha256 = digest.hexdigest()


_BOOLEAN_COLUMNS: Final = frozenset({"allowed"})


def _normalise(column: str, value: Any) -> Any:
    """The same bytes on both backends: timestamps as fixed-width UTC text, booleans as booleans."""
    if isinstance(value, datetime):
        return as_utc_text(value)
    if column in _BOOLEAN_COLUMNS and value is not None:
        return bool(value)
    return value


# OWASP's CSV-injection rule: a spreadsheet may evaluate a cell whose first character is one of these. The
# remedy, a leading quote, is the one GitLab's CSV builder uses.
FORMULA_TRIGGERS: Final = frozenset("=+-@\t\r")


# One writer per kind, chosen once per column: exports write every cell of millions of rows through them.
def _text_cell(value: Any) -> str:
    """Text as a spreadsheet shows it literally: a leading ``'`` when it could start a formula.

    Text that already starts with quotes before a trigger (``'=x``) gets one more, so that one rule recovers
    every original value: a cell beginning with one or more ``'`` and a trigger loses its first ``'``.
    """
    if value is None:
        return ""
    text = value if type(value) is str else _text(value)
    first = text[:1]
    if first in FORMULA_TRIGGERS or (first == "'" and text.lstrip("'")[:1] in FORMULA_TRIGGERS):
        return "'" + text
    return text


def _number_cell(value: Any) -> str:
    # ``type`` rather than ``isinstance``: a bool is an int to Python, but it is no number here.
    # Anything but an int is text: SQLite stores whatever it is given in any column.
    return str(value) if type(value) is int else _text_cell(value)


def _boolean_cell(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _text_cell(value)


_CELL_WRITERS: Final[dict[CellKind, Callable[[Any], str]]] = {
    "text": _text_cell,
    "number": _number_cell,
    "boolean": _boolean_cell,
    # The service's timestamps (``as_utc_text``) begin with a digit, so the text rule writes them unchanged;
    # anything else found in a time column is text.
    "time": _text_cell,
}


def csv_cell(kind: CellKind, value: Any) -> str:
    """One CSV cell: a value of its column's kind as it is; anything else as text, neutralised."""
    return _CELL_WRITERS[kind](value)


def _csv_lines(rows: Sequence[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _jsonl_lines(columns: Sequence[str], records: Sequence[tuple[Any, ...]]) -> bytes:
    lines = [json.dumps(dict(zip(columns, record, strict=True)), separators=(",", ":")) for record in records]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
