"""Sending a batch of expiry emails over one SMTP connection (behaviour [notifications]): what happens when the
connection drops, the server goes away, a claim's lease runs short or a record cannot be written, in the middle
of a batch. Real SMTP (aiosmtpd on loopback, told when to misbehave), both backends.

In every case the emails the server accepted are recorded as sent (``Notified``), the others stay open and go
out on a later run, and no email reaches the server twice, except the one documented window (accepted, not
yet recorded), which a crash or a failed record can leave for one email only.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, cast

import pytest
from aiosmtpd.controller import Controller
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification, OperationalError
from redis import Redis
from rq import Queue, SimpleWorker

from deploy_tokens.expiry_sender import CLAIM_CHUNK, ExpiryNotifier, SendOutcome
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from domain.deploy_token import deploy_token_uuid
from infrastructure.db import Cursor
from infrastructure.mail import SmtpMailer
from infrastructure.scan_runs import ScanRuns
from infrastructure.stream_batches import load_aggregates
from workers.jobs import (
    QUEUE,
    InlineDispatcher,
    RqDispatcher,
    UndeliveredEmails,
    mail_job_id,
    send_expiry_email,
)

from ..conftest import World
from ..ports import free_port
from .conftest import job_environment, reset_job_runtime


@dataclass
class FlakyHandler:
    """Stores each message and answers 250, except for the DATA commands it is told to misbehave on (counted
    from 1 over the server's life): ``cut_in_data`` closes the connection before storing or answering (the
    client cannot tell whether the message arrived), ``close_after`` closes it right after the 250 (an idle
    connection dropped by the server), ``stop_after`` also stops the whole server (nothing listens any more).
    Each message is passed to ``on_stored`` once stored."""

    cut_in_data: set[int] = field(default_factory=set)
    close_after: set[int] = field(default_factory=set)
    stop_after: int | None = None
    refuse: frozenset[str] = frozenset()
    on_stored: Any = None
    received: list[EmailMessage] = field(default_factory=list)
    data_calls: int = 0
    connections: int = 0
    listener: asyncio.AbstractServer | None = None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.connections += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        number = self.data_calls
        if number in self.cut_in_data:
            server.transport.close()
            return "421 connection cut"  # never reaches the client
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.received.append(parsed)
        if self.on_stored is not None:
            self.on_stored(parsed)
        if number in self.close_after or number == self.stop_after:
            # After the 250 is written: asyncio flushes what is buffered before it closes.
            asyncio.get_running_loop().call_soon(server.transport.close)
        if number == self.stop_after and self.listener is not None:
            self.listener.close()  # at once: the next connection attempt is refused
        return "250 OK"

    def message_ids(self) -> Counter[str]:
        return Counter(str(message["Message-ID"]) for message in self.received)


class FlakySink:
    def __init__(self, handler: FlakyHandler) -> None:
        self.handler = handler
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}?timeout=5"
        self.controllers: list[Controller] = []

    def start(self) -> FlakySink:
        """Listen (again) on the sink's port."""
        controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        controller.start()
        self.controllers.append(controller)
        self.handler.listener = controller.server
        return self

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()
        self.controllers = []


@pytest.fixture
def flaky() -> Iterator[list[FlakySink]]:
    sinks: list[FlakySink] = []
    yield sinks
    for sink in sinks:
        sink.stop()


def start_sink(sinks: list[FlakySink], handler: FlakyHandler) -> FlakySink:
    sink = FlakySink(handler).start()
    sinks.append(sink)
    return sink


def due_tokens(world: World, clock: FixedClock, count: int, *, days: int = 6) -> list[int]:
    return [
        world.runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=f"batch-{n}",
            scopes=["read_repository"],
            expires_at=clock.now().date() + timedelta(days=days),
        ).token.token_id
        for n in range(count)
    ]


def events(runtime: Runtime, token_id: int) -> list[str]:
    return [entry["event"] for entry in runtime.tokens.history(token_id)]


def scan(runtime: Runtime, url: str) -> list[tuple[int, int, str]]:
    dispatcher = InlineDispatcher(runtime.expiry_notifier(SmtpMailer(url)))
    runtime.expiry_scan.run(dispatcher)
    return dispatcher.outcomes


def token_of(message_id: str) -> int:
    return int(message_id.split(".")[1])  # <deploy-token-expiry.{token id}.{date}.{interval}d@host>


# One connection, reopened when the server drops it -----------------------------------------------------


