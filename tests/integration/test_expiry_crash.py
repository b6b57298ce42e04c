"""Crash test of the documented window (deploy_tokens/expiry.py): real forking RQ workers SIGKILLed mid-send.

PostgreSQL, a real Redis (db 13) and an aiosmtpd sink in this process. The sink stores each message and
only then waits a little before its ``250``, so kills land while messages are in flight, including the
ambiguous moment after the relay has the message but before the sender learns so. After the kills the
lease runs out, a new scan (new job ids: abandoned STARTED jobs keep the old ones) and a final burst
worker finish the work. Then every due token must have exactly one ``Notified``, every due email must
have reached the sink, and duplicates (one Message-ID received twice) may only come from the window:
at most one per kill.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from redis import Redis
from rq import Queue
from rq.registry import FailedJobRegistry

from deploy_tokens.runtime import Runtime
from domain.clock import start_of_day
from domain.deploy_token import due_interval
from workers.jobs import QUEUE, RqDispatcher, run_expiry_scan

from ..conftest import World
from .conftest import REDIS_URL, SmtpSink, job_environment, running_sink

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]
DUE_TOKENS = 30
KILLS = 8
# Small mail jobs, so that the kills land in many of them (production's are MAILS_PER_JOB). A kill abandons
# its job: the job's emails not yet recorded wait for their lease and the recovery scan.
MAILS_PER_JOB = 3
LEASE_SECONDS = 2.0
SINK_DELAY = 0.06  # seconds between storing a message and answering 250
DAYS_OUT = (3, 6, 12, 20, 29, 41, 55)  # 7-, 30- and 60-day windows


def rq_executable() -> str:
    beside = Path(sys.executable).with_name("rq")
    found = str(beside) if beside.exists() else shutil.which("rq")
    assert found, "the rq command line is not installed"
    return found


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """Slower than the shared sink, so a worker can be killed between a message and its 250."""
    with running_sink(delay=SINK_DELAY) as started:
        yield started


def child_pids(pid: int) -> list[int]:
    """The live children of ``pid``, from /proc (the command name in ``stat`` may hold spaces or parens)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            children.append(int(entry.name))
    return children


class WorkerProcess:
    """``rq worker`` (the forking Worker) in a process group of its own.

    rq's work-horse calls ``os.setpgrp()`` right after the fork, so killing the worker's group alone
    leaves the horse running: it finishes its job as an orphan, and nothing crashes at all. A crash of the
    machine or container takes both, so ``kill`` stops the worker's group (no new horse can be forked),
    then SIGKILLs the horse's group and the worker's group.
    """

    def __init__(self, env: dict[str, str], log: IO[bytes], *extra: str) -> None:
        self.process = subprocess.Popen(
            [rq_executable(), "worker", "--url", REDIS_URL, *extra, QUEUE],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGSTOP)
        for horse in child_pids(self.process.pid):
            for kill in (os.killpg, os.kill):  # os.kill: a horse not yet in its own group
                with contextlib.suppress(ProcessLookupError):
                    kill(horse, signal.SIGKILL)
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)


@pytest.fixture
def spawned() -> Iterator[list[WorkerProcess]]:
    """Every worker a test starts; any still alive at the end (a failed test) is killed with its horse."""
    processes: list[WorkerProcess] = []
    yield processes
    for worker in processes:
        if worker.process.poll() is None:
            worker.kill()


def events_of(runtime: Runtime, token_id: int) -> list[str]:
    return [entry["event"] for entry in runtime.tokens.history(token_id)]


