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
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, Final, Literal

from domain.text import has_unstorable_characters
from infrastructure.activity import ActivityEvent
from infrastructure.db import Database, as_utc_text
from projections.audit_log_queries import AuditLogFilter
from projections.audit_queries import AuditFilter
from projections.audit_rows import AUDIT_COLUMNS
from projections.chain_queries import chain_head

Dataset = Literal["lifecycle", "usage", "usage_set_aside"]
Format = Literal["csv", "jsonl"]
CellKind = Literal["text", "number", "boolean", "time"]

# Rows read per keyset page: enough that the per-page costs (a query, a transaction) vanish in the per-row
# ones, few enough that a page and what is made of it stay in the CPU's cache (measured: pages of 20,000 rows
# export 20% slower than pages of 5,000) and memory stays flat.
PAGE: Final = 5000

_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    # The audit trail's columns up to its details: where in a stream an event lies is the trail's own business.
    "lifecycle": AUDIT_COLUMNS[: AUDIT_COLUMNS.index("details") + 1],
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
    # Lifecycle only (the auditor pages' filters): who acted, and which audit event type.
    actor_username: str | None = None
    event_type: str | None = None

    def filters(self) -> dict[str, Any]:
        filters: dict[str, Any] = {
            "token_id": self.token_id,
            "namespace_kind": self.namespace_kind,
            "namespace_id": self.namespace_id,
            "since": as_utc_text(self.since) if self.since else None,
            "until": as_utc_text(self.until) if self.until else None,
        }
        # Named only when given, so that the manifests of exports without them keep their shape.
        if self.actor_username is not None:
            filters["actor_username"] = self.actor_username
        if self.event_type is not None:
            filters["event_type"] = self.event_type
        return filters


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
        if request.dataset != "lifecycle" and (request.actor_username or request.event_type):
            raise ValueError("only lifecycle rows can be filtered by actor or event type")
        for name, text in (("actor", request.actor_username), ("event type", request.event_type)):
            if text is not None and has_unstorable_characters(
                text
            ):  # no stored value has them: a typo or worse
                raise ValueError(
                    f"the {name} filter contains characters that are not allowed (control characters)"
                )
        self.db = db
        self.request = request
        # The auditor pages' filter (projections.audit_log_queries): a page and its download hold the same rows.
        self.lifecycle_filter = (
            AuditLogFilter(
                AuditFilter(
                    token_id=request.token_id,
                    namespace_kind=request.namespace_kind,
                    namespace_id=request.namespace_id,
                    actor_username=request.actor_username,
                    since=request.since,
                    until=request.until,
                ),
                event_type=request.event_type,
            )
            if request.dataset == "lifecycle"
            else None
        )
        self.columns = _COLUMNS[request.dataset]
        self.selected = ", ".join(_selected(column, db.dialect) for column in self.columns)
        self.write_page = (
            _CsvPageWriter(self.columns) if request.format == "csv" else _JsonLinesPageWriter(self.columns)
        )
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
            f"SELECT {self.selected} FROM {_TABLE[dataset]} WHERE {where} AND {key} > ? "
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
            yield emitted(_csv_text([[_text_cell(column) for column in self.columns]]).encode("utf-8"))
        for page in self.pages():
            yield emitted(self.write_page(page))
            rows += len(page)
            if progress:
                progress(rows)
        self.manifest.rows = rows
        self.manifest.sha256 = digest.hexdigest()


