"""A command's events are projected in the transaction that stores them (``Projector.project_in_save``): the
events, the read models' rows and their positions commit together, and a failure of the read models never
costs the command its events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
import pytest
from eventsourcing.persistence import Notification
from eventsourcing.postgres import PostgresApplicationRecorder

from deploy_tokens.runtime import Runtime
from deploy_tokens.unit_of_work import AggregateViews, view_weight
from domain.actors import Actor
from domain.deploy_token import DeployToken
from domain.errors import NotFound
from domain.groups import Group
from domain.membership import AccessLevel
from domain.streams import stream_id
from infrastructure.db import Cursor

from ..conftest import World, save_unprojected


def _tables(runtime: Runtime) -> dict[str, list[tuple[object, ...]]]:
    tables = sorted(
        {table for projection in runtime.projector.projections.values() for table in projection.tables}
    )
    with runtime.db.read() as cursor:
        return {
            table: sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables
        }


def _create(runtime: Runtime, world: World, name: str) -> int:
    issued = runtime.tokens.create_token(
        world.users["maintainer"], "project", world.project, name=name, scopes=["read_repository"]
    )
    return issued.token.token_id


def _no_transaction(*_: object, **__: object) -> None:
    raise AssertionError("the read models were written outside the save's transaction")


def _stored_token(runtime: Runtime, world: World, token_id: int, name: str) -> DeployToken:
    """A token's aggregate as another process would build it, not yet saved."""
    return DeployToken.issue(
        token_id=token_id,
        name=name,
        username=None,
        holder_kind="project",
        holder_id=world.project,
        scopes=["read_repository"],
        expires_at=None,
        digest=f"{token_id:064x}",
        actor=Actor.system("test"),
        now=runtime.clock.now(),
    )


def test_a_command_needs_no_transaction_of_its_own_to_read_its_writes(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    world = World(runtime)

    monkeypatch.setattr(runtime.db, "transaction", _no_transaction)
    token_id = _create(runtime, world, "in-save")
    record = runtime.read.token(token_id)
    assert record is not None and record.name == "in-save"
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


def test_a_gap_in_postgresqls_positions_does_not_stop_a_command_projecting_its_own_events(
    pg_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    """An insert rolled back (a lost race for an id, say) uses its sequence numbers up: the next command's
    first event is not the projections' position + 1, yet nothing lies between them to apply first."""
    runtime = pg_runtime
    world = World(runtime)
    recorder = runtime.store.recorder
    assert isinstance(recorder, PostgresApplicationRecorder)
    table = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
    with psycopg.connect(runtime.settings.database.conninfo(), autocommit=True) as other:
        other.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'notification_id')) FROM generate_series(1, 3)",
            (table,),
        )

    head = runtime.store.head()
    monkeypatch.setattr(runtime.db, "transaction", _no_transaction)
    token_id = _create(runtime, world, "after-a-gap")
    assert runtime.store.head() == head + 5  # three positions skipped, then Created and Scoped
    record = runtime.read.token(token_id)
    assert record is not None and record.name == "after-a-gap"
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


@pytest.mark.parametrize(
    ("isolation", "trusted"),
    [(psycopg.IsolationLevel.READ_COMMITTED, True), (psycopg.IsolationLevel.REPEATABLE_READ, False)],
)
def test_the_event_before_a_save_is_only_looked_up_in_a_fresh_snapshot(
    pg_runtime: Runtime, isolation: psycopg.IsolationLevel, trusted: bool
):
    """A transaction whose snapshot predates the log's lock (a REPEATABLE READ default, say) could miss
    events committed just before: its answer is "unknown" then, and the save leaves projection to the
    catch-up."""
    runtime = pg_runtime
    World(runtime)
    head = runtime.store.head()
    with psycopg.connect(runtime.settings.database.conninfo()) as other:
        other.isolation_level = isolation
        row = other.execute(runtime.store.position_before_sql().replace("?", "%s"), (head + 1,)).fetchone()
    assert row == ((head,) if trusted else (-1,))


def test_a_save_that_fails_after_projecting_leaves_neither_events_nor_rows(runtime: Runtime):
    world = World(runtime)
    head, positions, tables = runtime.store.head(), runtime.projector.positions(), _tables(runtime)

    def crashing(cursor: Cursor, written: Sequence[Notification]) -> None:
        runtime.projector.project_in_save(cursor, written)
        if runtime.db.dialect == "postgresql":
            # The session ends before its commit, as when the process or its connection dies.
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        raise RuntimeError("the process dies before the commit")

    runtime.store.run_in_save(crashing)
    try:
        with pytest.raises(Exception):  # noqa: B017 - whatever the driver makes of a lost session
            _create(runtime, world, "never")
    finally:
        runtime.store.run_in_save(runtime.projector.project_in_save)
    assert (runtime.store.head(), runtime.projector.positions(), _tables(runtime)) == (
        head,
        positions,
        tables,
    )

    token_id = _create(runtime, world, "after")  # the next command projects as ever
    assert runtime.read.token(token_id) is not None
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


