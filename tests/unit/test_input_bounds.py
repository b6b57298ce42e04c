"""The pure parts of the request edge: JSON nesting and string checks, and the bounds on registry scopes."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from flask import Flask

from api.input_limits import (
    MAX_JSON_DEPTH,
    BoundedJSONProvider,
    RejectedInput,
    check_json_strings,
    json_nesting_exceeds,
    unfit_character,
)
from api.registry_token import MAX_SCOPE_LENGTH, MAX_SCOPES, InvalidScope, RequestedScope, parse_scopes


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_at_the_limit_is_allowed_and_one_more_is_not() -> None:
    assert not json_nesting_exceeds(nested(MAX_JSON_DEPTH))
    assert json_nesting_exceeds(nested(MAX_JSON_DEPTH + 1))


def test_objects_and_arrays_both_count_as_levels() -> None:
    assert json_nesting_exceeds('{"a":[' * 17 + "1" + "]}" * 17)


def test_brackets_inside_strings_are_not_levels() -> None:
    text = '{"a": "' + "[{" * 100 + '", "b": "\\"[[[[" }'
    assert not json_nesting_exceeds(text)


def test_many_shallow_containers_are_not_deep() -> None:
    assert not json_nesting_exceeds("[" + ",".join(["{}"] * 10_000) + "]")


def test_nesting_check_is_linear_on_hostile_strings() -> None:
    # An unterminated string of escaped quotes: a backtracking scan restarts at every quote (quadratic).
    text = "[" * 40 + '"' + '\\"' * 400_000
    started = time.perf_counter()
    json_nesting_exceeds(text)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\x00b", "a NUL character"),
        ("x\ud800", "a lone surrogate, which is not valid Unicode"),
        ("\udfff", "a lone surrogate, which is not valid Unicode"),
        ("plain", None),
        ("emoji \U0001f600 and é", None),
    ],
)
def test_unfit_characters_are_named(value: str, problem: str | None) -> None:
    assert unfit_character(value) == problem


def test_a_nul_deep_in_a_value_is_named_by_its_path() -> None:
    with pytest.raises(RejectedInput) as raised:
        check_json_strings({"holder": {"scopes": ["read_repository", "read\x00registry"]}})
    assert raised.value.description == "holder.scopes[1] contains a NUL character"


def test_a_surrogate_in_a_key_is_refused_without_repeating_the_key() -> None:
    with pytest.raises(RejectedInput) as raised:
        check_json_strings({"outer": {"ke\ud800y": 1}})
    assert raised.value.description == "a key in outer contains a lone surrogate, which is not valid Unicode"


@pytest.mark.parametrize("key", ["<script>", "x" * 100, "gldt-" + "A" * 30])
def test_a_key_unlike_a_parameter_name_is_not_repeated_in_the_message(key: str) -> None:
    with pytest.raises(RejectedInput) as raised:
        check_json_strings({key: "\x00"})
    assert raised.value.description == "body contains a NUL character"


@pytest.fixture
def provider() -> BoundedJSONProvider:
    return BoundedJSONProvider(Flask(__name__))


def test_escaped_surrogate_pairs_are_characters_not_lone_surrogates(provider: BoundedJSONProvider) -> None:
    assert provider.loads(b'{"name": "\\ud83d\\ude00"}') == {"name": "\U0001f600"}


def test_escaped_lone_surrogate_is_refused(provider: BoundedJSONProvider) -> None:
    with pytest.raises(RejectedInput, match="token contains a lone surrogate"):
        provider.loads(b'{"token": "\\ud800"}')


def test_raw_surrogate_bytes_are_not_utf8(provider: BoundedJSONProvider) -> None:
    with pytest.raises(RejectedInput, match="not valid UTF-8"):
        provider.loads(b'{"token": "\xed\xa0\x80"}')


def test_utf16_bodies_are_still_read(provider: BoundedJSONProvider) -> None:
    assert provider.loads('{"name": "ü"}'.encode("utf-16")) == {"name": "ü"}


def test_invalid_json_still_raises_value_error(provider: BoundedJSONProvider) -> None:
    # request.get_json(silent=True) turns a ValueError into None: "not JSON" keeps its meaning for the views.
    with pytest.raises(ValueError):
        provider.loads(b'{"name": ')


def test_deep_json_is_refused_before_parsing(provider: BoundedJSONProvider) -> None:
    with pytest.raises(RejectedInput, match=f"nested more than {MAX_JSON_DEPTH} levels"):
        provider.loads(nested(100_000).encode())


# Registry scopes -----------------------------------------------------------------------------------------


def scope(number: int) -> str:
    return f"repository:group/app{number}:pull"


def test_the_maximum_number_of_scopes_is_parsed_and_one_more_is_refused() -> None:
    assert len(parse_scopes([scope(n) for n in range(MAX_SCOPES)])) == MAX_SCOPES
    with pytest.raises(InvalidScope, match=f"at most {MAX_SCOPES} per request"):
        parse_scopes([scope(n) for n in range(MAX_SCOPES + 1)])


def test_space_separated_scopes_count_towards_the_maximum() -> None:
    with pytest.raises(InvalidScope, match="too many scopes"):
        parse_scopes([" ".join(scope(n) for n in range(MAX_SCOPES + 1))])


def test_thousands_of_scopes_are_refused_without_reading_past_the_maximum() -> None:
    read: list[int] = []

    def values() -> Iterator[str]:
        for n in range(100_000):
            read.append(n)
            yield scope(n)

    with pytest.raises(InvalidScope):
        parse_scopes(values())
    assert len(read) == MAX_SCOPES + 1


def test_a_huge_single_value_is_refused_without_splitting_it() -> None:
    with pytest.raises(InvalidScope, match="too many or too long scopes"):
        parse_scopes([scope(1) + " " * 10_000_000])


def test_an_over_long_scope_is_refused_and_not_echoed_in_full() -> None:
    raw = "repository:group/app:" + ",".join(["pull"] * 200)
    assert len(raw) > MAX_SCOPE_LENGTH
    with pytest.raises(InvalidScope, match=f"longer than {MAX_SCOPE_LENGTH} characters") as raised:
        parse_scopes([raw])
    assert len(str(raised.value)) < 300


def test_repeated_identical_scopes_are_asked_for_once_in_request_order() -> None:
    assert parse_scopes([scope(1), scope(2), scope(1), f"{scope(2)} {scope(1)}"]) == [
        RequestedScope("repository", "group/app1", ("pull",)),
        RequestedScope("repository", "group/app2", ("pull",)),
    ]
