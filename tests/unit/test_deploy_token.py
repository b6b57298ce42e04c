"""The DeployToken aggregate's invariants; each test fails if its rule is removed."""

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from domain.actors import Actor
from domain.deploy_token import DeployToken, deploy_token_uuid, due_interval
from domain.errors import TokenDeleted, ValidationError
from domain.scopes import SCOPES

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
ACTOR = Actor.user(1, "root", is_admin=True, address="192.0.2.1")


def issue(**overrides):
    fields = dict(
        token_id=7,
        name="deploy",
        username=None,
        holder_kind="project",
        holder_id=3,
        scopes=["read_repository"],
        expires_at=None,
        digest="d" * 64,
        actor=ACTOR,
        now=NOW,
    )
    fields.update(overrides)
    return DeployToken.issue(**fields)


def errors_of(**overrides) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        issue(**overrides)
    return caught.value.errors


def test_creation_records_created_then_scoped():
    token = issue(scopes=["read_registry", "read_repository"])
    events = token.collect_events()
    assert [type(event).__name__ for event in events] == ["Created", "Scoped"]
    assert events[1].scopes == ["read_repository", "read_registry"]


def test_stream_id_follows_the_integer_id():
    assert issue(token_id=42).id == deploy_token_uuid(42)


def test_name_is_required():
    assert errors_of(name="") == {"name": ["can't be blank"]}
    assert "name" in errors_of(name="   ")


def test_name_is_at_most_255_characters():
    issue(name="n" * 255)
    assert errors_of(name="n" * 256) == {"name": ["is too long (maximum is 255 characters)"]}


def test_default_username_uses_the_id():
    assert issue(token_id=12).username == "gitlab+deploy-token-12"


def test_empty_username_means_default():
    assert issue(token_id=5, username="").username == "gitlab+deploy-token-5"


def test_custom_username_allows_letters_digits_and_symbols():
    assert issue(username="ci.bot+deploy_1-x").username == "ci.bot+deploy_1-x"


@pytest.mark.parametrize("bad", ["with space", "semi;colon", "slash/", "émoji", "a$b"])
def test_username_rejects_other_characters(bad):
    assert errors_of(username=bad) == {
        "username": ["can contain only letters, digits, '_', '-', '+', and '.'"]
    }


def test_username_is_at_most_255_characters():
    issue(username="u" * 255)
    assert "username" in errors_of(username="u" * 256)


def test_at_least_one_scope():
    assert errors_of(scopes=[]) == {"scopes": ["can't be blank"]}


def test_unknown_scope_is_rejected():
    assert "scopes" in errors_of(scopes=["read_repository", "write_repository"])


def test_scopes_are_kept_in_canonical_order_without_duplicates():
    token = issue(scopes=[*list(reversed(SCOPES)), "read_registry"])
    assert token.scopes == SCOPES


def test_every_error_is_reported_at_once():
    assert set(errors_of(name="", username="bad name", scopes=[])) == {"name", "username", "scopes"}


def test_expiry_date_means_midnight_utc():
    token = issue(expires_at=date(2026, 3, 1))
    assert token.expires_at == datetime(2026, 3, 1, tzinfo=UTC)


def test_expiry_datetime_is_kept_as_that_instant_in_utc():
    plus_two = timezone(timedelta(hours=2))
    token = issue(expires_at=datetime(2026, 3, 1, 8, 30, tzinfo=plus_two))
    assert token.expires_at == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
    assert token.expires_at.tzinfo == UTC


@pytest.mark.parametrize("expires_at", [NOW - timedelta(seconds=1), NOW, NOW.date(), date(1900, 1, 1)])
def test_an_expiry_now_or_in_the_past_is_accepted_and_the_token_is_expired_at_once(expires_at):
    """behaviour [expiry]: GitLab validates only the format; such a token is simply expired."""
    token = issue(expires_at=expires_at)
    assert token.is_expired(NOW)
    assert not token.is_active(NOW)


