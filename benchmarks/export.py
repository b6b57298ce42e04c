"""Issue 6: exporting 1,000,000 activity rows streams with flat memory.

Prints rows/s and peak RSS of the export (CSV to a file), next to the rate of merely reading the same rows
from the database (the same keyset pages) and the RSS of a process that only opened the runtime, all in
one run. Each measurement runs in a fresh process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.common import SECRET, report

ROWS = int(os.environ.get("EXPORT_BENCH_ROWS", "1000000"))


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(mode: str, output: str) -> None:
    from deploy_tokens.exports import Export, ExportRequest
    from deploy_tokens.runtime import Runtime
    from infrastructure.settings import Settings

    runtime = Runtime.open(Settings.from_env())
    export = Export(runtime.db, ExportRequest("usage", "csv"), runtime.keys.chain_key)
    start = time.perf_counter()
    rows = 0
    if mode == "read":
        for page in export.pages():
            rows += len(page)
    elif mode == "export":
        with open(output, "wb") as handle:
            for chunk in export.chunks():
                handle.write(chunk)
        rows = export.manifest.rows
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}))


def fill(data_dir: Path) -> None:
    from deploy_tokens.runtime import Runtime
    from infrastructure.settings import Settings

    env = {"DEPLOY_TOKENS_DATA_DIR": str(data_dir), "DEPLOY_TOKENS_SECRET_KEY": SECRET}
    with Runtime.open(Settings.from_env(env)) as runtime:
        base = datetime(2026, 1, 1, tzinfo=UTC)
        insert = (
            "INSERT INTO token_activity (occurred_at, token_id, token_ref, endpoint, action, resource_kind, "
            "resource_ref, allowed, reason, status, client_addr, user_agent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        batch = 50_000
        for offset in range(0, ROWS, batch):
            rows = [
                (
                    base + timedelta(seconds=n),
                    n % 500 + 1,
                    None,
                    "auth_request",
                    "git_read",
                    "project",
                    f"group/project-{n % 97}",
                    n % 7 != 0,
                    "allowed" if n % 7 else "revoked",
                    200 if n % 7 else 401,
                    f"10.0.{n % 250}.{n % 200}",
                    "git/2.39.5",
                )
                for n in range(offset, min(offset + batch, ROWS))
            ]
            with runtime.db.transaction() as cursor:
                cursor.executemany(insert, rows)


def run_child(mode: str, data_dir: Path, output: Path) -> dict[str, float]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    env.update({"DEPLOY_TOKENS_DATA_DIR": str(data_dir), "DEPLOY_TOKENS_SECRET_KEY": SECRET})
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.export", "--child", mode, str(output)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dt-export-bench-") as folder:
        data_dir, output = Path(folder) / "data", Path(folder) / "usage.csv"
        start = time.perf_counter()
        fill(data_dir)
        filled = time.perf_counter() - start
        idle = run_child("idle", data_dir, output)
        read = run_child("read", data_dir, output)
        exported = run_child("export", data_dir, output)
        report(
            {
                "benchmark": "export_usage_csv",
                "backend": "sqlite",
                "rows": exported["rows"],
                "fill_seconds": round(filled, 1),
                "read_rows_per_s": round(read["rows"] / read["seconds"]),
                "export_rows_per_s": round(exported["rows"] / exported["seconds"]),
                "export_to_read_ratio": round(read["seconds"] / exported["seconds"], 3),
                "export_bytes": output.stat().st_size,
                "peak_rss_mb_runtime_only": idle["peak_rss_mb"],
                "peak_rss_mb_read": read["peak_rss_mb"],
                "peak_rss_mb_export": exported["peak_rss_mb"],
            }
        )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
