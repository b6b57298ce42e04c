"""behaviour [audit-streaming]: the streamer against a real HTTP receiver (a threaded ``http.server`` in this
process) that acknowledges, fails, hangs and recovers.

Each event is delivered in the log's order, signed, in the audit API's shape with its ``id``; a failure or a
timeout is retried until acknowledged, and nothing after it is sent before; a hanging destination delays no
other; a deleted destination gets nothing more; a restarted streamer resumes at the stored position.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from api.audit import AuditEventSchema
from cli.serve import embedded_threads
from deploy_tokens.audit_streaming import AuditStreamer, stream_figures
from deploy_tokens.runtime import Runtime
from domain.audit_streaming import is_public_address
from infrastructure.audit_delivery import Attempt, DeliveryPolicy, _owner_died, new_owner, post_event
from infrastructure.settings import ConfigurationError, Settings
from projections.audit_queries import AuditQuery, audit_events

from ..conftest import World


# Short bounds, so that failures, hangs and retries take a fraction of a second.
@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers here are plain HTTP on this machine: what ``DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE``
    allows (tests/unit holds the refusals without it, and ``test_delivery_refuses_local_addresses`` below)."""
    return replace(settings, audit_stream=replace(settings.audit_stream, allow_insecure=True))


POLICY = DeliveryPolicy(timeout=0.4, first_retry=0.02, max_retry=0.1, allow_insecure=True)
POLL = 0.02


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    answered: int | None  # None: the receiver hung (no answer within the client's timeout)

    @property
    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def id(self) -> int:
        return int(self.document["id"])


# What the receiver does with a request: answer this status, or hang (None) until released.
Behaviour = Callable[["Delivery"], int | None]


@dataclass
class Receiver:
    """A real HTTP server recording every request; ``behaviour`` decides each answer."""

    behaviour: Behaviour = lambda delivery: 200
    requests: list[Delivery] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/intake"

    def acknowledged(self) -> list[Delivery]:
        with self.lock:
            return [delivery for delivery in self.requests if delivery.answered and delivery.answered < 300]

    def all(self) -> list[Delivery]:
        with self.lock:
            return list(self.requests)

    def handle(self, body: bytes, headers: dict[str, str]) -> int | None:
        delivery = Delivery(body, headers, None)
        with self.lock:  # recorded on arrival: a request held open counts as received
            self.requests.append(delivery)
        status = self.behaviour(delivery)
        delivery.answered = status
        if status is None:
            self.release.wait(10)
        return status


