"""The credential index's compact token records: dead digests answer exactly, live records decide as the
read model's records do."""

from __future__ import annotations

import random
from array import array
from datetime import UTC, datetime, timedelta

import pytest

from domain.deploy_token import default_username
from projections.access import Action, AuthRequest, decide
from projections.compact_tokens import (
    DELETED,
    EXPIRED,
    REVOKED,
    CustomNamedToken,
    DeadDigests,
    DeadDigestsLoader,
    big_endian_numbers,
    prefix_of,
    token_class,
)
from projections.credentials import ProjectRecord, TokenRecord

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


def digest(rng: random.Random) -> bytes:
    return rng.randbytes(32)


def loaded(entries: list[tuple[bytes, int, int, str, int]]) -> DeadDigests:
    loader = DeadDigestsLoader()
    for key, token_id, reason, kind, holder in entries:
        loader.add(prefix_of(key), token_id << 3 | (4 if kind == "group" else 0) | reason, holder)
    return loader.build()


def test_dead_digests_answer_every_loaded_and_added_token_and_nothing_else():
    rng = random.Random(16)
    entries = [
        (digest(rng), n, (DELETED, REVOKED, EXPIRED)[n % 3], ("project", "group")[n % 2], 1000 + n)
        for n in range(1, 3000)
    ]
    dead = loaded(entries)
    DeadDigests.MERGE_AT = 64  # exercise the merges
    try:
        added = [(digest(rng), 10_000 + n, REVOKED, "group", 7) for n in range(500)]
        for key, token_id, reason, kind, holder in added:
            dead.put(key, token_id, reason, kind, holder)
    finally:
        DeadDigests.MERGE_AT = 4096
    assert len(dead) == len(entries) + len(added)
    for key, token_id, reason, kind, holder in entries + added:
        found = dead.get(key)
        assert found is not None
        assert (found.token_id, found.reason, found.holder_kind, found.holder_id) == (
            token_id,
            reason,
            kind,
            holder,
        )
        assert found.deleted == (reason == DELETED) and found.revoked == (reason == REVOKED)
        assert found.is_expired(NOW) == (reason == EXPIRED)
    assert all(dead.get(digest(rng)) is None for _ in range(2000))


def test_a_dead_token_changes_reason_in_place_and_is_discarded_only_for_its_own_id():
    rng = random.Random(3)
    key = digest(rng)
    dead = loaded([(key, 5, REVOKED, "project", 9)])
    dead.put(key, 5, DELETED, "project", 9)
    found = dead.get(key)
    assert found is not None and found.reason == DELETED and len(dead) == 1
    dead.discard(key, 6)  # another token that happened to share the prefix: untouched
    assert dead.get(key) is not None
    dead.discard(key, 5)
    assert dead.get(key) is None


def test_the_default_username_is_the_domains():
    token = token_class("project", frozenset({"read_repository"}), False)(123456, 1, None, b"k")
    assert token.username == default_username(123456)
    custom = token_class("project", frozenset({"read_repository"}), True)
    assert issubclass(custom, CustomNamedToken)
    assert custom(1, 1, None, b"k", "deployer").username == "deployer"  # type: ignore[call-arg]


def test_token_classes_are_shared_and_carry_kind_and_scopes():
    scopes = frozenset({"read_repository", "read_registry"})
    first = token_class("group", scopes, False)
    assert token_class("group", frozenset(scopes), False) is first
    token = first(1, 2, None, b"k")
    assert (token.holder_kind, token.scope_set, token.revoked, token.deleted) == (
        "group",
        scopes,
        False,
        False,
    )


def test_a_live_record_decides_as_the_read_models_record():
    project = ProjectRecord(7, "Web", "web", "acme/web", 3, "group", (3,), True, True, NOW)
    cases = [
        ("project", 7, ("read_repository",), None),
        ("project", 8, ("read_repository",), None),
        ("group", 3, ("read_registry",), None),
        ("group", 3, ("read_repository",), NOW + timedelta(days=1)),
        ("project", 7, ("read_repository",), NOW),
    ]
    for holder_kind, holder_id, scopes, expires_at in cases:
        record = TokenRecord(
            42,
            "t",
            default_username(42),
            holder_kind,
            holder_id,
            scopes,
            expires_at,
            None,
            None,
            "ab" * 32,
            None,
            None,
            NOW,
            None,
        )
        compact = token_class(holder_kind, frozenset(scopes), False)(42, holder_id, expires_at, b"k")
        for action in (Action.GIT_READ, Action.REGISTRY_PULL, Action.API, Action.REGISTRY_LOGIN):
            for username, check in ((default_username(42), True), ("other", True), (None, False)):
                request = AuthRequest(action, username, check)
                expected = decide(request, record, project, external_authorization=False, now=NOW)
                assert decide(request, compact, project, external_authorization=False, now=NOW) == expected


def test_dead_tokens_as_a_load_reads_them_answer_like_tokens_added_one_at_a_time():
    """``DeadDigests.from_arrays``: the columns of the rows a load reads, sorted by prefix (the prefixes as
    ``big_endian_numbers`` takes them from the database: bytes, or their hex on SQLite); arrays out of order are
    sorted on arrival rather than trusted."""
    rng = random.Random(9)
    entries = [
        (digest(rng), n, (DELETED, REVOKED, EXPIRED)[n % 3], ("project", "group")[n % 2], 70 + n)
        for n in range(1, 400)
    ]
    one_by_one = loaded(entries)

    def columns(rows: list[tuple[bytes, int, int, str, int]], hexadecimal: bool) -> DeadDigests:
        joined = b"".join(key[:8] for key, *_ in rows)
        prefixes = big_endian_numbers(joined.hex() if hexadecimal else joined)
        packed = array(
            "q",
            (token_id << 3 | (4 if kind == "group" else 0) | reason for _, token_id, reason, kind, _ in rows),
        )
        holders = array("q", (holder for *_, holder in rows))
        return DeadDigests.from_arrays(prefixes, packed, holders)

    in_order = sorted(entries, key=lambda entry: entry[0])
    layouts = {
        "bytes": columns(in_order, hexadecimal=False),
        "hex": columns(in_order, hexadecimal=True),
        "out of order": columns(entries, hexadecimal=False),
    }
    for layout, dead in layouts.items():
        assert len(dead) == len(entries), layout
        for key, *_ in entries:
            found, expected = dead.get(key), one_by_one.get(key)
            assert found is not None and expected is not None
            assert (found.token_id, found.reason, found.holder_kind, found.holder_id) == (
                expected.token_id,
                expected.reason,
                expected.holder_kind,
                expected.holder_id,
            ), layout
        assert dead.get(digest(rng)) is None
    assert len(DeadDigests.from_arrays(array("Q"), array("q"), array("q"))) == 0
    with pytest.raises(ValueError):
        DeadDigests.from_arrays(array("Q", [1, 2]), array("q", [1]), array("q", [1, 2]))