def test_a_failing_read_model_costs_the_command_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    world = World(runtime)
    audit = runtime.projector.projections["audit_trail"]
    apply_batch = audit.apply_batch
    failures = []

    def failing_once(cursor: Cursor, notifications: Sequence[Notification], decode: Any) -> None:
        if not failures:
            failures.append(notifications[-1].id)
            cursor.execute("INSERT INTO audit_events (no_such_column) VALUES (1)")  # the database refuses it
        apply_batch(cursor, notifications, decode)

    monkeypatch.setattr(audit, "apply_batch", failing_once)
    token_id = _create(runtime, world, "survives")
    assert failures, "the in-save projection was not tried"
    assert "the catch-up applies them" in caplog.text
    # The events were stored, and the catch-up after the command applied them to every read model.
    assert runtime.read.token(token_id) is not None
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())
    kept = _tables(runtime)
    for name in runtime.projector.projections:
        runtime.projector.rebuild(name)
    assert _tables(runtime) == kept


def test_a_read_model_failure_a_later_read_brings_to_light_costs_the_command_nothing(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """In PostgreSQL's pipeline the refused statement's error comes back with the next result anyone waits
    for, here a read, and the pipeline refuses everything after it until it is synchronised: the rollback to
    the savepoint must still happen, so that the command's own save commits at its first attempt."""
    world = World(runtime)
    credentials = runtime.projector.projections["credential_lookup"]
    apply_batch = credentials.apply_batch
    failures = []

    def failing_once(cursor: Cursor, notifications: Sequence[Notification], decode: Any) -> None:
        if not failures:
            failures.append(notifications[-1].id)
            cursor.execute("UPDATE cred_tokens SET no_such_column = 1")  # the database refuses it...
            cursor.execute("SELECT 1").fetchone()  # ...and says so here
        apply_batch(cursor, notifications, decode)

    monkeypatch.setattr(credentials, "apply_batch", failing_once)
    head = runtime.store.head()
    token_id = _create(runtime, world, "survives")
    assert failures, "the in-save projection was not tried"
    assert "the catch-up applies them" in caplog.text
    # Created and Scoped right after the head: stored by the first attempt, not by a retry after it failed
    # (a failed insert would have used up its positions on PostgreSQL).
    assert runtime.store.head() == head + 2
    assert failures == [head + 2]
    assert runtime.read.token(token_id) is not None
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


def test_events_projected_by_another_process_first_are_still_announced_here(runtime: Runtime):
    """A command's catch-up that finds its events applied already (another process's catch-up was quicker)
    still tells this process's listeners, the credential index among them, before the command answers."""
    world = World(runtime)
    token = _stored_token(runtime, world, 900, "elsewhere")
    recordings = save_unprojected(runtime, token)
    runtime.projector.catch_up()  # as the projector process would, before this process's own catch-up
    told: list[int] = []
    runtime.projector.add_listener(told.append)
    runtime.uow.caught_up(recordings)
    assert told == [recordings[-1].notification.id]


@contextmanager
def _tracking_row_locked(runtime: Runtime, name: str) -> Iterator[None]:
    """Another session holds ``name``'s tracking row, as a catch-up busy with a batch does."""
    assert runtime.settings.database.schema
    with psycopg.connect(runtime.settings.database.conninfo()) as other:
        other.execute(f'SET search_path TO "{runtime.settings.database.schema}"')
        other.execute("SELECT position FROM projection_tracking WHERE name = %s FOR UPDATE", (name,))
        yield
        other.rollback()


def test_a_save_never_waits_for_a_busy_read_model(pg_runtime: Runtime):
    runtime = pg_runtime
    world = World(runtime)
    token = _stored_token(runtime, world, 500, "raw")
    positions = runtime.projector.positions()
    with _tracking_row_locked(runtime, "credential_lookup"):
        started = time.monotonic()
        runtime.store.save(token)  # the event store's save alone: no catch-up after it
        assert time.monotonic() - started < 2.0
        # Not one read model moved: a save projects all of them or leaves all to the catch-up.
        assert runtime.projector.positions() == positions
    runtime.projector.catch_up()
    assert runtime.read.token(500) is not None


def test_permission_views_see_a_change_at_once_and_never_change_in_hand(runtime: Runtime):
    world = World(runtime)
    maintainer = world.users["group_maintainer"]
    assert maintainer.user_id is not None
    views = runtime.uow.views
    before = views.get(Group, stream_id("namespace", world.top), "404 Group")
    assert before.members[maintainer.user_id] == AccessLevel.MAINTAINER

    runtime.members.remove_member(world.admin, "group", world.top, maintainer.user_id)
    after = views.get(Group, stream_id("namespace", world.top), "404 Group")
    assert maintainer.user_id not in after.members
    assert before.members[maintainer.user_id] == AccessLevel.MAINTAINER  # the view handed out earlier
    with pytest.raises(NotFound, match="404 Project"):
        runtime.tokens.create_token(
            maintainer, "project", world.project, name="late", scopes=["read_repository"]
        )


def test_permission_views_answer_from_the_store_once_forgotten(runtime: Runtime):
    world = World(runtime)
    views = AggregateViews(runtime.store, budget=1)  # every view weighs more: none is kept
    groups = [world.top, world.sub, world.subsub, world.sibling]
    for _ in range(2):
        for group_id in groups:
            view = views.get(Group, stream_id("namespace", group_id), "404 Group")
            assert view.group_id == group_id
    runtime.members.set_member(world.admin, "group", world.top, world.users["guest"].user_id or 0, 30)
    assert (
        views.get(Group, stream_id("namespace", world.top), "404 Group").members[
            world.users["guest"].user_id or 0
        ]
        == AccessLevel.DEVELOPER
    )


def test_permission_views_forget_the_least_recently_read_first(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    world = World(runtime)
    asked: list[tuple[UUID, int | None]] = []
    get_events = runtime.store.events.get

    def watched(stream: UUID, gt: int | None = None, **kwargs: Any) -> Any:
        asked.append((stream, gt))
        return get_events(stream, gt=gt, **kwargs)

    top, sub, sibling = (stream_id("namespace", group) for group in (world.top, world.sub, world.sibling))
    weights = {
        stream: view_weight(runtime.uow.views.get(Group, stream, "404 Group"))
        for stream in (top, sub, sibling)
    }
    monkeypatch.setattr(runtime.store.events, "get", watched)
    views = AggregateViews(runtime.store, budget=weights[top] + max(weights[sub], weights[sibling]))
    for stream in (top, sub, top, sibling):  # the top group read again before a third one comes
        views.get(Group, stream, "404 Group")
    asked.clear()
    views.get(Group, top, "404 Group")
    views.get(Group, sub, "404 Group")
    assert asked[0][0] == top and asked[0][1] is not None  # kept: only its newer events are asked for
    assert asked[1] == (sub, None)  # forgotten: read from its first event


def test_a_permission_view_weighs_its_members(runtime: Runtime):
    """Views are kept by weight, not number: a group with many members counts for many small ones."""
    world = World(runtime)
    top = runtime.uow.views.get(Group, stream_id("namespace", world.top), "404 Group")
    before = view_weight(top)
    runtime.members.set_member(world.admin, "group", world.top, world.users["guest"].user_id or 0, 30)
    runtime.members.set_member(world.admin, "group", world.top, world.users["reporter"].user_id or 0, 30)
    after = view_weight(runtime.uow.views.get(Group, stream_id("namespace", world.top), "404 Group"))
    assert after == before + 2 == view_weight(top) + 2  # the view handed out earlier is unchanged


def test_two_processes_writing_at_once_leave_read_models_equal_to_a_rebuild(pg_runtime: Runtime):
    """Commands of two processes interleave with a third following the log: each save projects in its own
    transaction, skips a busy read model or leaves a lagging one to the catch-up, and nothing is applied twice
    or missed."""
    world = World(pg_runtime)
    other = Runtime.open(pg_runtime.settings, clock=pg_runtime.clock)
    follower = Runtime.open(pg_runtime.settings, clock=pg_runtime.clock)
    stop = threading.Event()

    def follow() -> None:
        while not stop.is_set():
            follower.projector.catch_up()

    def create(runtime: Runtime, prefix: str) -> None:
        for number in range(40):
            runtime.tokens.create_token(
                world.admin, "project", world.project, name=f"{prefix}-{number}", scopes=["read_repository"]
            )

    following = threading.Thread(target=follow)
    following.start()
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for done in [pool.submit(create, pg_runtime, "a"), pool.submit(create, other, "b")]:
                done.result()
    finally:
        stop.set()
        following.join()
        other.close()
        follower.close()
    pg_runtime.projector.catch_up()
    head = pg_runtime.store.head()
    assert pg_runtime.projector.positions() == dict.fromkeys(pg_runtime.projector.projections, head)
    listed = pg_runtime.read.tokens(
        holder_kind="project",
        holder_id=world.project,
        active_only=True,
        now=pg_runtime.clock.now(),
        per_page=100,
    )
    assert listed.total == 80
    kept = _tables(pg_runtime)
    for name in pg_runtime.projector.projections:
        pg_runtime.projector.rebuild(name)
    assert _tables(pg_runtime) == kept
