"""The credential index's first load, apart from the database: pages of live tokens become the records
following the log would make, the helper thread that steps SQLite ahead never outlives its caller, and a page
whose parts disagree is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from projections.compact_tokens import CustomNamedToken, LiveToken, token_class
from projections.credential_load import _LiveBuilder, _stepped_ahead


def test_a_page_of_live_tokens_becomes_records_of_their_shape_and_username():
    live: dict[bytes, LiveToken] = {}
    by_id: list[LiveToken | None] = [None] * 10
    keys = [bytes([n]) * 16 for n in (1, 2, 3)]
    _LiveBuilder(live, by_id).add_page(
        "".join(key.hex() for key in keys),
        "3,7,9",
        "40,41,40",
        ";".join(
            (
                "project read_repository,read_registry ",
                "group read_registry 2027-03-01T10:00:00.000250+00:00",
                "project read_repository,read_registry ",
            )
        ),
        "\x1fdeployer.7\x1f",
    )
    first, second, third = (live[key] for key in keys)
    assert [by_id[3], by_id[7], by_id[9]] == [first, second, third]
    assert type(first) is token_class("project", frozenset({"read_repository", "read_registry"}), False)
    assert type(first) is type(third)
    assert (first.token_id, first.holder_id, first.expires_at, first.username) == (
        3,
        40,
        None,
        "gitlab+deploy-token-3",
    )
    assert isinstance(second, CustomNamedToken) and second.holder_kind == "group"
    assert (second.username, second.expires_at) == (
        "deployer.7",
        datetime(2027, 3, 1, 10, 0, 0, 250, tzinfo=UTC),
    )
    assert first.holder_id is third.holder_id  # one int per holder, however many tokens


def test_a_page_whose_parts_disagree_is_refused():
    builder = _LiveBuilder({}, [None] * 10)
    with pytest.raises(ValueError):
        builder.add_page((b"\x01" * 16).hex(), "3,4", "40,40", "project read_repository ;", "\x1f")


def test_the_helper_stops_when_its_caller_does_and_hands_on_its_failure():
    made: list[int] = []

    def endless() -> Iterator[int]:
        number = 0
        while True:
            made.append(number)
            yield number
            number += 1

    before = threading.active_count()
    items = _stepped_ahead(endless())
    assert [next(items) for _ in range(3)] == [0, 1, 2]
    items.close()
    assert threading.active_count() == before
    assert len(made) <= 5  # at most one item made ahead, and the one being handed over

    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        list(_stepped_ahead(failing()))
    assert threading.active_count() == before