@contextmanager
def receiving(behaviour: Behaviour | None = None) -> Iterator[Receiver]:
    receiver = Receiver() if behaviour is None else Receiver(behaviour)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = receiver.handle(body, dict(self.headers.items()))
            if status is None:
                return  # hung: the client gave up long ago
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that went away while its request was held (a killed streamer)

    server = Server(("127.0.0.1", 0), Handler)
    receiver.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def streaming(runtime: Runtime, policy: DeliveryPolicy = POLICY) -> Iterator[AuditStreamer]:
    streamer = runtime.audit_streamer(poll_interval=POLL, policy=policy)
    stop = threading.Event()
    thread = threading.Thread(target=streamer.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        yield streamer
    finally:
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()


def eventually(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        time.sleep(0.01)


def all_audit_positions(runtime: Runtime) -> list[int]:
    return [record.position for record in audit_events(runtime.db, AuditQuery(limit=None))]


def add_destination(
    world: World, url: str, *, name: str = "siem", start: str = "beginning"
) -> tuple[int, str]:
    created = world.runtime.audit_streaming().create_destination(
        world.admin, name=name, destination_url=url, start=start
    )
    assert created.verification_token is not None
    return created.id, created.verification_token


def create_token(world: World, name: str = "t") -> None:
    world.runtime.tokens.create_token(
        world.admin, "project", world.project, name=name, scopes=["read_repository"]
    )


def test_every_event_is_delivered_in_order_signed_in_the_audit_api_shape(runtime: Runtime, world: World):
    with receiving() as receiver:
        _, token = add_destination(world, receiver.url)
        create_token(world)
        expected = all_audit_positions(runtime)
        with streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(expected))
    delivered = receiver.all()
    assert [delivery.id for delivery in delivered] == expected, "each once, in the log's order, from event 0"
    by_position = {record.position: record for record in audit_events(runtime.db, AuditQuery(limit=None))}
    for delivery in delivered:
        document = delivery.document
        assert document.pop("id") == document["position"]
        assert document == AuditEventSchema().dump(by_position[delivery.id].__dict__), "the audit API's shape"
        headers = delivery.headers
        assert headers["X-Gitlab-Event-Streaming-Token"] == token
        assert headers["X-Gitlab-Audit-Event-Type"] == document["event_type"]
        assert headers["X-Deploy-Tokens-Audit-Event-Id"] == str(delivery.id)
        assert headers["Content-Type"] == "application/json"
        expected_signature = hmac.new(token.encode(), delivery.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Deploy-Tokens-Signature"], f"sha256={expected_signature}")
    figures = stream_figures(runtime.db)
    assert [(f.lag, f.delivered, f.failures, f.position) for f in figures] == [
        (0, len(expected), 0, expected[-1])
    ]


def test_start_now_delivers_only_what_follows(runtime: Runtime, world: World):
    with receiving() as receiver:
        add_destination(world, receiver.url, start="now")
        before = all_audit_positions(runtime)
        create_token(world)
        after = [position for position in all_audit_positions(runtime) if position not in before]
        assert after
        with streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(after))
            time.sleep(5 * POLL)  # and nothing else arrives
    assert [delivery.id for delivery in receiver.all()] == after


def test_failures_and_hangs_are_retried_until_acknowledged_in_order(runtime: Runtime, world: World):
    """500, 503, a hang longer than the timeout, then 200: the same event (same id) four times; nothing after
    it is sent before it is acknowledged; the failed attempts are counted."""
    answers = iter([500, 503, None])

    def flaky_on_the_third(delivery: Delivery) -> int | None:
        return next(answers, 200) if delivery.id == held else 200

    with receiving(flaky_on_the_third) as receiver:
        add_destination(world, receiver.url)
        create_token(world)
        expected = all_audit_positions(runtime)
        held = expected[2]
        started = time.monotonic()
        with streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(expected))
        assert time.monotonic() - started >= POLICY.timeout, "the hang was waited out, not skipped"
    ids = [delivery.id for delivery in receiver.all()]
    assert ids == [*expected[:2], held, held, held, held, *expected[3:]]
    assert [d.answered for d in receiver.all()][2:6] == [500, 503, None, 200]
    (figure,) = stream_figures(runtime.db)
    assert (figure.failures, figure.delivered, figure.lag) == (3, len(expected), 0)


def test_a_hanging_destination_delays_no_other(runtime: Runtime, world: World):
    slow_policy = DeliveryPolicy(timeout=5.0, first_retry=0.02, max_retry=0.1, allow_insecure=True)
    with receiving(lambda delivery: None) as hanging, receiving() as healthy:
        add_destination(world, hanging.url, name="stuck")
        add_destination(world, healthy.url, name="fine")
        create_token(world)
        expected = all_audit_positions(runtime)
        with streaming(runtime, slow_policy):
            started = time.monotonic()
            eventually(lambda: len(healthy.acknowledged()) == len(expected), timeout=slow_policy.timeout)
            took = time.monotonic() - started
            assert len(hanging.all()) == 1, "the stuck destination is still waiting on its first event"
            hanging.release.set()
    assert took < slow_policy.timeout / 2, f"the healthy destination waited {took:.2f} s"
    assert [delivery.id for delivery in healthy.all()] == expected