@pytest.mark.parametrize(
    "expires_at",
    [
        date(1899, 12, 31),
        datetime(1900, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=2))),  # before year 1 in UTC
        datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-2))),  # past year 9999 in UTC
    ],
)
def test_an_expiry_outside_the_calendar_range_is_refused(expires_at):
    assert errors_of(expires_at=expires_at) == {"expires_at": ["must be between 1900-01-01 and 9999-12-31"]}


def test_the_last_day_of_the_calendar_is_accepted():
    assert issue(expires_at=date(9999, 12, 31)).expires_at == datetime(9999, 12, 31, tzinfo=UTC)


def test_no_expiry_never_expires():
    token = issue(expires_at=None)
    assert not token.is_expired(datetime(2999, 1, 1, tzinfo=UTC))


def test_expired_exactly_at_the_expiry_instant():
    token = issue(expires_at=date(2026, 2, 1))
    boundary = datetime(2026, 2, 1, tzinfo=UTC)
    assert token.is_active(boundary - timedelta(microseconds=1))
    assert token.is_expired(boundary)
    assert not token.is_active(boundary)


def test_revoke_records_one_event_and_is_idempotent():
    token = issue()
    token.collect_events()
    assert token.revoke(actor=ACTOR, now=NOW)
    assert not token.revoke(actor=ACTOR, now=NOW)
    assert [type(e).__name__ for e in token.collect_events()] == ["Revoked"]
    assert not token.is_active(NOW)


def test_expiry_is_recorded_only_once_the_instant_has_passed():
    token = issue(expires_at=date(2026, 2, 1))
    token.collect_events()
    assert not token.record_expiry(now=datetime(2026, 1, 31, 23, 59, tzinfo=UTC))
    assert token.record_expiry(now=datetime(2026, 2, 1, tzinfo=UTC))
    assert not token.record_expiry(now=datetime(2026, 2, 2, tzinfo=UTC))
    assert [type(e).__name__ for e in token.collect_events()] == ["Expired"]


def test_a_token_without_expiry_never_records_expiry():
    token = issue(expires_at=None)
    assert not token.record_expiry(now=datetime(2999, 1, 1, tzinfo=UTC))


def test_an_interval_is_notified_at_most_once():
    token = issue(expires_at=date(2026, 1, 15))
    token.collect_events()
    assert token.record_notification(7, message_id="<m>", recipients=["a@x"], actor=ACTOR, now=NOW)
    assert not token.record_notification(7, message_id="<m>", recipients=["a@x"], actor=ACTOR, now=NOW)
    assert len(token.collect_events()) == 1


def test_only_the_three_intervals_exist():
    token = issue(expires_at=date(2026, 1, 15))
    with pytest.raises(ValidationError):
        token.record_notification(14, message_id="<m>", recipients=[], actor=ACTOR, now=NOW)


def test_a_claim_blocks_other_senders_until_its_lease_ends():
    token = issue(expires_at=date(2026, 1, 15))
    lease_end = NOW + timedelta(minutes=5)
    assert token.claim_notification(7, message_id="<m>", lease_until=lease_end, actor=ACTOR, now=NOW)
    assert not token.claim_notification(7, message_id="<m>", lease_until=lease_end, actor=ACTOR, now=NOW)
    assert token.claim_notification(
        7, message_id="<m>", lease_until=lease_end + timedelta(minutes=5), actor=ACTOR, now=lease_end
    )


def test_nothing_happens_to_a_deleted_token():
    token = issue(expires_at=date(2026, 2, 1))
    token.delete(actor=ACTOR, now=NOW)
    assert not token.is_active(NOW)
    for command in (
        lambda: token.revoke(actor=ACTOR, now=NOW),
        lambda: token.delete(actor=ACTOR, now=NOW),
        lambda: token.record_expiry(now=datetime(2026, 3, 1, tzinfo=UTC)),
        lambda: token.record_notification(7, message_id="<m>", recipients=[], actor=ACTOR, now=NOW),
        lambda: token.narrow_scopes(["read_repository"], actor=ACTOR, now=NOW),
    ):
        with pytest.raises(TokenDeleted):
            command()


