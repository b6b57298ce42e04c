"""The daily expiry scan (behaviour [notifications], [expiry-event]) end to end:
 real SMTP (aiosmtpd on loopback), real PostgreSQL/SQLite and,
for the RQ paths, a real Redis (db 13).

Each test checks what reached the SMTP sink (Message-IDs, subjects, recipients) and what the event store
recorded (NotificationDue, NotificationClaimed/Failed, Notified, Expired).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

import deploy_tokens.expiry_sender
from deploy_tokens.expiry import ScanReport
from deploy_tokens.expiry_sender import SendOutcome
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock, start_of_day
from domain.instance_settings import EXPIRING_NOTIFICATIONS_FLAG
from infrastructure.mail import SmtpMailer
from infrastructure.scan_runs import ScanRuns
from projections.notification_queries import due_tokens, notification_state
from workers.jobs import QUEUE, InlineDispatcher, mail_job_id, trigger_daily_scan

from ..conftest import T0, World
from .conftest import REDIS_URL, SmtpSink, job_environment, reset_job_runtime, running_sink

TODAY = T0.date()  # the clock fixture: 2026-01-10 12:00 UTC
PROJECT_RECIPIENTS = [  # acme/api: its Maintainers, plus the Owner and Maintainer inherited from acme
    "group_maintainer@example.com",
    "maintainer@example.com",
    "owner@example.com",
    "root@example.com",
]


def expected_message_id(token_id: int, expires_on: date, interval: int) -> str:
    # The domain is the host of DEPLOY_TOKENS_EXTERNAL_URL (default http://127.0.0.1:8080).
    return f"<deploy-token-expiry.{token_id}.{expires_on:%Y%m%d}.{interval}d@127.0.0.1>"


def user_id(world: World, name: str) -> int:
    found = world.users[name].user_id
    assert found is not None
    return found


# Fixtures ------------------------------------------------------------------------------------------------


class Scans:
    """A World, the clock, and the in-process scan (``InlineDispatcher``) mailing the real SMTP sink."""

    def __init__(self, world: World, clock: FixedClock, sink: SmtpSink) -> None:
        self.world = world
        self.runtime: Runtime = world.runtime
        self.tokens = world.runtime.tokens
        self.directory = world.runtime.directory
        self.members = world.runtime.members
        self.clock = clock
        self.sink = sink
        self.outcomes: list[tuple[int, int, str]] = []

    def token(
        self,
        days: int,
        *,
        name: str | None = None,
        holder: tuple[str, int] | None = None,
        actor: Actor | None = None,
    ) -> int:
        kind, holder_id = holder or ("project", self.world.project)
        assert kind in ("project", "group")
        return self.tokens.create_token(
            actor or self.world.admin,
            "project" if kind == "project" else "group",
            holder_id,
            name=name or f"in-{days}-days",
            scopes=["read_repository"],
            expires_at=self.clock.now().date() + timedelta(days=days),
        ).token.token_id

    def scan(self, runtime: Runtime | None = None) -> ScanReport:
        runtime = runtime or self.runtime
        dispatcher = InlineDispatcher(runtime.expiry_notifier(SmtpMailer(self.sink.url)))
        report = runtime.expiry_scan.run(dispatcher)
        self.outcomes = dispatcher.outcomes
        return report

    def events(self, token_id: int) -> list[str]:
        return [entry["event"] for entry in self.tokens.history(token_id)]

    def notified(self, token_id: int) -> list[dict[str, object]]:
        return [e["changes"] for e in self.tokens.history(token_id) if e["event"] == "Notified"]

    def still_due(self, token_id: int) -> bool:
        self.runtime.projector.catch_up()
        return token_id in {row.token_id for row in due_tokens(self.runtime.db, self.clock.now())}


@pytest.fixture
def scans(world: World, clock: FixedClock, sink: SmtpSink) -> Scans:
    return Scans(world, clock, sink)


# 1. Windows and recipients (both backends) -------------------------------------------------------------


def test_each_window_gets_its_email_and_tokens_beyond_60_days_get_none(scans: Scans) -> None:
    tokens = {days: scans.token(days) for days in (6, 15, 45, 75)}
    expected = {6: 7, 15: 30, 45: 60}  # days out -> the interval mailed

    report = scans.scan()

    received = scans.sink.by_message_id()
    assert len(scans.sink.received) == 3
    for days, interval in expected.items():
        token_id = tokens[days]
        mid = expected_message_id(token_id, TODAY + timedelta(days=days), interval)
        mail = received[mid]
        assert mail.subject == (
            f'Your deploy token "in-{days}-days" for project acme/api expires in {days} days'
        )
        assert mail.message["X-Idempotency-Key"] == mid
        assert mail.to == PROJECT_RECIPIENTS
        assert sorted(mail.rcpt_tos) == PROJECT_RECIPIENTS
        text = mail.message.get_body(("plain",))
        assert text is not None and f"{interval}-day notice" in text.get_content()
        [notified] = scans.notified(token_id)
        assert notified["interval"] == interval
        assert notified["message_id"] == mid
        assert notified["recipients"] == PROJECT_RECIPIENTS
    assert scans.events(tokens[75]) == ["Created", "Scoped"]  # not even an intent
    assert sorted(report.dispatched) == sorted((tokens[d], i) for d, i in expected.items())


def test_recipients_inherit_roles_from_every_ancestor_group_and_exclude_developers(scans: Scans) -> None:
    world = scans.world
    # A Developer on the deep project and a Maintainer of an unrelated group must get nothing.
    scans.members.set_member(world.admin, "project", world.deep_project, user_id(world, "developer"), 30)
    scans.members.set_member(world.admin, "group", world.sibling, user_id(world, "outsider"), 40)
    token_id = scans.token(6, holder=("project", world.deep_project))

    scans.scan()

    [mail] = scans.sink.received
    # Owner and Maintainer of acme (two levels up), root as creator; not developer, guest, reporter.
    assert mail.to == ["group_maintainer@example.com", "owner@example.com", "root@example.com"]
    assert mail.message["Message-ID"] == expected_message_id(token_id, TODAY + timedelta(days=6), 7)
    assert "acme/backend/services/db" in mail.subject


def test_a_group_token_mails_the_groups_owners_only(scans: Scans) -> None:
    world = scans.world
    token_id = scans.token(20, holder=("group", world.sub), name="registry")

    scans.scan()

    [mail] = scans.sink.received
    # root owns acme/backend; owner owns acme (inherited); group_maintainer (Maintainer of acme) is no Owner.
    assert mail.to == ["owner@example.com", "root@example.com"]
    assert mail.subject == 'Your deploy token "registry" for group acme/backend expires in 20 days'
    assert mail.message["Message-ID"] == expected_message_id(token_id, TODAY + timedelta(days=20), 30)


def test_a_personal_projects_token_mails_the_namespace_owner(scans: Scans) -> None:
    outsider = scans.world.users["outsider"]
    project_id = scans.directory.create_project(outsider, name="Mine")  # outsider/mine: no group, no members
    token_id = scans.token(6, holder=("project", project_id), actor=outsider)

    scans.scan()

    [mail] = scans.sink.received
    assert mail.to == ["outsider@example.com"]
    assert [n["interval"] for n in scans.notified(token_id)] == [7]


# 1b. Tokens that must get nothing ---------------------------------------------------------------------


def test_a_revoked_token_gets_nothing(scans: Scans) -> None:
    token_id = scans.token(6)
    scans.tokens.revoke_token(scans.world.admin, "project", scans.world.project, token_id)

    report = scans.scan()

    assert scans.sink.received == []
    assert report.dispatched == []
    assert scans.events(token_id) == ["Created", "Scoped", "Revoked"]


def test_an_expired_token_gets_no_email_and_its_expiry_is_recorded_once(scans: Scans) -> None:
    token_id = scans.token(3)  # its 7-day mail was never sent: no back-fill after expiry either
    scans.clock.set(T0 + timedelta(days=4))

    first = scans.scan()
    second = scans.scan()

    assert scans.sink.received == []
    assert (first.expired_recorded, second.expired_recorded) == (1, 0)
    assert scans.events(token_id) == ["Created", "Scoped", "Expired"]


def test_a_deleted_token_gets_nothing(scans: Scans) -> None:
    token_id = scans.token(6)
    scans.tokens.delete_token(scans.world.admin, "project", scans.world.project, token_id)

    report = scans.scan()

    assert scans.sink.received == []
    assert report.examined == 0
    assert scans.events(token_id) == ["Created", "Scoped", "Deleted"]


def test_a_blocked_only_recipient_gets_nothing_and_the_interval_stays_open(scans: Scans) -> None:
    world = scans.world
    solo_record = scans.directory.register_user(world.admin, username="solo", email="solo@example.com")
    solo = Actor.user(solo_record.user_id, solo_record.username)
    # solo is the group's Owner and the project's Maintainer; the admin has no role in either.
    group_id = scans.directory.create_group(solo, name="Solo team", path="solo-team")
    project_id = scans.directory.create_project(solo, name="Tool", namespace_id=group_id)
    scans.members.set_member(solo, "project", project_id, user_id(world, "developer"), 30)
    token_id = scans.token(6, holder=("project", project_id), actor=solo)
    scans.directory.set_user_blocked(world.admin, solo_record.user_id, True)

    scans.scan()

    assert scans.sink.received == []
    assert scans.outcomes == [(token_id, 7, SendOutcome.NO_RECIPIENTS.value)]
    assert "Notified" not in scans.events(token_id)
    assert scans.still_due(token_id)
    # The block was the only reason: unblocked, the next scan mails solo (and still not the Developer).
    scans.directory.set_user_blocked(world.admin, solo_record.user_id, False)
    scans.scan()
    [mail] = scans.sink.received
    assert mail.to == ["solo@example.com"]


def test_a_holder_without_maintainers_or_owners_gets_nothing(scans: Scans) -> None:
    world = scans.world
    # Created by a process, which becomes no member: a group always keeps an Owner once it has one.
    setup = Actor.system("setup")
    group_id = scans.directory.create_group(setup, name="Orphans", path="orphans")
    project_id = scans.directory.create_project(setup, name="Lonely", namespace_id=group_id)
    scans.members.set_member(world.admin, "project", project_id, user_id(world, "developer"), 30)
    token_id = scans.token(6, holder=("project", project_id))

    scans.scan()

    assert scans.sink.received == []
    assert scans.outcomes == [(token_id, 7, SendOutcome.NO_RECIPIENTS.value)]
    assert scans.events(token_id) == ["Created", "Scoped", "NotificationDue"]
    assert scans.still_due(token_id)


def test_feature_flag_off_sends_nothing_but_still_records_expiries(scans: Scans) -> None:
    soon = scans.token(1)
    due = scans.token(8)
    scans.directory.set_feature(scans.world.admin, EXPIRING_NOTIFICATIONS_FLAG, False)
    scans.clock.set(T0 + timedelta(days=2))  # soon has expired, due is 6 days out

    report = scans.scan()

    assert report.notifications_off
    assert scans.sink.received == []
    assert scans.events(soon) == ["Created", "Scoped", "Expired"]
    assert scans.events(due) == ["Created", "Scoped"]
    # Switched back on, the same token is mailed on the next run: the flag only held it back.
    scans.directory.set_feature(scans.world.admin, EXPIRING_NOTIFICATIONS_FLAG, True)
    scans.scan()
    assert [r.message_id for r in scans.sink.received] == [
        expected_message_id(due, TODAY + timedelta(days=8), 7)
    ]


# 2. Idempotence and concurrent scanners -----------------------------------------------------------------


def test_a_second_scan_on_the_same_day_sends_nothing_new(scans: Scans) -> None:
    tokens = [scans.token(days) for days in (2, 6, 15, 29, 45, 59)]
    scans.scan()
    first = scans.sink.message_ids()

    report = scans.scan()

    assert scans.sink.message_ids() == first
    assert len(first) == len(tokens) and set(first.values()) == {1}
    assert report.dispatched == []
    for token_id in tokens:
        assert scans.events(token_id).count("Notified") == 1


def test_two_concurrent_scanners_send_each_email_exactly_once(
    pg_runtime: Runtime, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small claims (a transaction's worth of emails): while one scanner sends its chunk, the other claims the
    # next, so both really send, and they race for the same chunks on the way.
    monkeypatch.setattr(deploy_tokens.expiry_sender, "CLAIM_CHUNK", 4)
    world = World(pg_runtime)
    with running_sink(delay=0.02) as sink:  # each delivery takes a while: the scanners overlap
        scans = Scans(world, clock, sink)
        windows = {2: 7, 6: 7, 10: 30, 20: 30, 30: 30, 40: 60, 50: 60, 60: 60}
        tokens = {
            scans.token(days, name=f"t{n}-{days}"): (days, windows[days])
            for n in range(3)
            for days in windows
        }
        runtimes = [Runtime.open(pg_runtime.settings, clock=clock) for _ in range(2)]
        try:
            start = threading.Barrier(len(runtimes))
            outcomes: list[list[tuple[int, int, str]]] = [[] for _ in runtimes]
            errors: list[BaseException] = []

            def run(index: int) -> None:
                runtime = runtimes[index]
                dispatcher = InlineDispatcher(runtime.expiry_notifier(SmtpMailer(sink.url)))
                start.wait()
                try:
                    runtime.expiry_scan.run(dispatcher)
                except BaseException as error:  # surfaced below, not lost in the thread
                    errors.append(error)
                outcomes[index] = dispatcher.outcomes

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(runtimes))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
        finally:
            for runtime in runtimes:
                runtime.close()

        assert errors == []
        expected = Counter(
            expected_message_id(token_id, TODAY + timedelta(days=days), interval)
            for token_id, (days, interval) in tokens.items()
        )
        assert sink.message_ids() == expected  # every email exactly once
        sent = [[o for o in scanner if o[2] == SendOutcome.SENT.value] for scanner in outcomes]
        assert all(sent), f"the scanners did not overlap: {outcomes}"  # both really sent some
        assert sum(len(s) for s in sent) == len(tokens)
        for token_id in tokens:
            assert scans.events(token_id).count("Notified") == 1


# 3. SMTP down -------------------------------------------------------------------------------------------


def test_smtp_down_marks_nothing_notified_and_the_next_run_delivers(scans: Scans) -> None:
    tokens = {scans.token(6): 7, scans.token(15): 30}
    scans.sink.stop()  # nothing listens on the port any more

    scans.scan()

    assert [outcome.startswith("failed: cannot connect") for _, _, outcome in scans.outcomes] == [True, True]
    scans.runtime.projector.catch_up()
    for token_id in tokens:
        events = scans.events(token_id)
        assert "Notified" not in events
        assert events[-3:] == ["NotificationDue", "NotificationClaimed", "NotificationFailed"]
        state = notification_state(scans.runtime.db, token_id)
        assert state is not None and state.notified == frozenset() and state.claims == {}
    assert scans.sink.received == []

    scans.sink.start()  # back, same port
    scans.scan()

    assert sorted(scans.sink.message_ids().values()) == [1, 1]
    for token_id, interval in tokens.items():
        assert [n["interval"] for n in scans.notified(token_id)] == [interval]


# 4. RQ with a real Redis -------------------------------------------------------------------------------


@pytest.fixture
def trigger_env(redis: Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Queue:
    monkeypatch.setenv("DEPLOY_TOKENS_REDIS_URL", REDIS_URL)
    monkeypatch.setenv("DEPLOY_TOKENS_DATA_DIR", str(tmp_path / "trigger"))
    monkeypatch.delenv("DEPLOY_TOKENS_DATABASE_URL", raising=False)
    return Queue(QUEUE, connection=redis)


def test_trigger_enqueues_one_scan_per_utc_day_and_nothing_before_0100(trigger_env: Queue) -> None:
    day = datetime(2026, 3, 5, tzinfo=UTC)
    assert trigger_daily_scan(now=day + timedelta(minutes=59)) is None  # 00:59: too early
    assert trigger_env.job_ids == []

    assert trigger_daily_scan(now=day + timedelta(hours=1)) == "20260305"
    assert trigger_daily_scan(now=day + timedelta(hours=1, minutes=15)) is None  # the catch-up tick
    assert trigger_daily_scan(now=day + timedelta(hours=23, minutes=59)) is None
    # 00:30 on 6 March at +02:00 is 22:30 UTC on 5 March: still the same UTC day.
    assert trigger_daily_scan(now=datetime.fromisoformat("2026-03-06T00:30:00+02:00")) is None
    assert trigger_daily_scan(now=day + timedelta(days=1, minutes=30)) is None  # 6 March, 00:30 UTC
    assert trigger_daily_scan(now=day + timedelta(days=1, hours=1)) == "20260306"

    assert trigger_env.job_ids == ["expiry-scan-20260305", "expiry-scan-20260306"]
    job = Job.fetch("expiry-scan-20260305", connection=trigger_env.connection)
    assert job.func_name == "workers.jobs.run_expiry_scan"
    assert job.args == ("20260305",)


def test_concurrent_triggers_enqueue_one_scan(trigger_env: Queue) -> None:
    now = datetime(2026, 3, 5, 1, 0, 30, tzinfo=UTC)
    threads = 8
    start = threading.Barrier(threads)
    results: list[str | None] = []
    lock = threading.Lock()

    def fire() -> None:
        start.wait()
        for _ in range(3):  # each thread also repeats its tick
            result = trigger_daily_scan(now=now)
            with lock:
                results.append(result)

    workers = [threading.Thread(target=fire) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert sorted(results, key=str) == ["20260305"] + [None] * (threads * 3 - 1)
    assert trigger_env.job_ids == ["expiry-scan-20260305"]


@pytest.fixture
def job_env(
    live_runtime: Runtime,
    postgres_schema: str,
    sink: SmtpSink,
    redis: Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Queue]:
    """What a job process reads from the environment, pointing at this test's schema, sink and Redis db."""
    for name, value in job_environment(postgres_schema, tmp_path / "jobs", sink.url).items():
        monkeypatch.setenv(name, value)
    reset_job_runtime()
    yield Queue(QUEUE, connection=redis)
    reset_job_runtime()