_BOOLEAN_COLUMNS: Final = frozenset({"allowed"})
# ``as_utc_text``, spelt by PostgreSQL: the server formats its timestamps (in C) instead of the exporter
# formatting a datetime per cell (``isoformat`` alone costs more than reading the row).
_POSTGRES_UTC_TEXT: Final = """to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _selected(column: str, dialect: str) -> str:
    """What the export selects for ``column``: a time column as ``as_utc_text`` spells it, on PostgreSQL."""
    if dialect == "postgresql" and _CELL_KINDS.get(column) == "time":
        return f"{_POSTGRES_UTC_TEXT.format(column=column)} AS {column}"
    return column


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


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# Writing whole pages -----------------------------------------------------------------------------------------
#
# An export writes millions of cells, so a page is written column by column with C-speed operations (``map``
# over builtins and dict lookups, ``str.join``, substring counts), never a Python call per cell where the rules
# above allow: each column is looked at once (the types it holds, the first character of its text) and its
# cells pass as they are whenever the rules would leave every one unchanged, which is nearly always. A column
# the look cannot clear goes through the rules cell by cell (``_normalise`` and its cell writer), a page with a
# cell the csv module would quote is written by the csv module, and a page holding a value JSON spells its own
# way (a float, say) by the json module: the bytes are the same either way, only the time differs.

Column = Sequence[Any]

_NONE: Final = type(None)
_TEXT_TYPES: Final = frozenset({str, _NONE})
_INTEGER_TYPES: Final = frozenset({int, _NONE})
_BOOLEAN_TYPES: Final = frozenset({bool, _NONE})
_FIRST_CHARACTER: Final = operator.itemgetter(0)
# A cell that begins with a trigger, or with a quote (which may precede one), needs the text rule's look.
_MAY_NEED_A_QUOTE: Final = FORMULA_TRIGGERS | {"'"}
_BOOLEAN_CELLS: Final[dict[Any, str]] = {None: "", True: "true", False: "false"}  # 1 and 0 are equal keys
_BOOLEAN_VALUES: Final[dict[Any, bool | None]] = {None: None, True: True, False: False}
_JSON_LITERALS: Final[dict[Any, str]] = {None: "null", True: "true", False: "false"}
# ``map(replace, values, values)`` replaces None and leaves every other value as it is (``dict.get``).
Replace = Callable[[Any, Any], Any]
_NONE_AS_EMPTY: Final[Replace] = {None: ""}.get
_NONE_AS_ZERO: Final[Replace] = {None: 0}.get
_NONE_AS_NULL: Final[Replace] = {None: "null"}.get
_JSON_STRING: Final = json.encoder.encode_basestring_ascii  # what ``json.dumps`` writes for a str
# ``as_utc_text`` as two C-level method calls per timestamp (no Python frame): the same text.
_TO_UTC: Final = operator.methodcaller("astimezone", UTC)
_ISO_TEXT: Final = operator.methodcaller("isoformat", timespec="microseconds")
# ``json.dumps`` with these separators, without building an encoder for every line.
_JSON_LINE: Final = json.JSONEncoder(separators=(",", ":"))


def _types(values: Sequence[Any]) -> frozenset[type]:
    return frozenset(map(type, values))


def _utc_texts(moments: Sequence[datetime]) -> list[str]:
    return list(map(_ISO_TEXT, map(_TO_UTC, moments)))


def _plain_text(values: Sequence[Any]) -> bool:
    """Whether text (or empty) cells all pass the text rule unchanged: none begins with a trigger or a quote."""
    return _MAY_NEED_A_QUOTE.isdisjoint(map(_FIRST_CHARACTER, filter(None, values)))


Getter = Callable[[tuple[Any, ...]], Any]


def _columns(page: Sequence[tuple[Any, ...]], getters: Sequence[Getter]) -> list[list[Any]]:
    """The page's columns. Not ``zip(*page)``: that makes an iterator per row, a page-sized heap of objects
    for the garbage collector to walk."""
    return [list(map(getter, page)) for getter in getters]


def _lines(lines: Iterable[str]) -> str:
    return "\n".join(lines) + "\n"


CsvColumn = Callable[[Column], Sequence[str]]


def _csv_column(column: str) -> CsvColumn:
    """The column's cells as text, by the rules: ``_normalise``, then the cell writer of its kind."""
    kind = _CELL_KINDS.get(column, "text")
    write = _CELL_WRITERS[kind]

    def each_cell(values: Sequence[Any]) -> list[str]:
        return [write(_normalise(column, value)) for value in values]

    def text(values: Sequence[Any]) -> Sequence[str]:
        types = _types(values)
        if not types <= _TEXT_TYPES:
            return each_cell(values)
        if not _plain_text(values):
            return list(map(_text_cell, values))
        return list(map(_NONE_AS_EMPTY, values, values)) if _NONE in types else values

    def number(values: Sequence[Any]) -> Sequence[str]:
        types = _types(values)
        if not types <= _INTEGER_TYPES:
            return each_cell(values)
        return list(map(str, map(_NONE_AS_EMPTY, values, values) if _NONE in types else values))

    def boolean(values: Sequence[Any]) -> Sequence[str]:
        try:
            return list(map(_BOOLEAN_CELLS.__getitem__, values))
        except (KeyError, TypeError):  # anything else stored in the column: the rules decide
            return each_cell(values)

    def time(values: Sequence[Any]) -> Sequence[str]:
        if _types(values) == {datetime}:  # PostgreSQL's timestamps: the service's own fixed-width UTC text
            return text(_utc_texts(values))
        return text(values)

    columns: dict[CellKind, CsvColumn] = {"text": text, "number": number, "boolean": boolean, "time": time}
    return columns[kind]


