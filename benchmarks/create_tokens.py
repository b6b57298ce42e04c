"""Creating deploy tokens through the service against saving the same aggregates with the raw event store.

The service call is the one ``POST /projects/:id/deploy_tokens`` makes (``TokenService.create_token``, no
Idempotency-Key), by the project's Maintainer: the permission check on the project and its group, a new value
and its keyed digest, the next free id, the events saved, the read models caught up (read-your-writes) and the
new token's record. The baseline saves aggregates holding the same events (``Created`` and ``Scoped``, built
beforehand with fresh digests) one at a time with ``runtime.store.save``: the write every creation must make.
For reference it also saves the same aggregates with every read model's rows written in the save's
transaction (``ms_per_save_with_read_models``), which a create that answers with its writes readable must
also do: docs/performance.md explains why the target cannot be met against the raw save.

Both run in the same process against the same store, in alternating blocks, so that noise on a shared machine
falls on both alike; the raw saves are projected between blocks, outside the clock, so that the service's
catch-up only ever projects its own events.

Run: ``python -m benchmarks.create_tokens [sqlite|postgres ...]``; one JSON line per backend.
"""

from __future__ import annotations

import os
import sys
import time

from benchmarks.common import admin_world, bench_runtime, report
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import DeployToken
from domain.membership import AccessLevel
from domain.token_values import DEPLOY_TOKEN_PREFIX, generate_token

TOKENS = int(os.environ.get("CREATE_BENCH_TOKENS", "600"))  # per path
BLOCK = 50
WARM_UP = 20
SCOPES = ("read_repository", "read_registry")
TARGET = 0.7
RAW_IDS_FROM = 10_000_000  # far above the ids the service allocates, so the two never meet


def maintainer_world(runtime: Runtime) -> tuple[Actor, int]:
    """A project in a group and a user who is its Maintainer (the role creating a project token needs)."""
    admin, _, project = admin_world(runtime)
    user = runtime.directory.register_user(admin, username="maintainer", email="maintainer@example.com")
    runtime.members.set_member(admin, "project", project, user.user_id, AccessLevel.MAINTAINER)
    return Actor.user(user.user_id, user.username), project


def raw_aggregates(
    runtime: Runtime, actor: Actor, project: int, first_id: int, count: int
) -> list[DeployToken]:
    now = runtime.clock.now()
    return [
        DeployToken.issue(
            token_id=first_id + offset,
            name=f"raw-{first_id + offset}",
            username=None,
            holder_kind="project",
            holder_id=project,
            scopes=SCOPES,
            expires_at=None,
            digest=runtime.keys.digest(generate_token(DEPLOY_TOKEN_PREFIX)),
            actor=actor,
            now=now,
        )
        for offset in range(count)
    ]


def create_block(runtime: Runtime, actor: Actor, project: int, first: int, count: int) -> float:
    start = time.perf_counter()
    for number in range(first, first + count):
        runtime.tokens.create_token(actor, "project", project, name=f"svc-{number}", scopes=SCOPES)
    return time.perf_counter() - start


def save_block(runtime: Runtime, aggregates: list[DeployToken], *, with_read_models: bool = False) -> float:
    """The library's save alone (the baseline), or ``with_read_models``: the same save with every read
    model's rows written in its transaction, as a create's save writes them (for reference)."""
    if not with_read_models:
        runtime.store.run_in_save(None)
    try:
        start = time.perf_counter()
        for aggregate in aggregates:
            runtime.store.save(aggregate)
        seconds = time.perf_counter() - start
    finally:
        runtime.store.run_in_save(runtime.projector.project_in_save)
    # Outside the clock: the next service block projects and indexes only its own tokens.
    applied = runtime.projector.catch_up()
    if with_read_models:
        assert applied == 0, (
            f"{applied} events were not projected in their saves"
        )  # else this timed a raw save
    runtime.index.refresh()
    return seconds


def run(backend: str) -> dict[str, object]:
    with bench_runtime(backend) as runtime:
        actor, project = maintainer_world(runtime)
        create_block(runtime, actor, project, 0, WARM_UP)
        save_block(runtime, raw_aggregates(runtime, actor, project, RAW_IDS_FROM, WARM_UP))
        save_block(
            runtime,
            raw_aggregates(runtime, actor, project, RAW_IDS_FROM + WARM_UP, WARM_UP),
            with_read_models=True,
        )
        service_seconds = raw_seconds = projected_seconds = 0.0
        created = saved = 0
        next_raw_id = RAW_IDS_FROM + 2 * WARM_UP
        while created < TOKENS:
            count = min(BLOCK, TOKENS - created)
            service_seconds += create_block(runtime, actor, project, WARM_UP + created, count)
            created += count
            raw_seconds += save_block(runtime, raw_aggregates(runtime, actor, project, next_raw_id, count))
            next_raw_id += count
            aggregates = raw_aggregates(runtime, actor, project, next_raw_id, count)
            projected_seconds += save_block(runtime, aggregates, with_read_models=True)
            next_raw_id += count
            saved += count
        listed = runtime.read.tokens(
            holder_kind="project", holder_id=project, active_only=False, now=runtime.clock.now(), per_page=1
        ).total
        assert listed == 3 * (WARM_UP + TOKENS), listed  # every token of every path reached the read model
        creates_per_s = created / service_seconds
        raw_saves_per_s = saved / raw_seconds
        ratio = creates_per_s / raw_saves_per_s
        return {
            "benchmark": "create_tokens",
            "backend": backend,
            "tokens_per_path": TOKENS,
            "creates_per_s": round(creates_per_s, 1),
            "raw_saves_per_s": round(raw_saves_per_s, 1),
            "ms_per_create": round(1000 * service_seconds / created, 3),
            "ms_per_raw_save": round(1000 * raw_seconds / saved, 3),
            "ratio": round(ratio, 3),
            "target_ratio_at_least": TARGET,
            "meets_target": ratio >= TARGET,
            # For reference, not the target's baseline: the save a read-your-writes create cannot do without.
            "ms_per_save_with_read_models": round(1000 * projected_seconds / saved, 3),
            "ratio_to_save_with_read_models": round(projected_seconds / service_seconds, 3),
        }


def main() -> None:
    for backend in sys.argv[1:] or ["sqlite", "postgres"]:
        report(run(backend))


if __name__ == "__main__":
    main()
