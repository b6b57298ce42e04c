"""The expiry-notification projection on both backends: which tokens the daily scan reads, and when."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.clock import FixedClock, start_of_day
from domain.deploy_token import DeployToken, deploy_token_uuid, due_interval
from projections.base import Projector
from projections.notification_queries import due_tokens, notification_state
from projections.notifications import TABLE, DueToken, ExpiryNotifications

from ..conftest import T0, World

TODAY = T0.date()  # the clock fixture starts at 2026-01-10 12:00 UTC
TICK = timedelta(microseconds=1)


class Scan:
    """The projection under test, fed by a projector of its own, and the service that writes the events."""

    def __init__(self, world: World, clock: FixedClock) -> None:
        self.world = world
        self.runtime: Runtime = world.runtime
        self.tokens = world.runtime.tokens
        self.clock = clock
        self.projector = Projector(self.runtime.store, self.runtime.db, [ExpiryNotifications()])
        self.projector.setup()
        self.projector.catch_up()

    def token(self, expires_at: date | datetime | None, *, name: str = "t", holder: str = "project") -> int:
        holder_id = self.world.project if holder == "project" else self.world.top
        return self.tokens.create_token(
            self.world.admin,
            "project" if holder == "project" else "group",
            holder_id,
            name=name,
            scopes=["read_repository"],
            expires_at=expires_at,
        ).token.token_id

    def days_out(self, days: int) -> int:
        return self.token(TODAY + timedelta(days=days), name=f"{days}-days")

    def notify(self, token_id: int, interval: int) -> None:
        assert self.tokens.record_notification(
            token_id, interval, message_id=f"<{token_id}.{interval}@test>", recipients=["owner@example.com"]
        )

    def due(self, now: datetime | None = None, **paging: Any) -> list[DueToken]:
        self.projector.catch_up()
        return due_tokens(self.runtime.db, now or self.clock.now(), **paging)

    def due_ids(self, now: datetime | None = None) -> set[int]:
        return {token.token_id for token in self.due(now)}

    def state(self, token_id: int) -> DueToken | None:
        self.projector.catch_up()
        return notification_state(self.runtime.db, token_id)

    def next_due(self, token_id: int) -> datetime | None:
        state = self.state(token_id)
        assert state is not None
        return state.next_due_at

    def rows(self) -> list[tuple[Any, ...]]:
        with self.runtime.db.read() as cursor:
            return cursor.execute(f"SELECT * FROM {TABLE} ORDER BY token_id").fetchall()


@pytest.fixture
def scan(world: World, clock: FixedClock) -> Scan:
    return Scan(world, clock)


def _expiry(token_id: int, scan: Scan) -> datetime:
    state = scan.state(token_id)
    assert state is not None
    return state.expires_at


# Which tokens are due ------------------------------------------------------------------------------------


def test_tokens_inside_a_window_are_due_and_the_others_are_not(scan: Scan):
    inside = {scan.days_out(6), scan.days_out(15), scan.days_out(45)}
    beyond = scan.days_out(75)
    never = scan.token(None)
    due = scan.due_ids()
    assert due == inside
    assert beyond not in due
    assert never not in scan.due_ids(datetime(2999, 1, 1, tzinfo=UTC))
    assert scan.state(never) is None  # no row for a token that cannot expire


def test_a_due_token_carries_what_the_scanner_needs(scan: Scan):
    token_id = scan.token(TODAY + timedelta(days=6), name="registry", holder="group")
    assert scan.due() == [
        DueToken(
            token_id=token_id,
            holder_kind="group",
            holder_id=scan.world.top,
            name="registry",
            expires_at=start_of_day(TODAY + timedelta(days=6)),
            notified=frozenset(),
            claims={},
            expiry_recorded=False,
            next_due_at=start_of_day(TODAY + timedelta(days=6 - 60)),
        )
    ]


def test_a_token_becomes_due_exactly_when_its_60_day_window_opens(scan: Scan):
    token_id = scan.days_out(75)
    opening = start_of_day(TODAY + timedelta(days=75 - 60))
    expires_at = _expiry(token_id, scan)
    assert due_interval(expires_at, (opening - TICK).date()) is None  # the domain agrees on the boundary
    assert due_interval(expires_at, opening.date()) == 60
    assert token_id not in scan.due_ids(opening - TICK)
    assert token_id in scan.due_ids(opening)


def test_windows_are_counted_on_the_utc_date_of_the_expiry(scan: Scan):
    # 01:00 on 21 March at +05:00 is 20:00 UTC on 20 March: the 60-day window opens on 19 January.
    token_id = scan.token(datetime(2026, 3, 21, 1, 0, tzinfo=timezone(timedelta(hours=5))))
    assert scan.next_due(token_id) == datetime(2026, 1, 19, tzinfo=UTC)


# How notifications and lifecycle events move a token -------------------------------------------------------


def test_each_notification_moves_the_token_to_the_opening_of_the_next_window(scan: Scan, clock: FixedClock):
    token_id = scan.days_out(45)
    expires = TODAY + timedelta(days=45)
    scan.notify(token_id, 60)
    assert token_id not in scan.due_ids()
    assert scan.next_due(token_id) == start_of_day(expires - timedelta(days=30))
    clock.set(start_of_day(expires - timedelta(days=30)))
    scan.notify(token_id, 30)
    assert scan.next_due(token_id) == start_of_day(expires - timedelta(days=7))
    clock.set(start_of_day(expires - timedelta(days=7)))
    scan.notify(token_id, 7)
    assert scan.next_due(token_id) == start_of_day(expires)  # only recording the expiry is left


def test_after_the_7_day_mail_the_token_is_due_again_only_at_its_expiry(scan: Scan):
    token_id = scan.token(datetime(2026, 1, 14, 15, 30, tzinfo=UTC))
    scan.notify(token_id, 7)
    expires_at = datetime(2026, 1, 14, 15, 30, tzinfo=UTC)
    assert scan.next_due(token_id) == expires_at
    assert token_id not in scan.due_ids(expires_at - TICK)
    assert token_id in scan.due_ids(expires_at)


def test_no_back_fill_a_token_first_seen_at_6_days_is_done_after_the_7_day_mail(scan: Scan):
    token_id = scan.days_out(6)
    assert token_id in scan.due_ids()  # its 60- and 30-day windows are long past, never sent
    scan.notify(token_id, 7)
    assert token_id not in scan.due_ids()
    assert scan.next_due(token_id) == start_of_day(TODAY + timedelta(days=6))


def test_a_recorded_expiry_is_never_due_again(scan: Scan, clock: FixedClock):
    token_id = scan.days_out(6)
    clock.set(start_of_day(TODAY + timedelta(days=6)))
    assert token_id in scan.due_ids()  # expired, Expired not yet recorded (behaviour [expiry-event])
    assert scan.tokens.record_expiry(token_id)
    assert scan.due_ids() == set()
    assert scan.due_ids(datetime(2999, 1, 1, tzinfo=UTC)) == set()
    state = scan.state(token_id)
    assert state is not None and state.expiry_recorded and state.next_due_at is None


@pytest.mark.parametrize("action", ["revoke", "delete"])
def test_revoked_and_deleted_tokens_are_never_due(scan: Scan, action: str):
    token_id = scan.days_out(6)
    command = scan.tokens.revoke_token if action == "revoke" else scan.tokens.delete_token
    command(scan.world.admin, "project", scan.world.project, token_id)
    assert scan.due_ids() == set()
    assert scan.due_ids(datetime(2999, 1, 1, tzinfo=UTC)) == set()
    state = scan.state(token_id)
    assert state is not None and state.next_due_at is None
    assert (state.revoked, state.deleted) == (action == "revoke", action == "delete")


def test_a_notification_recorded_after_revocation_does_not_make_the_token_due(scan: Scan):
    token_id = scan.days_out(45)
    scan.tokens.revoke_token(scan.world.admin, "project", scan.world.project, token_id)
    scan.notify(token_id, 60)  # a sender that claimed before the revocation finishes afterwards
    assert scan.due_ids(datetime(2999, 1, 1, tzinfo=UTC)) == set()


def test_claims_are_visible_while_the_token_stays_due_and_end_with_the_notification(
    scan: Scan, clock: FixedClock
):
    token_id = scan.days_out(6)
    assert scan.tokens.claim_notification(token_id, 7, message_id="<m@test>", lease=timedelta(minutes=10))
    [claimed] = scan.due()
    assert claimed.claims == {7: clock.now() + timedelta(minutes=10)}
    scan.notify(token_id, 7)
    state = scan.state(token_id)
    assert state is not None
    assert (state.claims, state.notified) == ({}, frozenset({7}))


def test_a_failed_send_releases_the_claim_and_the_token_stays_due(scan: Scan):
    token_id = scan.days_out(6)
    assert scan.tokens.claim_notification(token_id, 7, message_id="<m@test>", lease=timedelta(minutes=10))
    assert scan.tokens.release_notification(token_id, 7, message_id="<m@test>", error="550 refused")
    [retry] = scan.due()
    assert (retry.token_id, retry.claims, retry.notified) == (token_id, {}, frozenset())


def test_recording_the_intent_to_send_leaves_the_token_due_until_notified(scan: Scan):
    token_id = scan.days_out(6)
    assert scan.tokens.mark_notification_due(token_id, 7)
    assert token_id in scan.due_ids()


# Reading the due set --------------------------------------------------------------------------------------


def test_paging_returns_each_due_token_once_while_rows_change_underneath(scan: Scan):
    # Mixed windows, so the order of next_due_at is not the order of ids.
    due = [scan.days_out(days) for days in (45, 6, 30, 15, 2, 50, 10, 20)]
    failing = due[1]  # its send fails: it stays due, behind the cursor
    revoked_mid_pass = due[6]
    seen: list[int] = []
    after = 0
    while page := scan.due(limit=3, after_token_id=after):
        assert len(seen) < 10, "paging does not advance"
        for token in page:
            seen.append(token.token_id)
            if token.token_id != failing:
                interval = due_interval(token.expires_at, TODAY)
                assert interval is not None
                scan.notify(token.token_id, interval)  # handled: its next_due_at moves past now
        if len(seen) == 3:
            scan.tokens.revoke_token(scan.world.admin, "project", scan.world.project, revoked_mid_pass)
            due.append(scan.days_out(6))  # created mid-pass, already inside its window
        after = page[-1].token_id
    assert seen == [token_id for token_id in due if token_id != revoked_mid_pass]
    assert scan.due_ids() == {failing}  # retried by the next pass


def _issue_directly(runtime: Runtime, expiries: dict[int, datetime]) -> None:
    """Store DeployToken streams in a few big transactions: the service needs ~10 ms a token on PostgreSQL."""
    actor = Actor.system("test")
    tokens = [
        DeployToken.issue(
            token_id=token_id,
            name=f"bulk-{token_id}",
            username=None,
            holder_kind="project",
            holder_id=1,
            scopes=["read_repository"],
            expires_at=expires_at,
            digest=runtime.keys.digest(f"bulk-{token_id}"),
            actor=actor,
            now=T0,
        )
        for token_id, expires_at in expiries.items()
    ]
    for start in range(0, len(tokens), 500):
        runtime.store.save(*tokens[start : start + 500])


def test_among_2000_far_future_tokens_only_the_5_due_ones_are_read(scan: Scan):
    due = {3, 400, 1001, 1500, 2005}
    far = start_of_day(TODAY + timedelta(days=365))
    soon = start_of_day(TODAY + timedelta(days=6))
    _issue_directly(scan.runtime, {n: soon if n in due else far for n in range(1, 2006)})
    assert {token.token_id for token in scan.due(limit=500)} == due


@pytest.mark.slow
def test_a_scan_driven_by_the_due_set_does_what_a_full_scan_would(scan: Scan, clock: FixedClock):
    """Day by day, the due rows are exactly the tokens a scan of every aggregate would act on."""
    offsets = (1, 6, 7, 8, 15, 30, 31, 45, 60, 61, 75)
    tokens = {scan.days_out(days): days for days in offsets}
    odd = scan.token(datetime(2026, 2, 9, 15, 30, tzinfo=UTC))  # 30 days out, expiring mid-afternoon
    tokens[odd] = 30
    sent: dict[int, list[int]] = {token_id: [] for token_id in tokens}
    for now in _daily_scans(T0, days=80):
        clock.set(now)
        work: dict[int, int | None] = {}  # token -> interval to send, or None for "record the expiry"
        for token_id in tokens:
            token = scan.runtime.store.repository.get(deploy_token_uuid(token_id))
            assert isinstance(token, DeployToken)
            interval = token.interval_due(now)
            if interval is not None or (token.is_expired(now) and not token.expiry_recorded):
                work[token_id] = interval
        assert _all_due_ids(scan, now) == set(work)
        for token_id, interval in work.items():
            if interval is None:
                assert scan.tokens.record_expiry(token_id)
            else:
                scan.notify(token_id, interval)
                sent[token_id].append(interval)
    expected = {1: [7], 6: [7], 7: [7], 8: [30, 7], 15: [30, 7], 30: [30, 7], 31: [60, 30, 7]}
    assert sent == {token_id: expected.get(days, [60, 30, 7]) for token_id, days in tokens.items()}
    assert _all_due_ids(scan, datetime(2999, 1, 1, tzinfo=UTC)) == set()


def _daily_scans(start: datetime, *, days: int) -> Iterator[datetime]:
    yield start
    for day in range(1, days + 1):
        yield start_of_day(start.date() + timedelta(days=day)) + timedelta(
            hours=1
        )  # behaviour [notifications]


def _all_due_ids(scan: Scan, now: datetime) -> set[int]:
    found: list[int] = []
    after = 0
    while page := scan.due(now, limit=4, after_token_id=after):
        assert len(found) < 100, "paging does not advance"
        found += [token.token_id for token in page]
        after = page[-1].token_id
    assert len(found) == len(set(found))
    return set(found)


# Rebuilding -----------------------------------------------------------------------------------------------


def test_rebuild_from_scratch_yields_identical_rows(scan: Scan, clock: FixedClock):
    notified, claimed, revoked, deleted, expired = (scan.days_out(days) for days in (45, 6, 15, 20, 1))
    scan.token(None)
    scan.token(TODAY + timedelta(days=90), holder="group")
    scan.notify(notified, 60)
    scan.tokens.claim_notification(claimed, 7, message_id="<c@test>", lease=timedelta(minutes=5))
    scan.tokens.revoke_token(scan.world.admin, "project", scan.world.project, revoked)
    scan.tokens.delete_token(scan.world.admin, "project", scan.world.project, deleted)
    clock.set(start_of_day(TODAY + timedelta(days=1)))
    scan.tokens.record_expiry(expired)
    scan.projector.catch_up()
    before = scan.rows()
    assert len(before) == 6
    scan.projector.rebuild("expiry_notifications")
    assert scan.rows() == before
