"""Auditor accounts (behaviour [auditors]): the pure rules, the principal's right to write, and the user
aggregate's flag, including users whose events were stored before auditors existed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    StoredEvent,
    UUIDAsHex,
)

from deploy_tokens.access import Principal
from domain.actors import Actor
from domain.auditors import may_write, reads_everything
from domain.errors import PermissionDenied
from domain.streams import stream_id
from domain.users import User
from projections.directory import UserRecord

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
ROOT = Actor.user(1, "root", is_admin=True)


# The pure rules ------------------------------------------------------------------------------------------

FLAGS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize(("is_admin", "is_auditor"), FLAGS)
def test_only_administrators_and_auditors_read_the_audit_records(is_admin: bool, is_auditor: bool):
    assert reads_everything(is_admin=is_admin, is_auditor=is_auditor) is (is_admin or is_auditor)


@pytest.mark.parametrize("scopes", [("api",), ("api", "read_api"), ("read_api",), ()])
def test_an_auditor_never_writes_whatever_the_token_scopes(scopes: tuple[str, ...]):
    assert may_write(scopes=scopes, is_admin=False, is_auditor=True) is False


@pytest.mark.parametrize(
    ("scopes", "expected"), [(("api",), True), (("read_api",), False), (("read_api", "api"), True)]
)
def test_an_administrator_who_is_also_an_auditor_keeps_the_administrators_rights(
    scopes: tuple[str, ...], expected: bool
):
    assert may_write(scopes=scopes, is_admin=True, is_auditor=True) is expected
    assert may_write(scopes=scopes, is_admin=True, is_auditor=False) is expected


@pytest.mark.parametrize(("scopes", "expected"), [(("api",), True), (("read_api",), False), ((), False)])
def test_anybody_else_writes_with_the_api_scope(scopes: tuple[str, ...], expected: bool):
    assert may_write(scopes=scopes, is_admin=False, is_auditor=False) is expected


# The principal applies them ------------------------------------------------------------------------------


def principal(
    *, is_admin: bool = False, is_auditor: bool = False, scopes: tuple[str, ...] = ("api",)
) -> Principal:
    record = UserRecord(7, "ann", "ann@example.com", "Ann", is_admin, False, 7, NOW)
    return Principal(record, scopes, None, lambda user_id: user_id == 7 and is_auditor)


def test_an_auditors_principal_is_refused_every_write_and_told_why():
    auditor = principal(is_auditor=True)
    assert auditor.can_write is False
    with pytest.raises(PermissionDenied, match=r"^403 Forbidden - auditors have read-only access$"):
        auditor.require_write()


def test_a_principal_without_the_api_scope_is_told_about_the_scope():
    with pytest.raises(PermissionDenied, match="insufficient_scope"):
        principal(scopes=("read_api",)).require_write()


def test_writers_pass():
    principal().require_write()
    principal(is_admin=True, is_auditor=True).require_write()


def test_the_flag_is_read_once_and_only_when_a_decision_needs_it():
    asked: list[int] = []

    def flag(user_id: int) -> bool:
        asked.append(user_id)
        return True

    record = UserRecord(7, "ann", "ann@example.com", "Ann", False, False, 7, NOW)
    read_only = Principal(record, ("read_api",), None, flag)
    assert read_only.can_write is False
    assert asked == []  # a token without the api scope writes nothing, auditor or not
    writer = Principal(record, ("api",), None, flag)
    assert (writer.can_write, writer.can_write, writer.is_auditor) == (False, False, True)
    assert asked == [7]
    admin = Principal(UserRecord(1, "root", "r@example.com", "R", True, False, 1, NOW), ("api",), None, flag)
    assert admin.can_write is True
    assert asked == [7]  # an administrator's flag is never read


# The user aggregate --------------------------------------------------------------------------------------


def registered(is_admin: bool = False) -> User:
    return User.register(
        user_id=7,
        namespace_id=7,
        username="ann",
        email="ann@example.com",
        name="Ann",
        is_admin=is_admin,
        actor=ROOT,
        now=NOW,
    )


def test_a_new_user_is_no_auditor_and_registering_records_no_flag_event():
    user = registered()
    assert user.is_auditor is False
    assert [type(event) for event in user.collect_events()] == [User.Registered]


def test_setting_and_clearing_the_flag_records_one_event_each_and_repeats_record_nothing():
    user = registered()
    user.collect_events()
    assert user.set_auditor(True, actor=ROOT, now=NOW) is True
    assert user.set_auditor(True, actor=ROOT, now=NOW) is False
    assert user.is_auditor is True
    assert user.set_auditor(False, actor=ROOT, now=NOW) is True
    events = user.collect_events()
    assert [(type(event), event.is_auditor) for event in events] == [  # type: ignore[attr-defined]
        (User.AuditorChanged, True),
        (User.AuditorChanged, False),
    ]
    assert events[0].actor == ROOT.as_event_data()  # who granted it, for the audit log
    assert user.is_auditor is False


def test_the_flag_event_has_a_pinned_topic():
    assert User.AuditorChanged.TOPIC == "deploy_tokens:User.AuditorChanged"


def _mapper() -> Mapper[object]:
    """The store's mapper, as the application builds it (JSON, the library's default transcodings)."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def _stored(topic: str, version: int, state: dict[str, object]) -> StoredEvent:
    return StoredEvent(
        originator_id=stream_id("user", 7),
        originator_version=version,
        topic=topic,
        state=json.dumps(state, separators=(",", ":")).encode(),
    )


