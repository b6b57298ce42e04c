"""(d) nginx auth_request checks per second over HTTP, against an EMPTY route of the same app, same server.

Target: the auth check serves at least 80% of the empty route's requests per second. Both routes live in
one gunicorn process configured like the embedded server (one gthread worker, 8 threads, keep-alive, the
in-process projector running; no access log, as in the ``Procfile``), with activity recording installed,
and ``wrk`` drives them over keep-alive connections with the same headers, in one run. The empty route
exists only in this benchmark's own app construction.

Shared machines are noisy, so the comparison is made robust rather than long: the server and ``wrk`` are
pinned to different CPUs (when there are two), the routes alternate in pairs (empty-auth, auth-empty, ...),
and the figure is the median of the per-pair ratios, so load that drifts between pairs cancels out. The
worker's CPU time per request (from ``/proc``) is reported too, as a second view less sensitive to noise.

``python -m benchmarks.auth_http`` (installs Debian's ``wrk`` when it is missing). Prints one JSON line.

``python -m benchmarks.auth_http --instructions`` gives the same comparison free of noise: the gunicorn worker
runs under ``valgrind --tool=callgrind`` (Debian's ``valgrind``, installed when missing), one client sends
the same number of keep-alive requests to each route, and the figure is user-space instructions per
request (activity writer included), which repeat exactly from run to run. Timer-driven threads (projector,
index follower, scheduler) are off in this mode so that the counts depend on the requests only. Kernel work
(sockets) is not counted; it is the same for both routes.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flask import Flask, Response

from benchmarks.common import SECRET, admin_world, bench_runtime, report
from deploy_tokens.runtime import Runtime

EMPTY_ROUTE = "/_bench/empty"
AUTH_ROUTE = "/internal/auth_request"
MARK_ROUTE = "/_bench/mark"  # --instructions: ends a counted segment
MARK_SYSCALL = "getsid"  # callgrind dumps its counts before each call; gunicorn itself never makes it
COUNTED_REQUESTS = 1000
PAIRS = 12
SECONDS = 3
CONNECTIONS = 8
TARGET_RATIO = 0.8


# The server (child process) ------------------------------------------------------------------------------


def build_app(data_dir: str, *, counting: bool = False) -> Flask:
    """The production app, with activity recording, plus the empty route (this benchmark only).

    ``counting``: no timer-driven threads (the index is loaded once and trusted for the run) and a route
    that marks the end of a counted segment.
    """
    from api.activity import install_activity
    from api.app import create_app
    from api.server import BackgroundThreads
    from cli.serve import embedded_threads
    from infrastructure.settings import Settings

    env = {"DEPLOY_TOKENS_DATA_DIR": data_dir, "DEPLOY_TOKENS_SECRET_KEY": SECRET}
    if counting:
        env["DEPLOY_TOKENS_AUTH_MAX_STALENESS"] = "86400"
    runtime = Runtime.open(Settings.from_env(env))
    if counting:
        runtime.index.refresh()
    else:
        BackgroundThreads(runtime, embedded_threads(runtime)).start()
    app = create_app(runtime)
    install_activity(app, runtime)

    @app.route(EMPTY_ROUTE, methods=["GET"])
    def empty() -> Response:
        return app.response_class(status=200)

    if counting:

        @app.route(MARK_ROUTE, methods=["GET"])
        def mark() -> Response:
            os.getsid(0)  # MARK_SYSCALL
            return app.response_class(status=200)

    return app


def serve(data_dir: str, port: int, cpu: int | None, *, counting: bool = False) -> None:
    from gunicorn.app.base import BaseApplication

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # inherited by the gunicorn worker

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": 8,
                "keepalive": 600 if counting else 5,
                "timeout": 600 if counting else 30,  # callgrind runs the worker some 50 times slower
                "loglevel": "warning",
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:  # type: ignore[override]
            return build_app(data_dir, counting=counting)  # after the fork, like the embedded server

    Server().run()


# The driver ----------------------------------------------------------------------------------------------


def ensure_tool(name: str) -> str:
    """The path of a command from the Debian package of the same name, installed when it is missing."""
    found = shutil.which(name)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", name]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed and could not be installed with apt-get")
    return found


def cpu_plan() -> tuple[int | None, list[str]]:
    """The server's CPU and the prefix that pins ``wrk`` to another one (nothing to pin on one CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(cpus) < 2 or taskset is None:
        return None, []
    return cpus[0], [taskset, "-c", str(cpus[1])]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, headers: dict[str, str], timeout: float = 5) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def wait_until_up(base: str, server: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.returncode}")
        try:
            if get(base + "/-/health", {}, timeout=seconds)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not start within {seconds:.0f} s")


