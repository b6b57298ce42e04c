"""A projection built by an older version is rebuilt from event 0 at start-up; one built by this version is
left as it is. On both backends, with the audit trail (version 2 added the path each holder had) and the
expiry notifications (version 2 added a column)."""

from __future__ import annotations

from datetime import date
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


def test_a_version_that_adds_a_column_gets_its_table_created_again(world: World, settings: Settings) -> None:
    """The expiry notifications' version 2 added ``mails``: a table of version 1 lacks the column, which
    ``CREATE TABLE IF NOT EXISTS`` would never add (the store would not even open)."""
    runtime = world.runtime
    runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="expiring",
        scopes=["read_repository"],
        expires_at=date(2030, 1, 1),
    )
    before = rows(runtime, "expiry_notifications")
    assert before, "the token that expires has a row"
    with runtime.db.transaction() as cursor:  # the table as version 1 made it
        cursor.execute("ALTER TABLE expiry_notifications DROP COLUMN mails")
        cursor.execute("DELETE FROM projection_versions WHERE name = 'expiry_notifications'")

    with Runtime.open(settings, clock=runtime.clock) as restarted:
        restarted.projector.catch_up()
        assert rows(restarted, "expiry_notifications") == before