def test_deleting_a_destination_stops_its_deliveries(runtime: Runtime, world: World):
    with receiving() as receiver:
        destination_id, _ = add_destination(world, receiver.url)
        expected = all_audit_positions(runtime)
        with streaming(runtime) as streamer:
            eventually(lambda: len(receiver.acknowledged()) == len(expected))
            runtime.audit_streaming().delete_destination(world.admin, destination_id)
            eventually(lambda: destination_id not in streamer.workers)
            create_token(world)
            time.sleep(10 * POLL)
    assert [delivery.id for delivery in receiver.all()] == expected, "nothing after the deletion"
    assert stream_figures(runtime.db) == [], "a deleted destination leaves /metrics"


def test_a_restarted_streamer_resumes_at_the_stored_position(runtime: Runtime, world: World):
    with receiving() as receiver:
        add_destination(world, receiver.url)
        first = all_audit_positions(runtime)
        with streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(first))
        create_token(world)
        everything = all_audit_positions(runtime)
        with streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(everything))
            time.sleep(5 * POLL)
    assert [delivery.id for delivery in receiver.all()] == everything, "no event twice, none missed"


def test_two_streamers_deliver_each_event_once(runtime: Runtime, world: World):
    """A second streamer (two processes, or the embedded one beside a ``streamer``) is safe: one lease per
    destination, so each event still arrives once and in order."""
    with receiving() as receiver:
        add_destination(world, receiver.url)
        create_token(world)
        expected = all_audit_positions(runtime)
        with streaming(runtime), streaming(runtime):
            eventually(lambda: len(receiver.acknowledged()) == len(expected))
            time.sleep(5 * POLL)
    assert [delivery.id for delivery in receiver.all()] == expected


@pytest.mark.parametrize("answer", [301, 404, 0])
def test_redirects_and_refusals_are_failures(runtime: Runtime, world: World, answer: int):
    """A 3xx is not followed and a 4xx is not an acknowledgement; a closed port is a failed attempt too."""
    with receiving(lambda delivery: answer if len(receiver.all()) <= 2 else 200) as receiver:
        url = receiver.url
        if answer == 0:  # nothing listens there: connection refused, then the receiver appears
            server = receiver.server
            assert server is not None
            url = url.replace(str(server.server_address[1]), "1")
        add_destination(world, url)
        expected = all_audit_positions(runtime)
        with streaming(runtime):
            if answer:
                eventually(lambda: len(receiver.acknowledged()) == len(expected))
            else:
                eventually(lambda: stream_figures(runtime.db)[0].failures >= 2)
    if answer:
        assert [d.answered for d in receiver.all()][:3] == [answer, answer, 200]
        assert receiver.all()[0].id == receiver.all()[2].id == expected[0]
    else:
        assert receiver.all() == []


