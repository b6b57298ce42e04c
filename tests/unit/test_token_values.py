import re

from domain.token_values import (
    DEPLOY_TOKEN_PREFIX,
    PERSONAL_ACCESS_TOKEN_PREFIX,
    generate_token,
    has_token_length,
    is_well_formed,
)


def test_deploy_token_has_prefix_and_at_least_twenty_url_safe_characters():
    value = generate_token()
    assert re.fullmatch(r"gldt-[A-Za-z0-9_-]{20,}", value)


def test_values_do_not_repeat():
    assert len({generate_token() for _ in range(1000)}) == 1000


def test_generated_values_pass_the_checksum():
    assert all(is_well_formed(generate_token()) for _ in range(200))


def test_a_single_mistyped_character_fails_the_checksum():
    value = generate_token()
    position = len(DEPLOY_TOKEN_PREFIX) + 3
    replacement = "A" if value[position] != "A" else "B"
    mistyped = value[:position] + replacement + value[position + 1 :]
    assert not is_well_formed(mistyped)


def test_wrong_prefix_is_rejected():
    value = generate_token(PERSONAL_ACCESS_TOKEN_PREFIX)
    assert is_well_formed(value, PERSONAL_ACCESS_TOKEN_PREFIX)
    assert not is_well_formed(value, DEPLOY_TOKEN_PREFIX)


def test_truncated_value_is_rejected():
    assert not is_well_formed(generate_token()[:-1])


def test_only_values_of_the_issued_prefix_and_length_are_worth_a_lookup():
    value = generate_token()
    assert has_token_length(value)
    assert has_token_length(value[:-1] + "!")  # the alphabet and checksum are checked after a miss
    assert not has_token_length(value[:-1])
    assert not has_token_length(value + "x")
    assert not has_token_length("glpat-" + value[5:])
    assert not has_token_length("x" * len(value))
