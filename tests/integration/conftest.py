"""Real servers for the integration tests: an aiosmtpd sink on loopback that records every message
(``sink``, or ``running_sink`` for a slow one), a dedicated Redis database that is never db 0 (``redis``), and
a PostgreSQL runtime on the system clock for jobs that open their own (``live_runtime``)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

import workers.jobs
from deploy_tokens.runtime import Runtime

from ..conftest import POSTGRES_URL, TEST_SECRET, make_settings
from ..ports import free_port

# One Redis database per pytest-xdist worker (10, 11, ... by default): each test flushes its own, never
# another's. Two suites running at once on one machine pick different bases (DEPLOY_TOKENS_TEST_REDIS_DB).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
_BASE = int(os.environ.get("DEPLOY_TOKENS_TEST_REDIS_DB", "10"))
REDIS_DB = _BASE + (int(_WORKER.removeprefix("gw")) if _WORKER else 0)
assert 1 <= REDIS_DB <= 15, (
    "Redis has 16 databases and db 0 is never flushed: check the base and worker count"
)
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])

    @property
    def subject(self) -> str:
        # CPython folds a subject longer than 78 characters right after "Subject:"; unfolded, the value
        # then starts with the folding space, which mail clients drop when they display it.
        return str(self.message["Subject"]).strip()

    @property
    def to(self) -> list[str]:
        return sorted(address.addr_spec for address in self.message["To"].addresses)


@dataclass
class RecordingHandler:
    """Accepts every message. The message is stored *before* the optional delay and the ``250`` reply,
    like a relay that commits to its queue and then answers: a client killed during the delay has
    delivered the message without ever learning so (the documented crash window)."""

    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    data_started: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        with self._lock:
            self.data_started += 1
            self.received.append(Received(envelope.mail_from, tuple(envelope.rcpt_tos), parsed))
        if self.delay:
            await asyncio.sleep(self.delay)
        return "250 OK"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)


class SmtpSink:
    """An aiosmtpd server on 127.0.0.1 that can be stopped and started again on the same port."""

    def __init__(self, *, delay: float = 0.0, port: int | None = None) -> None:
        self.handler = RecordingHandler(delay=delay)
        self.port = port or free_port()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> SmtpSink:
        if self._controller is None:
            controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
            controller.start()
            self._controller = controller
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def received(self) -> list[Received]:
        return self.handler.snapshot()

    def message_ids(self) -> Counter[str]:
        return Counter(item.message_id for item in self.received)

    def by_message_id(self) -> dict[str, Received]:
        return {item.message_id: item for item in self.received}


@contextmanager
def running_sink(*, delay: float = 0.0) -> Iterator[SmtpSink]:
    sink = SmtpSink(delay=delay).start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with running_sink() as started:
        yield started


@pytest.fixture
def redis() -> Iterator[Redis]:
    """The dedicated Redis database, empty before and after. Missing Redis skips, but fails under CI."""
    connection = Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        connection.ping()
    except RedisConnectionError as error:
        connection.close()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis is not reachable at {REDIS_URL}: {error}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    assert connection.connection_pool.connection_kwargs["db"] == REDIS_DB  # never flush db 0
    connection.flushdb()
    # rq's work() leaves its own SIGINT/SIGTERM handlers installed after a burst.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield connection
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        connection.flushdb()
        connection.close()


@pytest.fixture
def live_runtime(tmp_path: Path, postgres_schema: str) -> Iterator[Runtime]:
    """PostgreSQL on the system clock: RQ jobs and worker processes open their own runtime on it."""
    with Runtime.open(make_settings("postgres", tmp_path, postgres_schema)) as opened:
        yield opened


def job_environment(
    schema: str, data_dir: Path, smtp_url: str, *, lease_seconds: float | None = None
) -> dict[str, str]:
    """What a job process reads (``Settings.from_env``): the test's PostgreSQL schema, sink and Redis db."""
    env = {
        "DEPLOY_TOKENS_DATABASE_URL": f"{POSTGRES_URL}?schema={schema}",
        "DEPLOY_TOKENS_SECRET_KEY": TEST_SECRET,
        "DEPLOY_TOKENS_SMTP_URL": smtp_url,
        "DEPLOY_TOKENS_REDIS_URL": REDIS_URL,
        "DEPLOY_TOKENS_DATA_DIR": str(data_dir),
    }
    if lease_seconds is not None:
        env["DEPLOY_TOKENS_NOTIFY_LEASE_SECONDS"] = str(lease_seconds)
    return env


def reset_job_runtime() -> None:
    """``job_runtime()`` caches one Runtime per pid: close it so the next test opens its own."""
    cached = workers.jobs._runtime
    workers.jobs._runtime = None
    if cached is not None and cached[0] == os.getpid():
        cached[1].close()
