"""A projection built by an older version is rebuilt from event 0 at start-up; one built by this version is
left as it is. On both backends, with the audit trail (version 2 added the path each holder had)."""

from __future__ import annotations

from typing import Any

from deploy_tokens.runtime import Runtime
from infrastructure.settings import Settings

from ..conftest import World


def rows(runtime: Runtime, table: str) -> list[tuple[Any, ...]]:
    with runtime.db.read() as cursor:
        return sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_a_projection_built_by_an_older_version_is_rebuilt_at_start_up(
    world: World, settings: Settings
) -> None:
    runtime = world.runtime
    before = {table: rows(runtime, table) for table in ("audit_events", "audit_paths")}
    assert before["audit_paths"], "the world's groups and projects have paths"
    # What a store written before version 2 holds: no paths, and no record of the version (version 1).
    with runtime.db.transaction() as cursor:
        cursor.execute("DELETE FROM audit_paths")
        cursor.execute("DELETE FROM projection_versions WHERE name = 'audit_trail'")

    with Runtime.open(settings, clock=runtime.clock) as restarted:
        restarted.projector.catch_up()
        assert {table: rows(restarted, table) for table in before} == before
        with restarted.db.read() as cursor:
            version = cursor.execute("SELECT version FROM projection_versions WHERE name = 'audit_trail'")
            assert version.fetchone() == (2,)


def test_a_projection_built_by_this_version_is_not_rebuilt(world: World, settings: Settings) -> None:
    runtime = world.runtime
    with runtime.db.transaction() as cursor:
        first = cursor.execute("SELECT MIN(position) FROM audit_events").fetchone()
        assert first is not None
        cursor.execute("UPDATE audit_events SET message = 'left as it was' WHERE position = ?", first)

    with Runtime.open(settings, clock=runtime.clock) as restarted:
        restarted.projector.catch_up()
        with restarted.db.read() as cursor:
            kept = cursor.execute("SELECT message FROM audit_events WHERE position = ?", first).fetchone()
        assert kept == ("left as it was",)
