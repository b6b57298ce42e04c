"""Projections applied a batch at a time (``KeyedRows``, the audit trail's batch state, bulk inserts) give the
rows their events give one by one, whatever the batch size; a rebuild builds its indexes again, even when it
fails. Both backends."""

from __future__ import annotations

import gc
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock
from domain.deploy_token import DeployToken
from infrastructure.db import Cursor, Database, to_datetime
from projections.audit import AuditTrail
from projections.base import REBUILD_BATCH_SIZE, Projector
from projections.chain import EventChain
from projections.credentials import CredentialLookup
from projections.directory import Directory
from projections.keyed_rows import KeyedRows
from projections.notifications import ExpiryNotifications
from projections.projection import EventHandlers, EventProjection, Projection, on, secondary_indexes

from ..conftest import World

TOKENS = 60


def _fill(world: World, clock: FixedClock) -> None:
    """Tokens whose later events come long after their creation (other batches), and some within it."""
    runtime = world.runtime
    actor = Actor.system("batch-test")
    start = clock.now()
    tokens = [
        DeployToken.issue(
            token_id=1000 + number,
            name=f"t{number}",
            username=None,
            holder_kind="group" if number % 4 == 0 else "project",
            holder_id=world.top if number % 4 == 0 else world.project,
            scopes=["read_repository", "read_registry"],
            expires_at=start + timedelta(days=number % 40 + 1) if number % 5 else None,
            digest=f"{number:064x}",
            actor=actor,
            now=start,
        )
        for number in range(TOKENS)
    ]
    for token in tokens[::3]:  # in the same save as their creation: the same batch, mostly
        token.narrow_scopes(["read_registry"], actor=actor, now=start)
    runtime.store.save(*tokens)
    later = start + timedelta(days=1)
    for number, token in enumerate(tokens):
        interval = token.interval_due(later)
        if interval is not None and number % 2:
            message_id = f"<{token.token_id}@test>"
            lease = later + timedelta(minutes=5)
            token.claim_notification(
                interval, message_id=message_id, lease_until=lease, actor=actor, now=later
            )
            if number % 3 == 0:
                token.release_notification(
                    interval, message_id=message_id, error="busy", actor=actor, now=later
                )
            else:
                token.record_notification(
                    interval, message_id=message_id, recipients=["a@example.com"], actor=actor, now=later
                )
        if number % 7 == 0:  # those not revoked later keep the old value for a day
            grace = None if number % 2 else later + timedelta(days=1)
            token.rotate(digest=f"{number + TOKENS:064x}", grace_until=grace, actor=actor, now=later)
    runtime.store.save(*tokens)
    end = start + timedelta(days=50)
    for number, token in enumerate(tokens):
        token.record_expiry(now=end)
        if number % 2:
            token.revoke(actor=actor, now=end)
        if number % 5 == 0:
            token.delete(actor=actor, now=end)
    runtime.store.save(*tokens)
    # Directory events after the tokens: memberships changed and removed, a rename, a move.
    maintainer = world.users["maintainer"].user_id
    runtime.members.set_member(world.admin, "project", world.project, maintainer, 30)
    runtime.members.remove_member(world.admin, "project", world.project, maintainer)
    runtime.lifecycle.update_project(world.admin, world.project, name="Renamed")
    runtime.lifecycle.transfer_project(world.admin, world.deep_project, world.sibling)


def _projections(runtime: Runtime) -> list[Projection]:
    return [
        AuditTrail(),
        ExpiryNotifications(),
        EventChain(runtime.keys.chain_key),
        Directory(),
        CredentialLookup(),
    ]


def _rows(db: Database, projections: list[Projection]) -> dict[str, list[tuple[Any, ...]]]:
    with db.read() as cursor:
        return {
            table: sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for projection in projections
            for table in projection.tables
        }


def test_the_rows_do_not_depend_on_the_batch_size(world: World, clock: FixedClock):
    _fill(world, clock)
    runtime = world.runtime
    rows_by_size = {}
    for size in (1, 7, 500):
        projections = _projections(runtime)
        projector = Projector(
            runtime.store, runtime.db, projections, batch_size=size, rebuild_batch_size=size
        )
        projector.setup()
        for projection in projections:
            assert projector.rebuild(projection.name) == runtime.store.head()
        rows_by_size[size] = _rows(runtime.db, projections)
    assert rows_by_size[1]["audit_events"], "the log gave no audit rows"
    assert rows_by_size[1]["expiry_notifications"], "the log gave no expiry rows"
    assert any(row[11] for row in rows_by_size[1]["cred_tokens"]), "no rotated-out value kept"
    assert rows_by_size[7] == rows_by_size[1]
    assert rows_by_size[500] == rows_by_size[1]


