"""(c) Revocation propagation across processes on PostgreSQL: p50/p99 from "revoke returned" in process A
to "process B denies". B is a separate OS process following the projection (LISTEN/NOTIFY)."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import SECRET, admin_world, bench_settings, report
from deploy_tokens.runtime import Runtime
from infrastructure.settings import Settings
from projections.access import Action
from projections.credential_index import Resource

TOKENS = 200
# What the service promises: another process denies a revoked token within this, 99 times out of 100, counted
# from the revoke call (the upper bound of the two measures below).
TARGET_P99_MS = 100


def follower(plan_path: str) -> None:
    """Process B: follow the projection, then report when each token was first denied."""
    plan = json.loads(Path(plan_path).read_text())
    runtime = Runtime.open(Settings.from_env())
    stop = threading.Event()
    threading.Thread(target=runtime.index.follow, args=(stop,), daemon=True).start()
    resource = Resource("project", plan["project"])

    def allowed(value: str, username: str) -> bool:
        decision = runtime.index.check(
            value=value,
            username=username,
            action=Action.GIT_READ,
            resource=resource,
            now=runtime.clock.now(),
            check_username=True,
        )
        return decision.allowed

    pending = {token_id: (value, username) for token_id, value, username in plan["tokens"]}
    while not all(allowed(value, username) for value, username in pending.values()):
        time.sleep(0.01)
    print("ready", flush=True)
    denied_at: dict[int, float] = {}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for token_id, (value, username) in list(pending.items()):
            if not allowed(value, username):
                denied_at[token_id] = time.time()
                del pending[token_id]
        time.sleep(0.0005)
    stop.set()
    print(json.dumps(denied_at), flush=True)


def main() -> None:
    with bench_settings("postgres") as settings, Runtime.open(settings) as runtime:
        admin, _, project = admin_world(runtime)
        issued = [
            runtime.tokens.create_token(admin, "project", project, name=f"t{n}", scopes=["read_repository"])
            for n in range(TOKENS)
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as plan:
            json.dump(
                {
                    "project": project,
                    "tokens": [(t.token.token_id, t.value, t.token.username) for t in issued],
                },
                plan,
            )
        env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
        location = settings.database
        env["DEPLOY_TOKENS_DATABASE_URL"] = (
            f"postgresql://{location.user}@{location.host}:{location.port}/{location.dbname}?schema={location.schema}"
        )
        env["DEPLOY_TOKENS_SECRET_KEY"] = SECRET
        env["DEPLOY_TOKENS_DATA_DIR"] = str(settings.data_dir)
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.revocation_propagation", "--follower", plan.name],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            called_at: dict[int, float] = {}
            revoked_at: dict[int, float] = {}
            rng = random.Random(7)
            for token in issued:
                called_at[token.token.token_id] = time.time()
                runtime.tokens.revoke_token(admin, "project", project, token.token.token_id)
                revoked_at[token.token.token_id] = time.time()
                time.sleep(rng.uniform(0.005, 0.03))
            denied_at = {int(k): v for k, v in json.loads(child.stdout.readline()).items()}
        finally:
            child.wait(timeout=60)
            os.unlink(plan.name)
        # The commit happens inside the revoke call, so the true latency lies between the two measures:
        # from the call (an upper bound) and from its return (a lower bound, often 0: B hears the NOTIFY
        # before A has finished its own read-your-writes catch-up).
        from_call = sorted((denied_at[t] - called_at[t]) * 1000 for t in denied_at)
        from_return = sorted(max(denied_at[t] - revoked_at[t], 0.0) * 1000 for t in denied_at)

        def pct(values: list[float], q: float) -> float:
            return round(values[max(int(len(values) * q) - 1, 0)], 2)

        report(
            {
                "benchmark": "revocation_propagation",
                "backend": "postgres",
                "revocations": len(revoked_at),
                "denied_by_other_process": len(from_call),
                "from_revoke_call_p50_ms": round(statistics.median(from_call), 2),
                "from_revoke_call_p99_ms": pct(from_call, 0.99),
                "from_revoke_return_p50_ms": round(statistics.median(from_return), 2),
                "from_revoke_return_p99_ms": pct(from_return, 0.99),
                "max_ms": round(from_call[-1], 2),
                "bound_ms": settings.auth_max_staleness * 1000,
                "target_p99_ms_at_most": TARGET_P99_MS,
                "meets_target": len(from_call) == len(revoked_at) and pct(from_call, 0.99) <= TARGET_P99_MS,
            }
        )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--follower":
        follower(sys.argv[2])
    else:
        main()
