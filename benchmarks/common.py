"""Shared set-up for benchmarks: throwaway runtimes on SQLite or a private PostgreSQL schema."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import Clock
from infrastructure.settings import DatabaseLocation, Settings

POSTGRES_URL = os.environ.get("DEPLOY_TOKENS_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")
SECRET = "benchmark-secret-key-that-is-long-enough-0123456789"


@contextmanager
def bench_environment(backend: str) -> Iterator[dict[str, str]]:
    """A throwaway store's settings as environment variables (also what a measuring process is given): a
    temporary folder (SQLite) or a private PostgreSQL schema, dropped afterwards."""
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as folder:
        env = {"DEPLOY_TOKENS_DATA_DIR": str(Path(folder) / "data"), "DEPLOY_TOKENS_SECRET_KEY": SECRET}
        schema = None
        if backend == "postgres":
            schema = f"bench_{secrets.token_hex(4)}"
            env["DEPLOY_TOKENS_DATABASE_URL"] = f"{POSTGRES_URL}?schema={schema}"
        try:
            yield env
        finally:
            if schema:
                with psycopg.connect(
                    DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True
                ) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextmanager
def bench_settings(backend: str) -> Iterator[Settings]:
    with bench_environment(backend) as env:
        yield Settings.from_env(env)


@contextmanager
def bench_runtime(backend: str, clock: Clock | None = None) -> Iterator[Runtime]:
    with bench_settings(backend) as settings, Runtime.open(settings, clock=clock) as runtime:
        yield runtime


def admin_world(runtime: Runtime) -> tuple[Actor, int, int]:
    """An admin, a group and a project in it."""
    _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
    admin = runtime.access.authenticate(issued.value).actor
    group = runtime.directory.create_group(admin, name="Bench", path="bench")
    project = runtime.directory.create_project(admin, name="App", namespace_id=group)
    return admin, group, project


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result, sort_keys=False), flush=True)