def test_the_embedded_process_streams(runtime: Runtime, world: World):
    """``deploy-tokens serve`` (make run) runs the streamer beside the API: its thread delivers."""
    (follow,) = [target for name, target in embedded_threads(runtime) if name == "audit-streamer"]
    with receiving() as receiver:
        add_destination(world, receiver.url)
        expected = all_audit_positions(runtime)
        stop = threading.Event()
        thread = threading.Thread(target=follow, args=(stop,), daemon=True)
        thread.start()
        try:
            eventually(lambda: len(receiver.acknowledged()) == len(expected))
        finally:
            stop.set()
            thread.join(timeout=10)
    assert [delivery.id for delivery in receiver.all()] == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT", "0"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT", "nan"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT", "ten"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MIN", "-1"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX", "inf"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE", "yes"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE", "TRUE"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE", "true\x00"),
        ("DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE", "\udcff"),
    ],
)
def test_malformed_streaming_settings_name_the_variable(tmp_path: Path, variable: str, value: str):
    with pytest.raises(ConfigurationError, match=variable):
        Settings.from_env({"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), variable: value})


def test_streaming_settings_are_read(tmp_path: Path):
    env = {
        "DEPLOY_TOKENS_DATA_DIR": str(tmp_path),
        "DEPLOY_TOKENS_AUDIT_STREAM_TIMEOUT": "2.5",
        "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MIN": "0.5",
        "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX": "60",
    }
    assert Settings.from_env(env).audit_stream == DeliveryPolicy(timeout=2.5, first_retry=0.5, max_retry=60)
    assert Settings.from_env({"DEPLOY_TOKENS_DATA_DIR": str(tmp_path)}).audit_stream == DeliveryPolicy()
    insecure = {**env, "DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE": "true"}
    assert Settings.from_env(insecure).audit_stream.allow_insecure is True
    assert (
        Settings.from_env(
            {**env, "DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE": ""}
        ).audit_stream.allow_insecure
        is False
    )
    assert Settings.from_env(
        {**insecure, "DEPLOY_TOKENS_AUDIT_STREAM_ALLOW_INSECURE": "false"}
    ).audit_stream == (DeliveryPolicy(timeout=2.5, first_retry=0.5, max_retry=60))
    with pytest.raises(ConfigurationError, match="RETRY_MAX must not be less"):
        Settings.from_env({**env, "DEPLOY_TOKENS_AUDIT_STREAM_RETRY_MAX": "0.1"})


def test_delivery_refuses_local_addresses_and_plain_http_unless_allowed():
    """Checked where the name is resolved, at every attempt: a public-looking name that resolves to this
    machine (or a DNS answer that changed since the destination was created) reaches nothing."""
    public = is_public_address
    with receiving() as receiver:
        port = receiver.url.split(":")[2].split("/")[0]
        for url in (f"https://localhost:{port}/intake", f"https://127.0.0.1:{port}/intake"):
            attempt = post_event(url, b"{}", {}, timeout=2, allowed=public)
            assert attempt == Attempt(False, error="refused: the host resolves to a local or private address")
        refused = post_event(receiver.url, b"{}", {}, timeout=2, allowed=public)
        assert refused == Attempt(False, error="refused: not https")
        assert receiver.all() == []
        assert post_event(receiver.url, b"{}", {}, timeout=2, allowed=None).acknowledged
        [delivered] = receiver.all()
        assert delivered.headers["Host"] == f"127.0.0.1:{port}"  # the URL's host and port, not the address's


def test_a_resolver_that_does_not_answer_counts_against_the_deadline(monkeypatch: pytest.MonkeyPatch):
    """The system resolver has no timeout: one that hangs still ends the attempt when its deadline passes."""
    released = threading.Event()

    def hanging(*_: Any, **__: Any) -> Any:
        released.wait(10)
        raise OSError("released")

    monkeypatch.setattr("infrastructure.audit_delivery.socket.getaddrinfo", hanging)
    started = time.monotonic()
    attempt = post_event("https://siem.example.com/in", b"{}", {}, timeout=0.3, allowed=is_public_address)
    released.set()
    assert attempt == Attempt(False, error="timed out after 0.3 s")
    assert time.monotonic() - started < 2


def test_a_dead_lease_holder_is_recognised_only_in_its_own_process_space():
    """Containers may share a host name: a process id names a process only in the same boot and PID
    namespace, so only there is a lease taken over at once (elsewhere it runs out)."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = int(finished.stdout)
    here = new_owner().split(":")
    assert _owner_died(f"{here[0]}:{dead}:00000000:{here[3]}")
    assert not _owner_died(f"{here[0]}:{os.getpid()}:00000000:{here[3]}")  # alive: this very process
    assert not _owner_died(f"{here[0]}:{dead}:00000000:another-boot/4026531836")
    assert not _owner_died(f"{here[0]}:{dead}:00000000")  # an owner named before process spaces were
    assert not _owner_died(f"elsewhere:{dead}:00000000:{here[3]}")