def test_following_the_log_gives_the_rows_of_a_rebuild(world: World, clock: FixedClock):
    """The service projects each command's few events as it goes (the small-batch path); a rebuild then
    applies the whole log in large batches (the bulk path): the same rows."""
    _fill(world, clock)
    runtime = world.runtime
    runtime.projector.catch_up()
    names = ("audit_trail", "expiry_notifications", "credential_lookup")
    projections = [runtime.projector.projections[name] for name in names]
    followed = _rows(runtime.db, projections)
    for projection in projections:
        runtime.projector.rebuild(projection.name)
    assert _rows(runtime.db, projections) == followed


def _index_names(db: Database) -> set[str]:
    with db.read() as cursor:
        if db.dialect == "postgresql":
            rows = cursor.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            ).fetchall()
        else:
            rows = cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    return {str(row[0]) for row in rows}


def test_a_rebuild_builds_the_secondary_indexes_again(runtime: Runtime):
    audit = runtime.projector.projections["audit_trail"]
    deferred = set(secondary_indexes(audit))
    assert {"audit_events_target", "audit_events_time", "audit_events_stream"} <= deferred
    runtime.projector.rebuild("audit_trail")
    assert deferred <= _index_names(runtime.db)
    credentials = set(secondary_indexes(runtime.projector.projections["credential_lookup"]))
    assert "cred_tokens_digest" not in credentials  # unique: it stays, every insert is still checked


class _Failing(EventProjection):
    """Fails on the first token revocation, after earlier batches have been applied."""

    name = "failing"
    tables = ("failing_rows",)

    @staticmethod
    def _created(cursor: Cursor, event: DeployToken.Created, position: int) -> None:
        cursor.execute("INSERT INTO failing_rows (position, name) VALUES (?, ?)", (position, event.name))

    @staticmethod
    def _revoked(cursor: Cursor, event: DeployToken.Revoked, position: int) -> None:
        raise RuntimeError("handler failed")

    handlers = EventHandlers(on(DeployToken.Created, _created), on(DeployToken.Revoked, _revoked))

    def schema(self) -> list[str]:
        return [
            "CREATE TABLE IF NOT EXISTS failing_rows (position BIGINT PRIMARY KEY, name TEXT NOT NULL)",
            "CREATE INDEX IF NOT EXISTS failing_rows_name ON failing_rows (name)",
        ]


def test_a_failed_rebuild_builds_the_secondary_indexes_again(world: World, clock: FixedClock):
    _fill(world, clock)
    runtime = world.runtime
    projector = Projector(runtime.store, runtime.db, [_Failing()], batch_size=7, rebuild_batch_size=7)
    with runtime.db.transaction() as cursor:
        for statement in _Failing().schema():
            cursor.execute(statement)
        cursor.execute("INSERT INTO projection_tracking (name, position) VALUES ('failing', 0)")
    with pytest.raises(RuntimeError, match="handler failed"):
        projector.rebuild("failing")
    assert "failing_rows_name" in _index_names(runtime.db)
    with runtime.db.read() as cursor:
        applied = cursor.execute("SELECT COUNT(*) FROM failing_rows").fetchone()
    assert applied is not None and applied[0] > 0  # batches before the failure stay applied


