"""The auditor pages' queries (projections/audit_log_queries.py) on both backends: uses per UTC day with days
without uses, the most recent uses, and keyset pages of the log newest first. SQLite and PostgreSQL group by
day and compare times differently, so both answer here."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from infrastructure.activity import ActivityEvent
from projections.audit_log_queries import (
    AuditLogFilter,
    DailyUses,
    audit_log_count,
    audit_log_page,
    daily_uses,
    event_types,
    last_use,
    recent_uses,
)
from projections.audit_queries import AuditFilter, AuditQuery, audit_events

from ..conftest import World, backend  # noqa: F401  (both backends)


def _record(world: World, token_id: int, at: datetime, allowed: bool) -> None:
    world.runtime.activity.record(
        ActivityEvent(
            at, token_id, None, "check", "git_read", "project", "acme/api", allowed, "r", 200, None, None
        )
    )


def test_uses_per_utc_day_fill_the_period_and_split_allowed_from_denied(world: World):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="a", scopes=["read_repository"]
    ).token
    other = rt.tokens.create_token(
        world.admin, "project", world.project, name="b", scopes=["read_repository"]
    ).token
    for at, allowed in (
        (datetime(2026, 1, 8, 0, 0, tzinfo=UTC), True),  # the first instant of the day
        (datetime(2026, 1, 8, 23, 59, 59, 999999, tzinfo=UTC), False),  # the last
        (datetime(2026, 1, 9, 1, 0, tzinfo=UTC) - timedelta(hours=2), True),  # 23:00 on the 8th, UTC
        (datetime(2026, 1, 10, 12, 0, tzinfo=UTC), False),
        (datetime(2026, 1, 11, 0, 0, tzinfo=UTC), True),  # the day after the period
        (datetime(2026, 1, 5, 23, 59, tzinfo=UTC), True),  # the day before it
    ):
        _record(world, token.token_id, at, allowed)
    _record(world, other.token_id, datetime(2026, 1, 8, 12, 0, tzinfo=UTC), True)
    rt.activity.flush()
    assert daily_uses(rt.db, token.token_id, date(2026, 1, 6), date(2026, 1, 10)) == [
        DailyUses(date(2026, 1, 6), 0, 0),
        DailyUses(date(2026, 1, 7), 0, 0),
        DailyUses(date(2026, 1, 8), 2, 1),
        DailyUses(date(2026, 1, 9), 0, 0),
        DailyUses(date(2026, 1, 10), 0, 1),
    ]
    newest = recent_uses(rt.db, token.token_id, limit=2)
    assert [use.occurred_at for use in newest] == [
        datetime(2026, 1, 11, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 10, 12, 0, tzinfo=UTC),
    ]
    assert newest[1].allowed is False and newest[0].allowed is True
    assert last_use(rt.db, token.token_id) == newest[0]
    fresh = rt.tokens.create_token(
        world.admin, "project", world.project, name="c", scopes=["read_repository"]
    )
    assert last_use(rt.db, fresh.token.token_id) is None


def test_log_pages_newest_first_and_back_match_the_audit_trail(world: World):
    rt = world.runtime
    for number in range(5):
        rt.tokens.create_token(
            world.admin, "project", world.project, name=f"t{number}", scopes=["read_repository"]
        )
    selection = AuditLogFilter(AuditFilter(actor_username="root"), event_type="deploy_token_created")
    trail = [
        row.position
        for row in audit_events(rt.db, AuditQuery(actor_username="root", limit=None))
        if row.event_type == "deploy_token_created"
    ]
    assert len(trail) == 5 and audit_log_count(rt.db, selection, cap=100) == 5
    assert audit_log_count(rt.db, selection, cap=3) == 4  # counted no further than "more than 3"
    first = audit_log_page(rt.db, selection, limit=2)
    assert [row.position for row in first.rows] == trail[::-1][:2] and first.newer is None
    assert first.older is not None
    second = audit_log_page(rt.db, selection, limit=2, before=first.older)
    third = audit_log_page(rt.db, selection, limit=2, before=second.older)
    assert [row.position for row in [*first.rows, *second.rows, *third.rows]] == trail[::-1]
    assert third.older is None and third.newer is not None
    back = audit_log_page(rt.db, selection, limit=2, after=third.newer)
    assert [row.position for row in back.rows] == [row.position for row in second.rows]
    assert back.newer is not None and back.older == second.older
    before = event_types(rt.db)
    assert "deploy_token_created" in before and before == sorted(before)
    assert "deploy_token_revoked" not in before
    rt.tokens.revoke_token(world.admin, "project", world.project, back.rows[0].target_id or 0)
    assert event_types(rt.db) == sorted({*before, "deploy_token_revoked"})  # what came later is seen too