def test_scopes_can_only_be_narrowed():
    token = issue(scopes=["read_repository", "read_registry"])
    token.collect_events()
    assert token.narrow_scopes(["read_registry"], actor=ACTOR, now=NOW)
    assert token.scopes == ("read_registry",)
    with pytest.raises(ValidationError):
        token.narrow_scopes(["read_registry", "write_registry"], actor=ACTOR, now=NOW)


def test_rotation_keeps_the_old_digest_only_for_the_grace_period():
    token = issue()
    token.rotate(digest="e" * 64, grace_until=NOW + timedelta(hours=1), actor=ACTOR, now=NOW)
    assert token.digest == "e" * 64
    assert token.previous_digest == "d" * 64
    token.rotate(digest="f" * 64, grace_until=None, actor=ACTOR, now=NOW)
    assert token.previous_digest is None


def test_events_carry_the_actor_and_address():
    token = issue()
    created = token.collect_events()[0]
    assert created.actor == {"kind": "user", "id": 1, "username": "root", "address": "192.0.2.1"}


def test_events_never_carry_a_token_value():
    token = issue()
    for event in token.collect_events():
        assert not any(isinstance(v, str) and v.startswith("gldt-") for v in event.__dict__.values())


@pytest.mark.parametrize(
    ("days", "interval"),
    [
        (-1, None),
        (0, 7),
        (6, 7),
        (7, 7),
        (8, 30),
        (15, 30),
        (30, 30),
        (31, 60),
        (45, 60),
        (60, 60),
        (61, None),
    ],
)
def test_gitlab_notification_windows(days, interval):
    today = date(2026, 1, 10)
    assert due_interval(datetime(2026, 1, 10, tzinfo=UTC) + timedelta(days=days), today) == interval


def test_no_backfill_a_token_first_seen_at_six_days_is_due_only_the_seven_day_mail():
    token = issue(expires_at=NOW + timedelta(days=6))
    assert token.interval_due(NOW) == 7


def test_revoked_token_is_due_nothing():
    token = issue(expires_at=NOW + timedelta(days=6))
    token.revoke(actor=ACTOR, now=NOW)
    assert token.interval_due(NOW) is None


def test_an_intervals_intent_is_recorded_once_and_never_after_it_was_sent():
    token = issue(expires_at=date(2026, 1, 15))
    token.collect_events()
    assert token.mark_notification_due(7, now=NOW)
    assert not token.mark_notification_due(7, now=NOW)
    token.record_notification(30, message_id="<m>", recipients=[], actor=ACTOR, now=NOW)
    assert not token.mark_notification_due(30, now=NOW)
    assert [type(e).__name__ for e in token.collect_events()] == ["NotificationDue", "Notified"]


def test_a_failed_send_releases_the_claim_at_once():
    token = issue(expires_at=date(2026, 1, 15))
    lease_end = NOW + timedelta(minutes=5)
    assert token.claim_notification(7, message_id="<m>", lease_until=lease_end, actor=ACTOR, now=NOW)
    assert token.release_notification(7, message_id="<m>", error="451 later", actor=ACTOR, now=NOW)
    assert not token.release_notification(7, message_id="<m>", error="again", actor=ACTOR, now=NOW)
    assert token.claim_notification(7, message_id="<m>", lease_until=lease_end, actor=ACTOR, now=NOW)


@pytest.mark.parametrize("bad", ["nul\x00", "bell\x07", "del\x7f", "lone\ud800"])
def test_names_with_control_characters_never_enter_an_event(bad):
    assert "name" in errors_of(name=bad)
