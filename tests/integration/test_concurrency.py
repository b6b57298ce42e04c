"""Concurrency on PostgreSQL: optimistic concurrency gives exactly one event, and distinct ids."""

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from deploy_tokens.runtime import Runtime

from ..conftest import World

THREADS = 8


def _run_all(calls):
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(lambda call: call(), calls))


def test_concurrent_revokes_record_one_event(pg_runtime: Runtime):
    world = World(pg_runtime)
    service = pg_runtime.service
    token_id = service.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id
    _run_all([lambda: service.revoke_token(world.admin, "project", world.project, token_id)] * THREADS * 2)
    events = [entry["event"] for entry in service.history(token_id)]
    assert events.count("Revoked") == 1


def test_concurrent_notification_records_one_event(pg_runtime: Runtime):
    world = World(pg_runtime)
    service = pg_runtime.service
    token_id = service.create_token(
        world.admin,
        "project",
        world.project,
        name="t",
        scopes=["read_repository"],
        expires_at=pg_runtime.clock.now() + timedelta(days=5),
    ).token.token_id
    results = _run_all(
        [lambda: service.record_notification(token_id, 7, message_id="<m@x>", recipients=["a@x"])]
        * THREADS
        * 2
    )
    assert results.count(True) == 1
    assert [entry["event"] for entry in service.history(token_id)].count("Notified") == 1


def test_concurrent_creation_gives_distinct_dense_ids(pg_runtime: Runtime):
    world = World(pg_runtime)
    # Separate service instances model separate processes: each has its own id allocator.
    runtimes = [Runtime.open(pg_runtime.settings, clock=pg_runtime.clock) for _ in range(3)]
    try:
        services = [runtime.service for runtime in [pg_runtime, *runtimes]]
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
        Runtime.open(settings).close()

    _run_all([start] * 4)  # before the start-up lock, some raised UniqueViolation on the catalog