def test_rq_scan_job_and_mail_jobs_send_each_window_once_per_day(
    live_runtime: Runtime, job_env: Queue, sink: SmtpSink
) -> None:
    world = World(live_runtime)
    today = datetime.now(UTC).date()
    tokens = {
        days: live_runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=f"rq-{days}",
            scopes=["read_registry"],
            expires_at=today + timedelta(days=days),
        ).token.token_id
        for days in (6, 15, 45, 75)
    }
    tick = max(datetime.now(UTC), start_of_day(today) + timedelta(hours=1))  # a tick after 01:00 UTC
    day = trigger_daily_scan(now=tick)
    assert day == f"{today:%Y%m%d}"

    SimpleWorker([job_env], connection=job_env.connection).work(burst=True)

    scan_job = Job.fetch(f"expiry-scan-{day}", connection=job_env.connection)
    assert scan_job.get_status() == JobStatus.FINISHED
    assert scan_job.return_value() == {
        "examined": 3,
        "expired_recorded": 0,
        "dispatched": 3,
        "notifications_off": False,
    }
    expected = {6: 7, 15: 30, 45: 60}
    batch = [(tokens[days], interval) for days, interval in expected.items()]  # one page: one job
    mail_job = Job.fetch(mail_job_id(day, batch), connection=job_env.connection)
    assert mail_job.return_value() == [[token_id, interval, "sent"] for token_id, interval in batch]
    run = ScanRuns(live_runtime.db).get(day)
    assert run is not None and (run.status, run.mails_due, run.mails_sent, run.mail_failures) == (
        "succeeded",
        3,
        3,
        0,
    )
    assert sink.message_ids() == Counter(
        expected_message_id(tokens[d], today + timedelta(days=d), i) for d, i in expected.items()
    )
    assert all(mail.to == PROJECT_RECIPIENTS for mail in sink.received)

    # Later ticks that day enqueue nothing, and a worker run then sends nothing.
    assert trigger_daily_scan(now=tick + timedelta(minutes=15)) is None
    SimpleWorker([job_env], connection=job_env.connection).work(burst=True)
    assert len(sink.received) == 3
    for days, interval in expected.items():
        notified = [e for e in live_runtime.tokens.history(tokens[days]) if e["event"] == "Notified"]
        assert [e["changes"]["interval"] for e in notified] == [interval]
