"""Auth decisions per second in-process, against the floor of computing the keyed digest alone.

Target: the full decision within 3x of the floor. Both loops run over the same token values in one run, in
alternating rounds (floor, decisions, floor, ...); the figure is the median of the per-round ratios, so load
that drifts on a shared machine falls on both sides of each ratio.
"""

from __future__ import annotations

import statistics
import time

from benchmarks.common import admin_world, bench_runtime, report
from projections.access import Action
from projections.credential_index import Resource

TOKENS = 1000
TARGET_RATIO = 3
ROUNDS = 50


def main() -> None:
    with bench_runtime("sqlite") as runtime:
        admin, _, project = admin_world(runtime)
        issued = [
            runtime.tokens.create_token(
                admin, "project", project, name=f"t{n}", scopes=["read_repository", "read_registry"]
            )
            for n in range(TOKENS)
        ]
        values = [(token.value, token.token.username) for token in issued]
        now = runtime.clock.now()
        resource = Resource("project", project)
        index, keys = runtime.index, runtime.keys

        index.ensure_fresh()
        floors: list[float] = []
        fulls: list[float] = []
        allowed = 0
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for value, _username in values:
                keys.digest(value)
            floors.append(time.perf_counter() - start)
            start = time.perf_counter()
            for value, username in values:
                decision = index.check(
                    value=value,
                    username=username,
                    action=Action.GIT_READ,
                    resource=resource,
                    now=now,
                    check_username=True,
                )
                allowed += decision.allowed
            fulls.append(time.perf_counter() - start)
        assert allowed == TOKENS * ROUNDS
        count = TOKENS * ROUNDS
        ratio = statistics.median(full / floor for full, floor in zip(fulls, floors, strict=True))
        report(
            {
                "benchmark": "auth_decisions_in_process",
                "checks": count,
                "decisions_per_s": round(TOKENS / statistics.median(fulls)),
                "digest_floor_per_s": round(TOKENS / statistics.median(floors)),
                "ratio_to_floor": round(ratio, 2),
                "target_ratio_at_most": TARGET_RATIO,
                "meets_target": ratio <= TARGET_RATIO,
            }
        )


if __name__ == "__main__":
    main()