def test_a_batch_goes_over_one_connection_and_a_dropped_idle_connection_is_reopened_unnoticed(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    tokens = due_tokens(world, clock, 8)
    sink = start_sink(flaky, FlakyHandler(close_after={3, 6}))  # the server hangs up after the 3rd and 6th

    outcomes = scan(world.runtime, sink.url)

    assert [outcome for _, _, outcome in outcomes] == ["sent"] * 8
    assert sink.handler.connections == 3  # one, and one more after each drop
    assert sorted(token_of(mid) for mid in sink.handler.message_ids()) == tokens
    assert set(sink.handler.message_ids().values()) == {1}
    for token_id in tokens:
        assert events(world.runtime, token_id)[2:] == ["NotificationDue", "NotificationClaimed", "Notified"]


class StatementCount:
    """A cursor that counts the statements sent through it."""

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cursor, name)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        self.statements += 1
        return self.cursor.execute(sql, params)


def test_a_batchs_saves_on_every_thread_are_left_to_its_one_catch_up(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    """Intents, claims and ``Notified`` records (written on a thread of their own), page after page, cost their
    transactions nothing for the read models, not even a look at where they stand: the read models catch up
    with them once a page's emails are sent, and at the end of the scan."""
    runtime = world.runtime
    tokens = due_tokens(world, clock, 5)
    sink = start_sink(flaky, FlakyHandler())
    worked_in_save: list[str] = []

    def watching(cursor: Cursor, written: Sequence[Notification]) -> None:
        counting = StatementCount(cursor)
        runtime.projector.project_in_save(cast(Cursor, counting), written)
        if counting.statements:
            worked_in_save.append(threading.current_thread().name)

    runtime.store.run_in_save(watching)
    try:
        dispatcher = InlineDispatcher(runtime.expiry_notifier(SmtpMailer(sink.url)))
        runtime.expiry_scan.run(dispatcher, page_size=2)  # pages after the first one's emails defer as well
        assert [outcome for _, _, outcome in dispatcher.outcomes] == ["sent"] * 5
    finally:
        runtime.store.run_in_save(runtime.projector.project_in_save)

    assert worked_in_save == []
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())
    for token_id in tokens:
        assert events(runtime, token_id)[2:] == ["NotificationDue", "NotificationClaimed", "Notified"]


