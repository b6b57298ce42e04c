"""The Procfile's ``web`` process (real gunicorn with ``api/gunicorn_conf.py``): it listens on loopback unless told
otherwise, each instance has its own control socket (stopping one never removes another's), and a bad setting
stops it with one line, before any worker starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy_tokens.runtime import Runtime

from .web_process import BIN, ROOT, WEB_COMMAND, runtime_dir, web_environment, web_process

__all__ = ["runtime_dir"]  # the fixture

pytestmark = pytest.mark.postgres


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_web_listens_on_loopback_and_each_instance_has_its_own_control_socket(
    pg_runtime: Runtime, postgres_schema: str, tmp_path: Path, runtime_dir: Path
) -> None:
    env = web_environment(postgres_schema, tmp_path, runtime_dir, WEB_CONCURRENCY="1", WEB_THREADS="2")
    with web_process(env, tmp_path, name="first") as first:
        assert listening_addresses(first.port) == {"0100007F"}  # 127.0.0.1 only, although PORT is set
        assert first.control_socket.is_socket()
        status = subprocess.run(
            [str(BIN / "gunicornc"), "-s", str(first.control_socket), "-c", "show workers", "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert len(json.loads(status.stdout)["workers"]) == 1
        with web_process(env, tmp_path, name="second") as second:
            assert second.control_socket.is_socket()
            assert second.control_socket != first.control_socket
        assert not second.control_socket.exists()
        assert first.control_socket.is_socket(), "stopping the second instance removed the first one's socket"
    assert not first.control_socket.exists()


def test_web_listens_where_deploy_tokens_bind_says(
    pg_runtime: Runtime, postgres_schema: str, tmp_path: Path, runtime_dir: Path
) -> None:
    env = web_environment(
        postgres_schema, tmp_path, runtime_dir, WEB_CONCURRENCY="1", DEPLOY_TOKENS_BIND="0.0.0.0"
    )
    with web_process(env, tmp_path) as web:
        assert listening_addresses(web.port) == {"00000000"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"DEPLOY_TOKENS_SECRET_KEY": ""}, "DEPLOY_TOKENS_SECRET_KEY is required with PostgreSQL"),
        ({"PORT": "eighty"}, "PORT must be a whole number"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY must be a whole number"),
        ({"DEPLOY_TOKENS_DATABASE_URL": "mysql://db/x"}, "DEPLOY_TOKENS_DATABASE_URL must start with"),
    ],
)
def test_a_configuration_error_stops_the_web_process_with_one_line(
    tmp_path: Path, runtime_dir: Path, setting: dict[str, str], message: str
) -> None:
    env = web_environment("unused", tmp_path, runtime_dir, **setting)
    done = subprocess.run(
        WEB_COMMAND, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("configuration error: ") and message in lines[0]