def worker_cpu_seconds(master_pid: int) -> float:
    """User+system CPU time of the gunicorn worker(s) under the master we started."""
    total = 0.0
    for pid in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_wrk(
    wrk: list[str], url: str, headers: dict[str, str], seconds: int, master_pid: int | None = None
) -> dict[str, float]:
    command = [*wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    cpu_before = worker_cpu_seconds(master_pid) if master_pid else 0.0
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    cpu_used = worker_cpu_seconds(master_pid) - cpu_before if master_pid else float("nan")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    count = re.search(r"(\d+) requests in", output)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    if rps is None or count is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    if re.search(r"Non-2xx or 3xx responses|Socket errors", output):
        raise RuntimeError(f"wrk saw failures:\n{output}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
    return {
        "rps": float(rps.group(1)),
        "cpu_us_per_request": cpu_used / int(count.group(1)) * 1e6,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else float("nan"),
        "p99_ms": float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan"),
    }


def scrape(base: str, name: str) -> float | None:
    text = get(base + "/metrics", {})[2].decode()
    match = re.search(rf"^{re.escape(name)} ([\d.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def stop(server: subprocess.Popen[bytes]) -> None:
    """Stop the gunicorn we started (its own process group: the master and its worker), by its id."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _median(series: list[dict[str, float]], key: str) -> float:
    return statistics.median(result[key] for result in series)


@contextmanager
def bench_world() -> Iterator[tuple[Runtime, dict[str, str], str]]:
    """A throwaway data folder with one project token; the headers nginx would send for a clone with it."""
    with bench_runtime("sqlite") as runtime:
        admin, _, project = admin_world(runtime)
        issued = runtime.tokens.create_token(
            admin, "project", project, name="bench", scopes=["read_repository"]
        )
        credentials = base64.b64encode(f"{issued.token.username}:{issued.value}".encode()).decode()
        headers = {
            "Authorization": f"Basic {credentials}",
            "X-Original-URI": "/bench/app.git/info/refs?service=git-upload-pack",
            "X-Original-Method": "GET",
            "X-Original-Remote-Addr": "203.0.113.7",
        }
        yield runtime, headers, issued.token.username


def start_server(
    data_dir: str, port: int, prefix: Sequence[str] = (), extra: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    command = [*prefix, sys.executable, "-m", "benchmarks.auth_http", "--serve", "--data-dir", data_dir]
    command += ["--port", str(port), *extra]
    return subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, start_new_session=True)


def run() -> dict[str, Any]:
    server_cpu, pin_wrk = cpu_plan()
    wrk = [*pin_wrk, ensure_tool("wrk")]
    with bench_world() as (runtime, headers, username):
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        pinned = [] if server_cpu is None else ["--cpu", str(server_cpu)]
        server = start_server(str(runtime.settings.data_dir), port, extra=pinned)
        try:
            wait_until_up(base, server, 30)
            status, answer, _ = get(base + AUTH_ROUTE, headers)
            assert status == 200 and answer.get("X-Auth-User") == username, (status, answer)
            run_wrk(wrk, base + EMPTY_ROUTE, headers, 1)  # warm both paths
            run_wrk(wrk, base + AUTH_ROUTE, headers, 1)
            results: dict[str, list[dict[str, float]]] = {EMPTY_ROUTE: [], AUTH_ROUTE: []}
            for pair in range(PAIRS):
                order = (EMPTY_ROUTE, AUTH_ROUTE) if pair % 2 == 0 else (AUTH_ROUTE, EMPTY_ROUTE)
                for route in order:
                    results[route].append(run_wrk(wrk, base + route, headers, SECONDS, server.pid))
            time.sleep(0.5)  # let the activity writer drain
            dropped = scrape(base, "deploy_tokens_activity_dropped_total")
            written = scrape(base, "deploy_tokens_activity_written_total")
        finally:
            stop(server)
        with runtime.db.read() as cursor:
            row = cursor.execute("SELECT COUNT(*) FROM token_activity").fetchone()
        rows = int(row[0]) if row else 0

    empty, auth = results[EMPTY_ROUTE], results[AUTH_ROUTE]
    ratios = [a["rps"] / e["rps"] for a, e in zip(auth, empty, strict=True)]
    ratio = statistics.median(ratios)
    return {
        "benchmark": "auth_request_http",
        "server": "gunicorn gthread, 1 worker x 8 threads, keep-alive; activity recording on",
        "client": f"wrk -t1 -c{CONNECTIONS}; {PAIRS} alternating pairs of {SECONDS}s",
        "pinned_cpus": server_cpu is not None,
        "empty_route_rps": round(_median(empty, "rps")),
        "auth_request_rps": round(_median(auth, "rps")),
        "ratio": round(ratio, 3),
        "target_ratio_at_least": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
        "pair_ratios": [round(value, 3) for value in ratios],
        "empty_cpu_us_per_request": round(_median(empty, "cpu_us_per_request"), 1),
        "auth_cpu_us_per_request": round(_median(auth, "cpu_us_per_request"), 1),
        "auth_p50_ms": round(_median(auth, "p50_ms"), 3),
        "auth_p99_ms": round(_median(auth, "p99_ms"), 3),
        "empty_p50_ms": round(_median(empty, "p50_ms"), 3),
        "activity_rows": rows,
        "activity_written_total": written,
        "activity_dropped_total": dropped,
    }


# Instruction counts (--instructions) ------------------------------------------------------------------


def send(connection: http.client.HTTPConnection, path: str, headers: dict[str, str], count: int) -> None:
    for _ in range(count):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}")


def segment_counts(out_dir: Path) -> list[int]:
    """Instructions of each segment the worker dumped before a mark, in order (``callgrind.out.<pid>.<n>``)."""
    dumps: dict[str, dict[int, int]] = {}
    for path in out_dir.glob("callgrind.out.*.*"):
        pid, part = path.name.split(".")[2:4]
        with path.open() as dump:
            summary = next(line for line in dump if line.startswith("summary:"))
        dumps.setdefault(pid, {})[int(part)] = int(summary.split()[1])
    marked = [parts for parts in dumps.values() if len(parts) >= 3]
    if len(marked) != 1:
        raise RuntimeError(f"expected one process with three counted segments, found {len(marked)}")
    return [count for _, count in sorted(marked[0].items())]


def count_instructions() -> dict[str, Any]:
    valgrind = ensure_tool("valgrind")
    count = COUNTED_REQUESTS
    with bench_world() as (runtime, headers, _), tempfile.TemporaryDirectory() as folder:
        port = free_port()
        callgrind = [valgrind, "--tool=callgrind", f"--dump-before={MARK_SYSCALL}", "--trace-children=yes"]
        callgrind += [
            f"--callgrind-out-file={folder}/callgrind.out.%p",
            f"--log-file={folder}/valgrind.%p.log",
        ]
        server = start_server(str(runtime.settings.data_dir), port, callgrind, ["--count"])
        try:
            wait_until_up(f"http://127.0.0.1:{port}", server, 300)
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            send(connection, EMPTY_ROUTE, headers, count // 5)  # warm both paths
            send(connection, AUTH_ROUTE, headers, count // 5)
            for route in (MARK_ROUTE, EMPTY_ROUTE, MARK_ROUTE, AUTH_ROUTE):
                send(connection, route, headers, 1 if route == MARK_ROUTE else count)
                time.sleep(3)  # the activity writer drains within its 0.2 s interval (slower under callgrind)
            send(connection, MARK_ROUTE, headers, 1)
            connection.close()
        finally:
            stop(server)
        # Segments: start-up and warm-up, then [mark, empty...], [mark, auth...].
        _, empty_total, auth_total = segment_counts(Path(folder))[:3]
    empty, auth = empty_total / count, auth_total / count
    return {
        "benchmark": "auth_request_instructions",
        "server": "gunicorn gthread, 1 worker x 8 threads, keep-alive; activity recording on; under callgrind",
        "client": f"one keep-alive connection, {count} requests per route",
        "empty_route_instructions_per_request": round(empty),
        "auth_request_instructions_per_request": round(auth),
        "ratio": round(empty / auth, 3),
        "target_ratio_at_least": TARGET_RATIO,
        "meets_target": empty / auth >= TARGET_RATIO,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions per request under callgrind"
    )
    arguments = parser.parse_args()
    if arguments.serve:
        serve(arguments.data_dir, arguments.port, arguments.cpu, counting=arguments.count)
        return
    report(count_instructions() if arguments.instructions else run())


if __name__ == "__main__":
    main()