def test_a_connection_cut_during_data_keeps_that_claim_and_the_rest_of_the_batch_goes_on(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    tokens = due_tokens(world, clock, 6)
    sink = start_sink(flaky, FlakyHandler(cut_in_data={3}))  # the 3rd message: did it arrive? nobody knows

    outcomes = scan(world.runtime, sink.url)

    cut = tokens[2]
    assert [outcome for token_id, _, outcome in outcomes if token_id != cut] == ["sent"] * 5
    [(_, _, unknown)] = [o for o in outcomes if o[0] == cut]
    assert unknown.startswith("failed: SMTP conversation")
    # Accepted before and after the cut: recorded. The cut one may have been delivered, so its claim is kept
    # (no NotificationFailed): nobody resends it before the lease ends.
    for token_id in tokens:
        expected = ["NotificationDue", "NotificationClaimed"] + (["Notified"] if token_id != cut else [])
        assert events(world.runtime, token_id)[2:] == expected
    assert scan(world.runtime, sink.url) == [(cut, 7, SendOutcome.CLAIMED_ELSEWHERE.value)]

    clock.set(clock.now() + world.runtime.expiry_notifier().lease + timedelta(seconds=1))
    assert scan(world.runtime, sink.url) == [(cut, 7, "sent")]
    assert sorted(token_of(mid) for mid in sink.handler.message_ids()) == tokens  # none twice
    assert set(sink.handler.message_ids().values()) == {1}
    assert events(world.runtime, cut).count("Notified") == 1


def test_the_server_going_away_mid_batch_records_what_it_accepted_and_gives_the_rest_back(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    tokens = due_tokens(world, clock, 7)
    handler = FlakyHandler(stop_after=3)
    sink = start_sink(flaky, handler)

    outcomes = scan(world.runtime, sink.url)

    accepted, rest = tokens[:3], tokens[3:]
    assert [o for o in outcomes if o[0] in accepted] == [(t, 7, "sent") for t in accepted]
    assert all(outcome.startswith("failed: cannot connect") for t, _, outcome in outcomes if t in rest)
    for token_id in accepted:
        assert events(world.runtime, token_id)[-1] == "Notified"
    for token_id in rest:  # given back at once: the next run need not wait for the lease
        assert events(world.runtime, token_id)[-2:] == ["NotificationClaimed", "NotificationFailed"]
    # Two connection attempts failed in a row: the sender gave up on the batch instead of trying each email.
    assert handler.data_calls == 3

    sink.start()  # back on the same port
    assert [o for _, _, o in scan(world.runtime, sink.url)] == ["sent"] * len(rest)
    assert sorted(token_of(mid) for mid in handler.message_ids()) == tokens
    assert set(handler.message_ids().values()) == {1}


def test_a_refused_recipient_fails_that_email_only(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    outsider = world.users["outsider"]
    personal = world.runtime.directory.create_project(outsider, name="Mine")  # mails outsider only
    before = due_tokens(world, clock, 2)
    refused = world.runtime.tokens.create_token(
        outsider,
        "project",
        personal,
        name="theirs",
        scopes=["read_repository"],
        expires_at=clock.now().date() + timedelta(days=6),
    ).token.token_id
    after = due_tokens(world, clock, 2)
    sink = start_sink(flaky, FlakyHandler(refuse=frozenset({"outsider@example.com"})))

    outcomes = dict(((token_id, outcome) for token_id, _, outcome in scan(world.runtime, sink.url)))

    assert outcomes[refused].startswith("failed: SMTP server") and "550" in outcomes[refused]
    assert [outcomes[t] for t in (*before, *after)] == ["sent"] * 4
    assert events(world.runtime, refused)[-2:] == ["NotificationClaimed", "NotificationFailed"]


# Leases and records -------------------------------------------------------------------------------------


def test_a_claim_is_not_used_once_half_its_lease_is_gone_it_is_given_back_and_claimed_again(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    tokens = due_tokens(world, clock, 5)
    # Each accepted message takes 30 s of the test's clock; a lease is 100 s, used while 50 s are left.
    sink = start_sink(flaky, FlakyHandler(on_stored=lambda _: clock.set(clock.now() + timedelta(seconds=30))))
    notifier = world.runtime.expiry_notifier(SmtpMailer(sink.url))
    notifier.lease = timedelta(seconds=100)

    results = notifier.send_many([(token_id, 7) for token_id in tokens])

    assert [r.outcome for r in results] == [SendOutcome.SENT] * 5
    assert set(sink.handler.message_ids().values()) == {1} and len(sink.handler.received) == 5
    claims = [events(world.runtime, t).count("NotificationClaimed") for t in tokens]
    assert claims == [1, 1, 2, 2, 3]  # two emails per fresh lease; the rest given back and claimed afresh
    for token_id in tokens:
        history = events(world.runtime, token_id)
        assert history.count("Notified") == 1 and history[-1] == "Notified"
        assert history.count("NotificationFailed") == history.count("NotificationClaimed") - 1


def test_a_lease_too_short_for_any_email_fails_the_batch_without_sending(
    world: World, clock: FixedClock, flaky: list[FlakySink]
) -> None:
    tokens = due_tokens(world, clock, 3)
    sink = start_sink(flaky, FlakyHandler())
    notifier = world.runtime.expiry_notifier(SmtpMailer(sink.url))
    notifier.lease = timedelta(0)

    results = notifier.send_many([(token_id, 7) for token_id in tokens])

    assert [r.outcome for r in results] == [SendOutcome.FAILED] * 3
    assert all("too short" in r.label for r in results)
    assert sink.handler.received == []
    for token_id in tokens:
        assert events(world.runtime, token_id)[-2:] == ["NotificationClaimed", "NotificationFailed"]


def test_a_record_that_fails_stops_the_batch_before_the_next_email_is_accepted(
    world: World, clock: FixedClock, flaky: list[FlakySink], monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = due_tokens(world, clock, 6)
    sink = start_sink(flaky, FlakyHandler())
    notifier = world.runtime.expiry_notifier(SmtpMailer(sink.url))
    record = ExpiryNotifier._record
    calls = []

    def failing_third(self: ExpiryNotifier, claim: Any) -> Any:
        calls.append(claim.token.token_id)
        if len(calls) == 3:
            raise OperationalError("the database went away")
        return record(self, claim)

    monkeypatch.setattr(ExpiryNotifier, "_record", failing_third)
    with pytest.raises(OperationalError):
        notifier.send_many([(token_id, 7) for token_id in tokens])

    # The third email was accepted but not recorded (the documented window); the fourth was held back at DATA
    # until that record, which failed, so it never reached the server.
    assert [token_of(mid) for mid in sink.handler.message_ids()] == tokens[:3]
    assert sink.handler.data_calls == 3
    for token_id in tokens[:2]:
        assert events(world.runtime, token_id)[-1] == "Notified"
    assert events(world.runtime, tokens[2])[-1] == "NotificationClaimed"  # kept until its lease ends
    for token_id in tokens[3:]:
        assert events(world.runtime, token_id)[-1] == "NotificationFailed"  # given back: surely unsent

    monkeypatch.setattr(ExpiryNotifier, "_record", record)
    clock.set(clock.now() + notifier.lease + timedelta(seconds=1))
    outcomes = {token_id: outcome for token_id, _, outcome in scan(world.runtime, sink.url)}
    # The read models had not caught up with the first two records (the batch raised first): the scan
    # dispatches them again and the sender, deciding on the event store, sends nothing.
    assert outcomes == {t: "already_sent" if t in tokens[:2] else "sent" for t in tokens}
    # The unrecorded one went out again, with the same Message-ID; every other exactly once.
    received = {token_of(mid): count for mid, count in sink.handler.message_ids().items()}
    assert received == {token_id: 2 if token_id == tokens[2] else 1 for token_id in tokens}
    for token_id in tokens:
        assert events(world.runtime, token_id).count("Notified") == 1


# The batch load ------------------------------------------------------------------------------------------


def test_tokens_loaded_in_one_query_are_the_tokens_the_repository_loads(
    world: World, clock: FixedClock
) -> None:
    runtime = world.runtime
    tokens = due_tokens(world, clock, CLAIM_CHUNK + 3)
    runtime.tokens.revoke_token(world.admin, "project", world.project, tokens[0])
    runtime.tokens.delete_token(world.admin, "project", world.project, tokens[1])
    runtime.tokens.rotate_token(world.admin, "project", world.project, tokens[2])
    runtime.expiry_scan.run(lambda token_id, interval: None)  # intents on the rest
    streams = [deploy_token_uuid(token_id) for token_id in [*tokens, 10_000]]

    loaded = load_aggregates(runtime.store, streams)

    assert set(loaded) == set(streams[:-1])  # no stream, no aggregate
    for stream in streams[:-1]:
        expected: Aggregate = runtime.store.repository.get(stream)
        assert loaded[stream].version == expected.version
        assert loaded[stream].__dict__ == expected.__dict__


# RQ mail jobs --------------------------------------------------------------------------------------------


@pytest.fixture
def job_env(
    live_runtime: Runtime, postgres_schema: str, redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], Queue]]:
    """Points the job runtime (``job_runtime``) at this test's schema, Redis db and the given SMTP server."""

    def configure(smtp_url: str) -> Queue:
        for name, value in job_environment(postgres_schema, tmp_path / "jobs", smtp_url).items():
            monkeypatch.setenv(name, value)
        reset_job_runtime()
        return Queue(QUEUE, connection=redis)

    yield configure
    reset_job_runtime()


def live_due_tokens(runtime: Runtime, count: int) -> list[int]:
    world = World(runtime)
    today = datetime.now(UTC).date()
    return [
        runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=f"job-{n}",
            scopes=["read_repository"],
            expires_at=today + timedelta(days=6),
        ).token.token_id
        for n in range(count)
    ]


def test_a_retried_mail_job_sends_only_what_its_failed_attempt_left_and_counts_each_email_once(
    live_runtime: Runtime, job_env: Callable[[str], Queue], flaky: list[FlakySink]
) -> None:
    tokens = live_due_tokens(live_runtime, 5)
    handler = FlakyHandler(stop_after=2)  # the server goes away after two emails
    sink = start_sink(flaky, handler)
    queue = job_env(sink.url)
    runs = ScanRuns(live_runtime.db)
    runs.started("retried", "scheduler", datetime.now(UTC))
    RqDispatcher(queue, "retried").dispatch_many([(token_id, 7) for token_id in tokens])
    [job] = queue.get_jobs()
    assert job.id == mail_job_id("retried", [(token_id, 7) for token_id in tokens])

    with pytest.raises(UndeliveredEmails, match="3 of 5 expiry emails not delivered"):
        job.perform()  # what RQ does; it then schedules the retry after MAIL_RETRY's back-off
    assert {tuple(item) for item in job.meta["settled"]} == {(token_id, 7) for token_id in tokens[:2]}

    sink.start()
    assert job.perform() == [[token_id, 7, "sent"] for token_id in tokens[2:]]  # the retry: the rest only

    run = runs.get("retried")
    assert run is not None
    assert (run.mails_sent, run.mail_failures, run.mails_other, run.mails_no_recipients) == (5, 3, 0, 0)
    assert sorted(token_of(mid) for mid in handler.message_ids()) == tokens
    assert set(handler.message_ids().values()) == {1}
    for token_id in tokens:
        assert events(live_runtime, token_id).count("Notified") == 1


def test_a_one_email_job_queued_by_an_earlier_release_still_sends(
    live_runtime: Runtime, job_env: Callable[[str], Queue], flaky: list[FlakySink]
) -> None:
    [token_id] = live_due_tokens(live_runtime, 1)
    sink = start_sink(flaky, FlakyHandler())
    queue = job_env(sink.url)
    job = queue.enqueue(send_expiry_email, token_id, 7, None, job_id=f"expiry-mail-{token_id}-7-old")

    SimpleWorker([queue], connection=queue.connection).work(burst=True)

    assert job.return_value(refresh=True) == SendOutcome.SENT.value
    assert [token_of(mid) for mid in sink.handler.message_ids()] == [token_id]
