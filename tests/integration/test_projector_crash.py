"""Crash test: SIGKILL the projector at random points during catch-up, many times; restart it; the read
models then equal a from-scratch rebuild, row for row (exactly-once by transactional tracking)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import DeployToken
from infrastructure.db import Database
from infrastructure.settings import Settings

from ..conftest import TEST_SECRET, World, save_unprojected

KILLS = 12
TOKENS = 400


def _fill_log(runtime: Runtime) -> None:
    """Many events, written straight to the store (as other processes would) without projecting them."""
    world = World(runtime)
    now = runtime.clock.now()
    actor = Actor.system("crash-test")
    batch = []
    for number in range(1, TOKENS + 1):
        token = DeployToken.issue(
            token_id=number,
            name=f"t{number}",
            username=None,
            holder_kind="project",
            holder_id=world.project,
            scopes=["read_repository", "read_registry"],
            expires_at=None,
            digest=f"{number:064x}",
            actor=actor,
            now=now,
        )
        if number % 3 == 0:
            token.revoke(actor=actor, now=now)
        if number % 5 == 0:
            token.narrow_scopes(["read_registry"], actor=actor, now=now)
        batch.append(token)
        if len(batch) == 100:
            save_unprojected(runtime, *batch)
            batch = []
    if batch:
        save_unprojected(runtime, *batch)


def _snapshot(db: Database, runtime: Runtime) -> dict[str, list[tuple[object, ...]]]:
    tables = {table for projection in runtime.projector.projections.values() for table in projection.tables}
    rows = {}
    with db.read() as cursor:
        for table in sorted(tables):
            rows[table] = sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
    return rows


def _reset(runtime: Runtime) -> None:
    with runtime.db.transaction() as cursor:
        for projection in runtime.projector.projections.values():
            for table in projection.tables:
                cursor.execute(f"DELETE FROM {table}")
        cursor.execute("UPDATE projection_tracking SET position = 0")


def _projector_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    env["DEPLOY_TOKENS_DATA_DIR"] = str(tmp_path / "data")
    env["DEPLOY_TOKENS_SECRET_KEY"] = TEST_SECRET
    env["DEPLOY_TOKENS_PROJECTION_BATCH"] = "7"
    location = settings.database
    if location.dialect == "postgresql":
        env["DEPLOY_TOKENS_DATABASE_URL"] = (
            f"postgresql://{location.user}@{location.host}:{location.port}/{location.dbname}?schema={location.schema}"
        )
    return env


def _min_position(runtime: Runtime) -> int:
    return min(runtime.projector.positions().values())


@pytest.mark.slow
def test_sigkilled_projector_leaves_read_models_equal_to_a_rebuild(runtime: Runtime, tmp_path: Path):
    _fill_log(runtime)
    _reset(runtime)
    env = _projector_env(runtime.settings, tmp_path)
    head = runtime.store.head()
    # Kill points spread over the catch-up: each kill lands wherever the projector is once it has
    # passed the target, usually in the middle of a batch transaction.
    targets = sorted(random.Random(20261125).sample(range(1, head - 50), KILLS))
    kills = 0
    for target in [*targets, None]:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "projector"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        goal = head if target is None else target
        while _min_position(runtime) < goal and time.monotonic() < deadline:
            time.sleep(0.005)
        if target is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        else:
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
    assert kills == KILLS
    assert _min_position(runtime) == head
    survived = _snapshot(runtime.db, runtime)
    for name in runtime.projector.projections:
        runtime.projector.rebuild(name)
    rebuilt = _snapshot(runtime.db, runtime)
    assert survived == rebuilt
    assert len(survived["cred_tokens"]) == TOKENS
