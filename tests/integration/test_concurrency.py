"""Concurrency on PostgreSQL: optimistic concurrency gives exactly one event, and distinct ids."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest

from deploy_tokens.runtime import Runtime

from ..conftest import POSTGRES_ONLY, World

THREADS = 8


def _run_all(calls):
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(lambda call: call(), calls))


@POSTGRES_ONLY
def test_concurrent_revokes_record_one_event(world: World):
    pg_runtime = world.runtime
    token_id = pg_runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id
    _run_all(
        [lambda: pg_runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)]
        * THREADS
        * 2
    )
    events = [entry["event"] for entry in pg_runtime.tokens.history(token_id)]
    assert events.count("Revoked") == 1


@POSTGRES_ONLY
def test_concurrent_notification_records_one_event(world: World):
    pg_runtime = world.runtime
    token_id = pg_runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="t",
        scopes=["read_repository"],
        expires_at=pg_runtime.clock.now() + timedelta(days=5),
    ).token.token_id
    results = _run_all(
        [lambda: pg_runtime.tokens.record_notification(token_id, 7, message_id="<m@x>", recipients=["a@x"])]
        * THREADS
        * 2
    )
    assert results.count(True) == 1
    assert [entry["event"] for entry in pg_runtime.tokens.history(token_id)].count("Notified") == 1


@pytest.mark.slow
@POSTGRES_ONLY
def test_concurrent_creation_gives_distinct_dense_ids(world: World):
    pg_runtime = world.runtime
    # Separate runtimes model separate processes: each has its own id allocator.
    runtimes = [Runtime.open(pg_runtime.settings, clock=pg_runtime.clock) for _ in range(3)]
    try:
        services = [runtime.tokens for runtime in [pg_runtime, *runtimes]]
        calls = [
            (
                lambda svc=services[i % 4], i=i: (
                    svc.create_token(
                        world.admin, "project", world.project, name=f"t{i}", scopes=["read_repository"]
                    ).token.token_id
                )
            )
            for i in range(THREADS * 4)
        ]
        ids = _run_all(calls)
    finally:
        for runtime in runtimes:
            runtime.close()
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == list(range(1, len(ids) + 1))


def test_processes_starting_together_on_a_new_schema_do_not_race(tmp_path, postgres_schema: str):
    from ..conftest import make_settings

    settings = make_settings("postgres", tmp_path, postgres_schema)

    def start() -> None:
        with Runtime.open(settings) as runtime:
            # Every table is created at start-up under the lock, the web UI's sessions among them: none is
            # left to a later first request, which would race other processes on the catalog again.
            assert runtime.web_sessions.count() == 0

    _run_all([start] * 4)  # before the start-up lock, some raised UniqueViolation on the catalog
