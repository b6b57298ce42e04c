"""Exports write whole pages column by column (deploy_tokens/exports.py, "Writing whole pages"); the bytes must
be exactly those of the rules applied cell by cell, whatever a page holds.

The reference below is the rules as docs/auditing.md states them: each value normalised (timestamps as UTC
text, the ``allowed`` column as a boolean), each CSV cell written by its column's kind (``csv_cell``), rows
written by the csv module; JSON Lines as ``json.dumps`` writes each record.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from deploy_tokens.exports import (
    _CELL_KINDS,
    _COLUMNS,
    _CsvPageWriter,
    _JsonLinesPageWriter,
    _normalise,
    _utc_texts,
    csv_cell,
)
from infrastructure.db import as_utc_text

HOSTILE: list[Any] = [
    None,
    "",
    "=1+1",
    '=HYPERLINK("http://evil.example/","x")',
    "+cmd|' /C calc'!A0",
    "-1+1",
    "@SUM(A1)",
    "\tx",
    "\r\n=1",
    "'=x",
    "''@y",
    "'plain",
    "'",
    "it's",
    "a,b",
    'say "hi"',
    "line\nbreak",
    "a=1",
    " =1",
    "é€ unicode",
    "\\x00 escaped",
    0,
    1,
    -3,
    2**70,
    True,
    False,
    1.5,
    float("nan"),
    b"bytes",
    datetime(2026, 1, 10, 12, 0, tzinfo=UTC),
    datetime(2026, 1, 10, 12, 0, 0, 7, tzinfo=timezone(timedelta(hours=-5))),
]


def _usage_row(number: int, *, postgres: bool) -> tuple[Any, ...]:
    """A row as each backend returns it: SQLite gives text timestamps and 0/1, PostgreSQL booleans."""
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=number, microseconds=number)
    allowed = number % 7 != 0
    return (
        number,
        moment if postgres else as_utc_text(moment),
        number % 500 + 1,
        None,
        "auth_request",
        "git_read",
        "project",
        f"group/project-{number % 97}",
        allowed if postgres else int(allowed),
        "allowed" if allowed else "revoked",
        200 if allowed else 401,
        f"10.0.{number % 250}.{number % 200}",
        "git/2.39.5",
    )


def _reference_csv(columns: tuple[str, ...], page: list[tuple[Any, ...]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(
        [
            [
                csv_cell(_CELL_KINDS.get(column, "text"), _normalise(column, value))
                for column, value in zip(columns, row, strict=True)
            ]
            for row in page
        ]
    )
    return buffer.getvalue().encode("utf-8")


def _reference_jsonl(columns: tuple[str, ...], page: list[tuple[Any, ...]]) -> bytes:
    lines = [
        json.dumps(
            {column: _normalise(column, value) for column, value in zip(columns, row, strict=True)},
            separators=(",", ":"),
        )
        for row in page
    ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def _outcome(write: Callable[[], bytes]) -> bytes | type[Exception]:
    """The bytes, or the kind of error: a value JSON cannot hold (bytes) must fail both ways alike."""
    try:
        return write()
    except (TypeError, ValueError) as error:
        return type(error)


def _both(columns: tuple[str, ...], page: list[tuple[Any, ...]]) -> tuple[Any, Any, Any, Any]:
    return (
        _outcome(lambda: _CsvPageWriter(columns)(page)),
        _outcome(lambda: _reference_csv(columns, page)),
        _outcome(lambda: _JsonLinesPageWriter(columns)(page)),
        _outcome(lambda: _reference_jsonl(columns, page)),
    )


@pytest.mark.parametrize("postgres", [False, True], ids=["sqlite-values", "postgres-values"])
def test_an_ordinary_page_is_written_as_the_rules_write_it(postgres: bool):
    columns = _COLUMNS["usage"]
    page = [_usage_row(number, postgres=postgres) for number in range(1, 2001)]
    written_csv, expected_csv, written_jsonl, expected_jsonl = _both(columns, page)
    assert written_csv == expected_csv
    assert written_jsonl == expected_jsonl
    assert written_csv.startswith(b"1,2026-01-01T00:00:01.000001+00:00,2,,auth_request,")


@pytest.mark.parametrize("dataset", ["usage", "lifecycle", "usage_set_aside"])
def test_any_value_anywhere_gives_the_bytes_of_the_rules(dataset: str):
    columns = _COLUMNS[dataset]
    generator = random.Random(f"export-pages-{dataset}")
    for _ in range(400):
        page = []
        for number in range(1, generator.randint(1, 8)):
            row = list(_usage_row(number, postgres=generator.random() < 0.5))
            row = (row * 2)[: len(columns)]  # any dataset's width: the values are what matters
            page.append(
                tuple(generator.choice(HOSTILE) if generator.random() < 0.3 else value for value in row)
            )
        if not page:
            continue
        written_csv, expected_csv, written_jsonl, expected_jsonl = _both(columns, page)
        assert written_csv == expected_csv, page
        assert written_jsonl == expected_jsonl, page


def test_one_hostile_cell_on_a_page_changes_only_that_cell():
    columns = _COLUMNS["usage"]
    page = [_usage_row(number, postgres=False) for number in range(1, 101)]
    at = columns.index("user_agent")
    page[50] = (*page[50][:at], '=cmd|"/C calc", x', *page[50][at + 1 :])
    written = _CsvPageWriter(columns)(page)
    assert written == _reference_csv(columns, page)
    rows = list(csv.reader(io.StringIO(written.decode(), newline="")))
    assert rows[50][at] == '\'=cmd|"/C calc", x'
    assert rows[49][at] == rows[51][at] == "git/2.39.5"


def test_timestamps_from_postgresql_are_the_service_utc_text():
    moments = [
        datetime(2026, 1, 10, 12, 0, tzinfo=UTC),
        datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC),
        datetime(2026, 6, 1, 0, 0, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    ]
    assert _utc_texts(moments) == [as_utc_text(moment) for moment in moments]
