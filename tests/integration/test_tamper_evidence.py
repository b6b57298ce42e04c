"""Tamper evidence on both backends: a changed byte, a deleted event and two swapped events are each found,
and ``audit verify`` names the first bad position; an untouched log verifies clean."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg

from deploy_tokens.runtime import Runtime
from projections.chain_queries import chain_head, verify

from ..conftest import World


def _prepared(world: World) -> list[int]:
    runtime = world.runtime
    for number in range(5):
        runtime.tokens.create_token(
            world.admin, "project", world.project, name=f"t{number}", scopes=["read_repository"]
        )
    runtime.projector.catch_up()
    return [n.id for n in runtime.store.recorder.select_notifications(start=None, limit=10_000)]


def _verify(runtime: Runtime, **options):  # type: ignore[no-untyped-def]
    return verify(runtime.db, runtime.store.recorder.select_notifications, runtime.keys.chain_key, **options)


def _raw(runtime: Runtime, statement: Callable[[str], str], params: tuple[object, ...]) -> None:
    """Tamper with the stored events directly, as an attacker with database access would."""
    location = runtime.settings.database
    if location.dialect == "sqlite":
        connection = sqlite3.connect(str(location.sqlite_path))
        with connection:
            connection.execute(statement("stored_events").replace("notification_id", "rowid"), params)
        connection.close()
    else:
        table = f'"{location.schema}".deploytokens_events'
        with psycopg.connect(location.conninfo(), autocommit=True) as connection:
            connection.execute(statement(table).replace("?", "%s"), params)


def _state(runtime: Runtime, position: int) -> bytes:
    (notification,) = runtime.store.recorder.select_notifications(start=position, limit=1)
    return bytes(notification.state)


def test_untouched_log_verifies_clean(runtime: Runtime, world: World):
    positions = _prepared(world)
    result = _verify(runtime)
    assert result.ok
    assert result.checked == len(positions)
    assert result.head is not None and result.head.position == positions[-1]


def test_one_changed_byte_is_found_at_its_position(runtime: Runtime, world: World):
    positions = _prepared(world)
    target = positions[len(positions) // 2]
    state = bytearray(_state(runtime, target))
    state[len(state) // 2] ^= 0x01
    _raw(
        runtime,
        lambda table: f"UPDATE {table} SET state = ? WHERE notification_id = ?",
        (bytes(state), target),
    )
    result = _verify(runtime)
    assert (result.ok, result.first_bad_position) == (False, target)
    assert "modified" in (result.problem or "")


def test_a_deleted_event_is_found_at_its_position(runtime: Runtime, world: World):
    positions = _prepared(world)
    target = positions[7]
    _raw(runtime, lambda table: f"DELETE FROM {table} WHERE notification_id = ?", (target,))
    result = _verify(runtime)
    assert (result.ok, result.first_bad_position) == (False, target)
    assert "deleted" in (result.problem or "")


def test_two_swapped_events_are_found_at_the_first(runtime: Runtime, world: World):
    positions = _prepared(world)
    first, second = positions[10], positions[20]
    first_state, second_state = _state(runtime, first), _state(runtime, second)
    update = lambda table: f"UPDATE {table} SET state = ? WHERE notification_id = ?"  # noqa: E731
    _raw(runtime, update, (second_state, first))
    _raw(runtime, update, (first_state, second))
    result = _verify(runtime)
    assert (result.ok, result.first_bad_position) == (False, first)


def test_an_exported_head_detects_a_rewritten_chain(runtime: Runtime, world: World):
    positions = _prepared(world)
    head = chain_head(runtime.db, runtime.keys.chain_key)
    assert _verify(runtime, expected_head=head).ok
    # An attacker who rewrites an event AND recomputes the chain table still cannot match the exported head.
    target = positions[3]
    state = bytearray(_state(runtime, target))
    state[-2] ^= 0x01
    _raw(
        runtime,
        lambda table: f"UPDATE {table} SET state = ? WHERE notification_id = ?",
        (bytes(state), target),
    )
    runtime.projector.rebuild("event_chain")
    assert _verify(runtime).ok  # the chain now describes the forged log...
    result = _verify(runtime, expected_head=head)
    assert not result.ok  # ...but not the head the auditor kept
    assert result.first_bad_position == head.position


def test_a_forged_checkpoint_is_found(runtime: Runtime, world: World):
    _prepared(world)
    with runtime.db.transaction() as cursor:
        cursor.execute(
            "INSERT INTO chain_checkpoints (position, chain_hash, signature) VALUES (?, ?, ?)",
            (3, "ab" * 32, "cd" * 32),
        )
    result = _verify(runtime)
    assert (result.ok, result.first_bad_position) == (False, 3)


def test_an_exported_log_verifies_offline_against_its_head(runtime: Runtime, world: World):
    from projections.chain_queries import log_lines, verify_log_lines

    _prepared(world)
    head = chain_head(runtime.db, runtime.keys.chain_key)
    lines = list(log_lines(runtime.store.recorder.select_notifications, upto=head.position))
    assert verify_log_lines(iter(lines), head).ok
    tampered = [*lines]
    tampered[4] = tampered[4].replace('"originator_version": ', '"originator_version": 1', 1)
    result = verify_log_lines(iter(tampered), head)
    assert not result.ok
    dropped = lines[:3] + lines[4:]
    assert not verify_log_lines(iter(dropped), head).ok
