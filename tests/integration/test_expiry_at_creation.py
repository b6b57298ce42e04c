"""A token whose expiry has passed when it is created (behaviour [expiry], [notifications]) is expired at once:
the notification projection, the daily scan and the mail sender all agree that it gets no mail, and its
expiry is recorded once (behaviour [expiry-event]). Both backends."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from email.message import EmailMessage

from domain.instance_settings import EXPIRING_NOTIFICATIONS_FLAG
from projections.notification_queries import due_tokens

from ..conftest import T0, World


class RecordingMailer:
    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []

    def send(self, message: EmailMessage) -> None:
        self.sent.append(message)


def create(world: World, expires_at: date | datetime, name: str = "deploy") -> int:
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name=name, scopes=["read_repository"], expires_at=expires_at
    )
    return issued.token.token_id


def test_tokens_expired_at_creation_get_no_mail_and_their_expiry_is_recorded_once(world: World):
    runtime = world.runtime
    assert runtime.uow.settings().feature_enabled(EXPIRING_NOTIFICATIONS_FLAG)
    expired = [
        create(world, T0.date()),
        create(world, T0 - timedelta(seconds=1)),
        create(world, date(2020, 1, 1)),
    ]
    in_a_week = create(world, T0.date() + timedelta(days=7))  # the control: inside its 7-day window

    runtime.projector.catch_up()
    assert {row.token_id for row in due_tokens(runtime.db, T0)} == {*expired, in_a_week}
    dispatched: list[tuple[int, int]] = []
    first = runtime.expiry_scan.run(lambda token_id, interval: dispatched.append((token_id, interval)))
    second = runtime.expiry_scan.run(lambda token_id, interval: None)

    assert dispatched == [(in_a_week, 7)]  # the control's mail only (it stays due until it is sent)
    assert (first.expired_recorded, second.expired_recorded) == (3, 0)
    for token_id in expired:
        assert [entry["event"] for entry in runtime.tokens.history(token_id)] == [
            "Created",
            "Scoped",
            "Expired",
        ]
    runtime.projector.catch_up()
    assert {row.token_id for row in due_tokens(runtime.db, T0)} == {in_a_week}


def test_the_sender_refuses_a_token_expired_at_creation(world: World):
    token_id = create(world, T0.date())
    mailer = RecordingMailer()
    notifier = world.runtime.expiry_notifier(mailer)

    assert [notifier.send(token_id, interval) for interval in (7, 30, 60)] == ["inactive"] * 3
    assert mailer.sent == []
