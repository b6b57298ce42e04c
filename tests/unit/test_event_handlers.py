"""A projection's handler table: dispatch by exact event class, and events no handler wants never decoded."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from domain.deploy_token import DeployToken
from projections.credentials import CredentialLookup
from projections.projection import EventHandlers, on


def _ignore(cursor: Any, event: Any, position: int) -> None:
    return None


def _stored(event_class: type) -> Notification:
    return Notification(
        originator_id="00000000-0000-0000-0000-000000000001",
        originator_version=1,
        topic=get_topic(event_class),
        state=b"{}",
        id=7,
    )


def test_two_handlers_for_one_class_are_refused():
    with pytest.raises(ValueError, match="Revoked"):
        EventHandlers(on(DeployToken.Revoked, _ignore), on(DeployToken.Revoked, _ignore))


def test_handlers_are_found_by_topic_for_their_class_only():
    handlers = EventHandlers(on(DeployToken.Revoked, _ignore))
    assert handlers.for_topic(get_topic(DeployToken.Revoked)) is _ignore
    assert handlers.for_topic(get_topic(DeployToken.Scoped)) is None
    assert handlers.event_classes == frozenset({DeployToken.Revoked})


def test_an_event_no_handler_wants_is_not_decoded():
    decoded: list[Notification] = []

    def decode(notification: Notification) -> Any:
        decoded.append(notification)
        raise AssertionError("decoded")

    CredentialLookup().apply_stored(None, _stored(DeployToken.NotificationDue), decode)  # type: ignore[arg-type]
    assert decoded == []