def test_a_rebuild_applies_larger_batches_than_following_the_log(world: World, clock: FixedClock):
    _fill(world, clock)
    runtime = world.runtime
    head = runtime.store.head()
    projector = Projector(runtime.store, runtime.db, [AuditTrail()], batch_size=7, rebuild_batch_size=50)
    projector.setup()
    committed: list[int] = []  # the position after each batch's transaction
    applied = projector.rebuild("audit_trail", lambda position, _: committed.append(position))
    assert applied > 100
    assert len(committed) == -(-applied // 50)  # every batch but the last one has 50 events
    assert committed[-1] == head
    # Unless told otherwise, a rebuild's batches are at least REBUILD_BATCH_SIZE events, never fewer than
    # following the log applies.
    assert Projector(runtime.store, runtime.db, [], batch_size=7).rebuild_batch_size == REBUILD_BATCH_SIZE
    assert Projector(runtime.store, runtime.db, [], batch_size=9000).rebuild_batch_size == 9000


class _CollectorWatching(EventProjection):
    """Notes whether CPython's cyclic garbage collector was running while each creation was applied."""

    name = "collector_watching"
    tables = ()
    running: ClassVar[list[bool]] = []

    @staticmethod
    def _created(cursor: Cursor, event: DeployToken.Created, position: int) -> None:
        _CollectorWatching.running.append(gc.isenabled())

    handlers = EventHandlers(on(DeployToken.Created, _created))

    def schema(self) -> list[str]:
        return []


def test_the_garbage_collector_pauses_only_while_a_rebuild_applies_a_batch(world: World, clock: FixedClock):
    _fill(world, clock)
    runtime = world.runtime
    with runtime.db.transaction() as cursor:
        for statement in _Failing().schema():
            cursor.execute(statement)
        cursor.executemany(
            "INSERT INTO projection_tracking (name, position) VALUES (?, 0)",
            [("collector_watching",), ("failing",)],
        )
    watching = Projector(
        runtime.store, runtime.db, [_CollectorWatching()], batch_size=7, rebuild_batch_size=7
    )
    _CollectorWatching.running.clear()
    assert gc.isenabled()
    watching.catch_up()  # following the log: never paused
    assert len(_CollectorWatching.running) >= TOKENS and all(_CollectorWatching.running)
    _CollectorWatching.running.clear()
    watching.rebuild("collector_watching")
    assert len(_CollectorWatching.running) >= TOKENS and not any(_CollectorWatching.running)
    assert gc.isenabled()  # running again once the rebuild is over
    failing = Projector(runtime.store, runtime.db, [_Failing()], batch_size=7, rebuild_batch_size=7)
    with pytest.raises(RuntimeError, match="handler failed"):
        failing.rebuild("failing")
    assert gc.isenabled()  # and after a batch that failed


def test_emptying_a_read_model_table_keeps_the_connections_secure_delete(runtime: Runtime):
    """A rebuild's emptying skips zeroing the freed pages (SQLite), for its own statement only."""
    db = runtime.db
    with db.transaction() as cursor:
        cursor.execute("CREATE TABLE emptied_rows (position BIGINT PRIMARY KEY, name TEXT NOT NULL)")
        cursor.insert_many("emptied_rows", ("position", "name"), [(n, f"row {n}" * 50) for n in range(200)])
    with db.transaction() as cursor:
        before = cursor.execute("PRAGMA secure_delete").fetchone() if db.dialect == "sqlite" else None
        cursor.empty_derived_table("emptied_rows")
        assert cursor.execute("SELECT COUNT(*) FROM emptied_rows").fetchone() == (0,)
        if db.dialect == "sqlite":
            assert before == (1,)  # as the distributions build SQLite: zero what a delete frees
            assert cursor.execute("PRAGMA secure_delete").fetchone() == before
            cursor.execute("INSERT INTO emptied_rows (position, name) VALUES (1, 'secret')")
            cursor.execute("DELETE FROM emptied_rows")  # any other delete still zeroes what it frees
        else:
            cursor.execute("INSERT INTO emptied_rows (position, name) VALUES (1, 'kept')")
    with db.read() as cursor:
        left = cursor.execute("SELECT name FROM emptied_rows").fetchall()
    assert left == ([] if db.dialect == "sqlite" else [("kept",)])


def test_a_timestamp_bound_by_the_cursor_is_stored_as_the_instant_itself(runtime: Runtime):
    """``Cursor.timestamp`` (SQLite: the adapter's text, made in advance) stores what binding the instant
    stores, so that rows written either way are the same."""
    moment = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    with runtime.db.transaction() as cursor:
        cursor.execute("CREATE TABLE bound_times (id INTEGER PRIMARY KEY, at TIMESTAMPTZ NOT NULL)")
        cursor.execute("INSERT INTO bound_times (id, at) VALUES (1, ?)", (moment,))
        cursor.insert_many("bound_times", ("id", "at"), [(2, cursor.timestamp(moment))])
    with runtime.db.read() as cursor:
        stored = cursor.execute("SELECT at FROM bound_times ORDER BY id").fetchall()
    assert stored[0] == stored[1]
    assert to_datetime(stored[1][0]) == moment


def test_many_rows_inserted_inside_a_pipeline(runtime: Runtime):
    """COPY has no pipeline mode: inside one (the event store's transaction on PostgreSQL) the rows go as
    INSERTs, however many."""
    with runtime.db.transaction() as cursor:
        cursor.execute("CREATE TABLE piped_rows (position BIGINT PRIMARY KEY, name TEXT NOT NULL)")
        with cursor.pipelined():
            cursor.insert_many("piped_rows", ("position", "name"), [(n, f"row {n}") for n in range(50)])
            cursor.execute("UPDATE piped_rows SET name = 'last' WHERE position = 49")
    with runtime.db.read() as cursor:
        assert cursor.execute("SELECT COUNT(*), MAX(name) FROM piped_rows").fetchone() == (50, "row 9")
        assert cursor.execute("SELECT name FROM piped_rows WHERE position = 49").fetchone() == ("last",)


# KeyedRows ----------------------------------------------------------------------------------------------


def _keyed(cursor: Cursor) -> KeyedRows:
    return KeyedRows(cursor, "keyed_rows", "stream_id", ("stream_id", "name", "flag", "position"))


def _stored(db: Database) -> list[tuple[Any, ...]]:
    with db.read() as cursor:
        return [
            (row[0], row[1], bool(row[2]), int(row[3]))
            for row in cursor.execute(
                "SELECT stream_id, name, flag, position FROM keyed_rows ORDER BY stream_id"
            ).fetchall()
        ]


def test_keyed_rows_write_each_row_as_its_changes_would(runtime: Runtime):
    db = runtime.db
    with db.transaction() as cursor:
        cursor.execute(
            "CREATE TABLE keyed_rows (stream_id TEXT PRIMARY KEY, name TEXT NOT NULL, flag BOOLEAN NOT NULL, "
            "position BIGINT NOT NULL)"
        )
        cursor.executemany(
            "INSERT INTO keyed_rows (stream_id, name, flag, position) VALUES (?, ?, ?, ?)",
            [
                ("a", "kept", False, 1),
                ("b", "changed", False, 2),
                ("c", "deleted", False, 3),
                ("d", "again", False, 4),
            ],
        )
    with db.transaction() as cursor:
        rows = _keyed(cursor)
        rows.prefetch(["a", "b", "c", "d", "x"])
        assert rows.get("x") is None
        assert rows.update("x", name="nothing") is False  # as an UPDATE that matches no row
        assert rows.delete("x") is False
        assert rows.update("b", flag=True, position=5)
        assert rows.update("b", position=6)
        assert rows.get("b") == {"stream_id": "b", "name": "changed", "flag": True, "position": 6}
        assert rows.delete("c")
        assert rows.get("c") is None
        assert rows.delete("d")
        rows.insert({"stream_id": "d", "name": "re-created", "flag": True, "position": 7})
        rows.insert({"stream_id": "e", "name": "new", "flag": False, "position": 8})
        assert rows.update("e", name="new, then changed", position=9)
        rows.insert({"stream_id": "f", "name": "new, then deleted", "flag": False, "position": 10})
        assert rows.delete("f")
        with pytest.raises(ValueError, match="exists already"):
            rows.insert({"stream_id": "a", "name": "twice", "flag": False, "position": 11})
        rows.flush()
        # After a flush the rows are as stored: another round of changes is written in turn.
        assert rows.update("e", flag=True, position=12)
        rows.flush()
    assert _stored(db) == [
        ("a", "kept", False, 1),
        ("b", "changed", True, 6),
        ("d", "re-created", True, 7),
        ("e", "new, then changed", True, 12),
    ]


def test_keyed_rows_read_rows_they_were_not_given_beforehand(runtime: Runtime):
    db = runtime.db
    with db.transaction() as cursor:
        cursor.execute(
            "CREATE TABLE keyed_rows (stream_id TEXT PRIMARY KEY, name TEXT, flag BOOLEAN, position BIGINT)"
        )
        cursor.execute("INSERT INTO keyed_rows VALUES ('a', 'stored', ?, 1)", (False,))
    many = [f"k{number:04d}" for number in range(1200)]  # more than one query's worth of keys
    with db.transaction() as cursor:
        rows = _keyed(cursor)
        rows.prefetch(many)
        assert rows.update("a", name="loaded on demand", position=2)
        for number, key in enumerate(many):
            rows.insert({"stream_id": key, "name": key, "flag": number % 2 == 0, "position": number})
        rows.flush()
    stored = _stored(db)
    assert stored[0] == ("a", "loaded on demand", False, 2)
    assert len(stored) == 1 + len(many)
