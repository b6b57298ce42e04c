"""behaviour [audit-streaming], crash test of the documented window: the production shape's streamer
(``deploy-tokens audit-streamer``, a real process on PostgreSQL) is SIGKILLed while the receiver holds a
delivery open, twice, and started again each time.

Afterwards every audit event has reached the receiver (nothing lost), in the log's order, and the only
events received twice are the two that were in flight at the kills, each with the same ``id`` and the same
bytes both times.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from deploy_tokens.runtime import Runtime
from infrastructure.settings import Settings

from ..conftest import POSTGRES_ONLY, TEST_SECRET, World
from .test_audit_streaming import Delivery, add_destination, all_audit_positions, receiving, settings

__all__ = ["settings"]  # the fixture: plain HTTP receivers on this machine

pytestmark = [pytest.mark.slow, POSTGRES_ONLY]

REPO = Path(__file__).resolve().parents[2]


def _streamer_env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    location = settings.database
    env.update(
        {
            "DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "streamer"),
            "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
            "DEPLOY_TOKENS_DATABASE_URL": f"postgresql://{location.user}@{location.host}:{location.port}"
            f"/{location.dbname}?schema={location.schema}",
            # Longer than a hold lasts: the kill, not a timeout, ends the held delivery.
            "DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT": "30",
            "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MIN": "0.05",
            "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX": "0.2",
            "DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE": "true",  # the receiver is plain HTTP on this machine
            "DEPLOY_TOKENS_LOG_LEVEL": "WARNING",
        }
    )
    return env


class Streamer:
    """The streamer process, started again if it exits by itself (as a process manager would: on a loaded
    machine its bounded first connection can fail); its stderr kept for the failure message."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "cli.main", "audit-streamer"],
                cwd=REPO,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def until(self, done: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, self.log.read_text()[-4000:]
            if self.process.poll() is not None:
                self.process = self._start()
            time.sleep(0.02)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def test_sigkill_in_the_middle_of_a_delivery_loses_nothing(runtime: Runtime, world: World, tmp_path: Path):
    for number in range(4):
        world.runtime.tokens.create_token(
            world.admin, "project", world.project, name=f"t{number}", scopes=["read_repository"]
        )
    held = threading.Event()
    holding: set[int] = set()

    def hold_each_once(delivery: Delivery) -> int | None:
        if delivery.id in holding:
            holding.discard(delivery.id)
            held.set()
            return None  # the request stays open, unanswered, until the streamer dies
        return 200

    env = _streamer_env(runtime.settings, tmp_path)
    with receiving(hold_each_once) as receiver:
        add_destination(world, receiver.url)
        expected = all_audit_positions(runtime)  # the destination's own creation is an audit event too
        kill_at = [expected[len(expected) // 3], expected[2 * len(expected) // 3]]
        holding.update(kill_at)
        for target in kill_at:
            held.clear()
            streamer = Streamer(env, tmp_path / "streamer.log")
            try:
                streamer.until(held.is_set)  # the receiver holds the delivery of ``target`` open
                assert receiver.all()[-1].id == target
            finally:
                streamer.kill()
        streamer = Streamer(env, tmp_path / "streamer.log")
        try:
            streamer.until(lambda: len(receiver.acknowledged()) == len(expected))
        finally:
            assert streamer.stop() == 0
    received = receiver.all()
    ids = [delivery.id for delivery in received]
    assert sorted(set(ids)) == expected, "nothing lost"
    first_receipts = list(dict.fromkeys(ids))
    assert first_receipts == expected, "in the log's order"
    assert all(later >= earlier for earlier, later in itertools.pairwise(ids)), "never back"
    twice = {event_id: count for event_id, count in Counter(ids).items() if count > 1}
    assert twice == dict.fromkeys(kill_at, 2), "duplicates only of the event in flight at each kill"
    for event_id in kill_at:
        copies = [delivery.body for delivery in received if delivery.id == event_id]
        assert copies[0] == copies[1], "the same event, the same bytes, the same id"
