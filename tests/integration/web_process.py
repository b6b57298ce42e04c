"""The ``web`` process of the Procfile as a test starts it: real gunicorn with ``api/gunicorn_conf.py``, in its own
process group, with private folders for its control socket (``XDG_RUNTIME_DIR``) and temporary files
(``TMPDIR``, where it creates its metrics folder), stopped by its process group id."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..conftest import POSTGRES_URL, TEST_SECRET
from ..ports import free_port

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
WEB_COMMAND = [str(BIN / "gunicorn"), "-c", "python:api.gunicorn_conf", "api.server:wsgi_app()"]


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private ``XDG_RUNTIME_DIR`` with a short path: a Unix socket's path is limited to 107 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="dt-run-", dir="/tmp"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def web_environment(schema: str, folder: Path, runtime_dir: Path, **extra: str) -> dict[str, str]:
    """The service's settings on the test's PostgreSQL schema; nothing inherited that could change them."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DEPLOY_TOKENS_", "WEB_"))}
    env.pop("PORT", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    for name in ("tmp", "data"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "DEPLOY_TOKENS_DATABASE_URL": f"{POSTGRES_URL}?schema={schema}",
            "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
            "DEPLOY_TOKENS_DATA_DIR": str(folder / "data"),
            "DEPLOY_TOKENS_LOG_LEVEL": "WARNING",
            "XDG_RUNTIME_DIR": str(runtime_dir),
            "TMPDIR": str(folder / "tmp"),
        }
    )
    env.update(extra)
    return env


def request(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (so that the kernel hands it to any of the workers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        payload = None if body is None else json.dumps(body).encode()
        sent = dict(headers or {})
        if payload is not None:
            sent["Content-Type"] = "application/json"
        connection.request(method, path, body=payload, headers=sent)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@dataclass
class WebProcess:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    log: Path
    runtime_dir: Path

    @property
    def control_socket(self) -> Path:
        return self.runtime_dir / f"deploy-tokens-web-127.0.0.1-{self.port}.ctl"

    def metrics_folders(self) -> list[Path]:
        return sorted((self.folder / "tmp").glob("deploy-tokens-metrics-*"))

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def wait_workers(self, count: int, *, replacing: int | None = None, seconds: float = 60) -> list[int]:
        """The worker pids once there are ``count`` (the arbiter forks them one by one, and readiness needs only
        the first), none of them ``replacing``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == count and replacing not in pids:
                return pids
            time.sleep(0.1)
        raise AssertionError(
            f"gunicorn did not have {count} workers within {seconds} s: {self.worker_pids()}"
        )

    def wait_ready(self, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"gunicorn exited with {self.process.returncode}:\n{self.log.read_text()}"
                )
            try:
                if request(self.port, "GET", "/-/readiness")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gunicorn not ready within {seconds} s:\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextmanager
def web_process(env: dict[str, str], folder: Path, *, name: str = "web") -> Iterator[WebProcess]:
    port = free_port()
    log = folder / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            WEB_COMMAND,
            env={**env, "PORT": str(port)},
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    web = WebProcess(process, port, folder, log, Path(env["XDG_RUNTIME_DIR"]))
    try:
        web.wait_ready()
        yield web
    finally:
        web.stop()