class _CsvPageWriter:
    def __init__(self, columns: Sequence[str]) -> None:
        self.column_writers = tuple(_csv_column(column) for column in columns)
        self.getters: tuple[Getter, ...] = tuple(map(operator.itemgetter, range(len(columns))))
        self.separators_per_line = len(columns) - 1

    def __call__(self, page: Sequence[tuple[Any, ...]]) -> bytes:
        columns = _columns(page, self.getters)
        cells = [write(values) for write, values in zip(self.column_writers, columns, strict=True)]
        # Rows are joined as ``zip`` makes them, never kept: no page-sized list of tuples for the garbage
        # collector to walk again and again.
        text = _lines(map(",".join, zip(*cells, strict=True)))
        # The csv module quotes a cell holding a comma, a double quote or a line break. Where there is none
        # (every comma and newline of the page is one this join put there), plain joining wrote what it writes.
        unquoted = (
            text.count(",") == len(page) * self.separators_per_line
            and text.count("\n") == len(page)
            and '"' not in text
            and "\r" not in text
        )
        return (text if unquoted else _csv_text(zip(*cells, strict=True))).encode("utf-8")


def _csv_text(rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


JsonColumn = Callable[[Column], tuple[Sequence[Any], Sequence[str] | None]]


def _jsonl_column(column: str) -> JsonColumn:
    """The column's values as JSON Lines hold them (``_normalise``: timestamps as text, booleans as booleans),
    and their JSON text, or None when one is of a type ``json`` spells its own way."""

    def each_value(values: Sequence[Any]) -> tuple[Sequence[Any], Sequence[str] | None]:
        normalised = [_normalise(column, value) for value in values]
        return normalised, _json_texts(normalised, _types(normalised))

    def boolean(values: Sequence[Any]) -> tuple[Sequence[Any], Sequence[str] | None]:
        try:
            booleans = list(map(_BOOLEAN_VALUES.__getitem__, values))
        except (KeyError, TypeError):
            return each_value(values)
        return booleans, list(map(_JSON_LITERALS.__getitem__, booleans))

    def other(values: Sequence[Any]) -> tuple[Sequence[Any], Sequence[str] | None]:
        types = _types(values)
        if types == {datetime}:
            moments = _utc_texts(values)
            return moments, _json_texts(moments, _types(moments))
        if any(issubclass(each, datetime) for each in types):
            return each_value(values)
        return values, _json_texts(values, types)

    return boolean if column in _BOOLEAN_COLUMNS else other


def _json_texts(values: Sequence[Any], types: frozenset[type]) -> Sequence[str] | None:
    if types <= _TEXT_TYPES:
        strings: Iterator[str] = map(_JSON_STRING, map(_NONE_AS_EMPTY, values, values))
        return list(map(_NONE_AS_NULL, values, strings))
    if types <= _INTEGER_TYPES:
        numbers = map(int.__repr__, map(_NONE_AS_ZERO, values, values))
        return list(map(_NONE_AS_NULL, values, numbers))
    if types <= _BOOLEAN_TYPES:
        return list(map(_JSON_LITERALS.__getitem__, values))
    return None


class _JsonLinesPageWriter:
    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = tuple(columns)
        self.column_writers = tuple(_jsonl_column(column) for column in columns)
        self.getters: tuple[Getter, ...] = tuple(map(operator.itemgetter, range(len(columns))))
        # A line as ``_JSON_LINE`` writes a record, each value's place held by %s.
        self.line = (
            "{" + ",".join(f"{_JSON_STRING(column).replace('%', '%%')}:%s" for column in columns) + "}"
        )

    def __call__(self, page: Sequence[tuple[Any, ...]]) -> bytes:
        columns = _columns(page, self.getters)
        written = [write(values) for write, values in zip(self.column_writers, columns, strict=True)]
        texts = [each for _, each in written]
        if all(each is not None for each in texts):
            return _lines(map(self.line.__mod__, zip(*texts, strict=True))).encode("utf-8")
        values = [each for each, _ in written]
        records = map(dict, map(zip, repeat(self.columns), zip(*values, strict=True)))
        return _lines(map(_JSON_LINE.encode, records)).encode("utf-8")
