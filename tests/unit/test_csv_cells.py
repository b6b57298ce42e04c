"""How one CSV cell is written: text that could start a spreadsheet formula is neutralised, data is not."""

from __future__ import annotations

import re

import pytest

from deploy_tokens.exports import csv_cell


def _recovered(cell: str) -> str:
    """The rule docs/auditing.md gives auditors: one or more quotes before a trigger lose the first."""
    return cell[1:] if re.match(r"'+[=+\-@\t\r]", cell) else cell


@pytest.mark.parametrize("trigger", ["=", "+", "-", "@", "\t", "\r"])
def test_text_beginning_with_a_formula_trigger_gets_a_leading_quote(trigger: str):
    assert csv_cell("text", trigger + "cmd|' /C calc'!A0") == "'" + trigger + "cmd|' /C calc'!A0"


def test_a_trigger_after_the_first_character_leaves_the_text_as_it_is():
    assert (
        csv_cell("text", 'a=HYPERLINK("http://evil.example/","x")')
        == 'a=HYPERLINK("http://evil.example/","x")'
    )


@pytest.mark.parametrize("value", ["=1", "'=1", "''\t1", "'plain", "'", "", "a-b", "\r\n=1"])
def test_recovery_gives_back_the_exact_text(value: str):
    assert _recovered(csv_cell("text", value)) == value


def test_numbers_booleans_and_timestamps_are_written_as_they_are():
    assert csv_cell("number", -42) == "-42"
    assert csv_cell("boolean", False) == "false"
    assert csv_cell("time", "2026-01-10T12:00:00.000000+00:00") == "2026-01-10T12:00:00.000000+00:00"
    assert csv_cell("number", None) == ""


def test_text_in_a_column_of_another_kind_is_neutralised_as_text():
    # SQLite stores whatever it is given in any column: the column's kind alone does not make a value data.
    assert csv_cell("number", "=1+1") == "'=1+1"
    assert csv_cell("time", "-2026-01-10") == "'-2026-01-10"
    assert csv_cell("boolean", "@x") == "'@x"