# A user's events exactly as they were stored before auditor accounts existed.
OLD_REGISTERED = {
    "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-01T09:00:00+00:00"},
    "originator_topic": "deploy_tokens:User",
    "user_id": 7,
    "username": "ann",
    "email": "ann@example.com",
    "name": "Ann",
    "is_admin": False,
    "namespace_id": 7,
    "actor": {"kind": "user", "id": 1, "username": "root", "address": "192.0.2.1"},
}
OLD_BLOCKED = {
    "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-02T09:00:00+00:00"},
    "actor": {"kind": "user", "id": 1, "username": "root", "address": None},
}


def test_a_user_stored_before_auditors_existed_replays_as_no_auditor():
    mapper = _mapper()
    events = [
        mapper.to_domain_event(_stored("deploy_tokens:User.Registered", 1, OLD_REGISTERED)),
        mapper.to_domain_event(_stored("deploy_tokens:User.Blocked", 2, OLD_BLOCKED)),
    ]
    user = None
    for event in events:
        user = event.mutate(user)
    assert isinstance(user, User)
    assert (user.username, user.blocked, user.version) == ("ann", True, 2)
    assert user.is_auditor is False


def test_a_stored_flag_event_replays_after_old_events():
    mapper = _mapper()
    flagged = mapper.to_domain_event(
        _stored(
            "deploy_tokens:User.AuditorChanged",
            2,
            {
                "timestamp": {"_type_": "datetime_iso", "_data_": "2026-01-03T09:00:00+00:00"},
                "is_auditor": True,
                "actor": {"kind": "user", "id": 1, "username": "root", "address": None},
            },
        )
    )
    user = mapper.to_domain_event(_stored("deploy_tokens:User.Registered", 1, OLD_REGISTERED)).mutate(None)
    user = flagged.mutate(user)
    assert isinstance(user, User)
    assert user.is_auditor is True
    # and it round-trips through the mapper as it will be stored from now on
    again = mapper.to_domain_event(mapper.to_stored_event(flagged))
    assert again.is_auditor is True  # type: ignore[attr-defined]


def test_a_snapshot_taken_before_auditors_existed_restores_no_auditor():
    state = {
        "_id": uuid4(),
        "_version": 3,
        "_created_on": NOW,
        "_modified_on": NOW,
        "user_id": 7,
        "username": "ann",
        "email": "ann@example.com",
        "name": "Ann",
        "is_admin": False,
        "namespace_id": 7,
        "blocked": False,
    }
    snapshot = Snapshot(
        originator_id=state["_id"],
        originator_version=3,
        timestamp=NOW,
        topic="deploy_tokens:User",
        state=state,
    )
    user = snapshot.mutate(None)
    assert isinstance(user, User)
    assert user.is_auditor is False