def test_sigkilled_workers_lose_no_email_and_duplicate_at_most_once_per_kill(
    live_runtime: Runtime,
    postgres_schema: str,
    sink: SmtpSink,
    redis: Redis,
    tmp_path: Path,
    spawned: list[WorkerProcess],
    record_property: Callable[[str, object], None],
) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find rq's work-horse")
    world = World(live_runtime)
    today = datetime.now(UTC).date()
    tokens: dict[int, str] = {}  # token id -> the Message-ID its email must carry
    for number in range(DUE_TOKENS):
        expires_on = today + timedelta(days=DAYS_OUT[number % len(DAYS_OUT)])
        token_id = live_runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=f"crash-{number}",
            scopes=["read_repository"],
            expires_at=expires_on,
        ).token.token_id
        interval = due_interval(start_of_day(expires_on), today)
        tokens[token_id] = f"<deploy-token-expiry.{token_id}.{expires_on:%Y%m%d}.{interval}d@127.0.0.1>"

    queue = Queue(QUEUE, connection=redis)
    report = live_runtime.expiry_scan.run(RqDispatcher(queue, "crash-1", mails_per_job=MAILS_PER_JOB))
    assert len(report.dispatched) == DUE_TOKENS
    assert queue.count == DUE_TOKENS // MAILS_PER_JOB

    env = {
        **os.environ,
        **job_environment(postgres_schema, tmp_path / "jobs", sink.url, lease_seconds=LEASE_SECONDS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    seed = int(os.environ.get("CRASH_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    pauses: list[float] = []
    with (tmp_path / "workers.log").open("wb") as log:
        while len(pauses) < KILLS and queue.count:
            seen = sink.handler.data_started
            worker = WorkerProcess(env, log)
            spawned.append(worker)
            started = time.monotonic()
            # Start-up takes a while: wait until it is into a send, then kill at a random moment from there
            # (in the sink's delay, while recording, in the next horse's start-up, claim or SMTP dialogue).
            while sink.handler.data_started == seen and time.monotonic() - started < 20:
                time.sleep(0.005)
            pauses.append(rng.uniform(0.0, 0.25))
            time.sleep(pauses[-1])
            worker.kill()
        kills = len(pauses)
        # Abandoned: still open and no longer queued (the killed horse's job, left STARTED).
        queued = {token_id for job in queue.get_jobs() for token_id, _ in job.args[0]}
        abandoned = {
            token_id
            for token_id in tokens
            if "Notified" not in events_of(live_runtime, token_id) and token_id not in queued
        }

        # Recovery: let the killed senders' leases lapse, scan again (new job ids), drain the queue.
        time.sleep(LEASE_SECONDS + 0.5)
        recovery = queue.enqueue(
            run_expiry_scan, "crash-recovery", job_id="expiry-scan-crash-recovery", job_timeout=300
        )
        final = WorkerProcess(env, log, "--burst")
        spawned.append(final)
        assert final.wait(timeout=120) == 0
    worker_log = (tmp_path / "workers.log").read_text(errors="replace")

    assert queue.count == 0
    assert FailedJobRegistry(queue=queue).count == 0, worker_log[-3000:]
    recovered = recovery.return_value(refresh=True)
    # The queued jobs ran before the recovery scan; it dispatched exactly the abandoned ones.
    assert recovered is not None and recovered["dispatched"] == len(abandoned), worker_log[-3000:]
    assert len(abandoned) <= kills * MAILS_PER_JOB
    reclaimed = 0
    for token_id, message_id in tokens.items():
        events = events_of(live_runtime, token_id)
        assert events.count("Notified") == 1, (token_id, events)
        [notified] = [e for e in live_runtime.tokens.history(token_id) if e["event"] == "Notified"]
        assert notified["changes"]["message_id"] == message_id
        reclaimed += events.count("NotificationClaimed") > 1
    received = sink.message_ids()
    assert set(received) == set(tokens.values())  # every due email arrived, nothing else did
    duplicates = sum(count - 1 for count in received.values())
    record_property("kills", kills)
    record_property("duplicates", duplicates)
    print(
        f"\ncrash test: seed={seed} kills={kills} (pauses {[round(p, 3) for p in pauses]}) "
        f"abandoned={len(abandoned)} re-claimed after lease={reclaimed} "
        f"deliveries={received.total()} distinct={len(received)} duplicates={duplicates}"
    )
    assert kills >= 1
    assert duplicates <= kills
    assert duplicates <= reclaimed  # a second copy needs a second claim, which needs a lapsed lease
