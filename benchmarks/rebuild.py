"""(b) Projection rebuild events/s against the library's own bulk read-and-decode of the same log.

Target: rebuilding runs at >= 30% of the rate of merely reading and decoding the log (eventsourcing's
``select_notifications`` in sections of 500 plus ``mapper.to_domain_event``), on each backend.
"""

from __future__ import annotations

import sys
import time

from benchmarks.common import admin_world, bench_runtime, report
from domain.actors import Actor
from domain.deploy_token import DeployToken

TOKENS = 5000  # three events each: Created, Scoped, Revoked (every other token)


def fill(runtime, project: int) -> None:  # type: ignore[no-untyped-def]
    now = runtime.clock.now()
    actor = Actor.system("benchmark")
    batch = []
    for number in range(1, TOKENS + 1):
        token = DeployToken.issue(
            token_id=number,
            name=f"t{number}",
            username=None,
            holder_kind="project",
            holder_id=project,
            scopes=["read_repository"],
            expires_at=None,
            digest=f"{number:064x}",
            actor=actor,
            now=now,
        )
        if number % 2:
            token.revoke(actor=actor, now=now)
        batch.append(token)
        if len(batch) == 250:
            runtime.store.save(*batch)
            batch = []
    if batch:
        runtime.store.save(*batch)


def read_and_decode(runtime) -> int:  # type: ignore[no-untyped-def]
    count, position = 0, 0
    while True:
        notifications = runtime.store.recorder.select_notifications(
            start=position, limit=500, inclusive_of_start=False
        )
        if not notifications:
            return count
        for notification in notifications:
            runtime.store.mapper.to_domain_event(notification)
        count += len(notifications)
        position = notifications[-1].id


def run(backend: str) -> dict[str, object]:
    with bench_runtime(backend) as runtime:
        _, _, project = admin_world(runtime)
        fill(runtime, project)
        runtime.projector.catch_up()
        start = time.perf_counter()
        events = read_and_decode(runtime)
        read_seconds = time.perf_counter() - start
        results: dict[str, object] = {
            "benchmark": "projection_rebuild",
            "backend": backend,
            "events": events,
            "read_decode_events_per_s": round(events / read_seconds),
        }
        for name in runtime.projector.projections:
            start = time.perf_counter()
            applied = runtime.projector.rebuild(name)
            seconds = time.perf_counter() - start
            results[f"rebuild_{name}_events_per_s"] = round(applied / seconds)
            results[f"rebuild_{name}_ratio"] = round(read_seconds / seconds, 3)
        results["target_ratio_at_least"] = 0.3
        return results


def main() -> None:
    backends = sys.argv[1:] or ["sqlite", "postgres"]
    for backend in backends:
        report(run(backend))


if __name__ == "__main__":
    main()
