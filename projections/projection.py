"""What a projection is: a read model that owns its tables and applies stored events to them, and the typed
handler tables most projections are made of. ``projections.base`` runs them (the projector)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification
from eventsourcing.utils import resolve_topic

from infrastructure.db import Cursor

Decode = Callable[[Notification], DomainEventProtocol[Any]]


class StreamEvent(Protocol):
    """What every stored event carries: its stream, its place in the stream and when it happened."""

    @property
    def originator_id(self) -> UUID: ...

    @property
    def originator_version(self) -> int: ...

    @property
    def timestamp(self) -> datetime: ...


EventT = TypeVar("EventT")
StreamEventT = TypeVar("StreamEventT", bound=StreamEvent)
# What a projection's handlers apply events to: the batch's cursor, or a projection's own batch state.
ContextT = TypeVar("ContextT")


@dataclass(frozen=True)
class HandlerEntry(Generic[ContextT]):
    """One entry of a projection's handler table: an event class and the function that applies it."""

    event_class: type[Any]
    apply: Callable[[ContextT, Any, int], None]


#: An entry whose handler writes through the batch's cursor.
EventHandler = HandlerEntry[Cursor]


def on(event_class: type[EventT], handler: Callable[[ContextT, EventT, int], None]) -> HandlerEntry[ContextT]:
    """The entry for ``event_class``: mypy checks that ``handler`` takes events of that very class.

    A function rather than a generic entry class: the caller's expected type (a table of entries of any
    class) would otherwise be what the handler is checked against.
    """
    return HandlerEntry(event_class, handler)


class EventHandlers(Generic[ContextT]):
    """A projection's handlers, keyed by event class. Events of any other class are not applied."""

    def __init__(self, *entries: HandlerEntry[ContextT]) -> None:
        # ``Any``: each entry was checked against its own class by ``on``, and dispatch is by that exact class
        # (the mapper builds an event of exactly the class its topic names).
        self._by_class: dict[type[Any], Callable[[ContextT, Any, int], None]] = {}
        for entry in entries:
            if entry.event_class in self._by_class:
                raise ValueError(f"two handlers for {entry.event_class.__qualname__}")
            self._by_class[entry.event_class] = entry.apply
        self._by_topic: dict[str, Callable[[ContextT, Any, int], None] | None] = {}

    @property
    def event_classes(self) -> frozenset[type[Any]]:
        return frozenset(self._by_class)

    def for_topic(self, topic: str) -> Callable[[ContextT, Any, int], None] | None:
        """The handler for a stored event's topic, found without decoding the event."""
        try:
            return self._by_topic[topic]
        except KeyError:
            handler = self._by_topic[topic] = self._by_class.get(resolve_topic(topic))
            return handler


class Projection(ABC):
    """A read model: owns ``tables``, applies stored events to them through the cursor it is given."""

    name: str
    tables: tuple[str, ...]
    # Raise it whenever the same events would give other rows: start-up then rebuilds the projection.
    version: ClassVar[int] = 1

    @abstractmethod
    def schema(self) -> Sequence[str]:
        """CREATE TABLE / CREATE INDEX statements, idempotent (IF NOT EXISTS)."""

    @abstractmethod
    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        """Apply one stored event; must only touch this projection's tables, through ``cursor``."""

    def apply_batch(self, cursor: Cursor, notifications: Sequence[Notification], decode: Decode) -> None:
        """Apply a batch of stored events, in log order, inside the projector's transaction.

        By default one by one, pipelined. A projection that can do better with the whole batch in view
        (keep what it reads in memory, write once per row, in bulk) overrides this; the rows must come out as
        if its events had been applied one by one (the audit-trail test rebuilds with batches of one).
        """
        with cursor.pipelined():
            for notification in notifications:
                self.apply_stored(cursor, notification, decode)


class BatchedEventProjection(Projection, Generic[ContextT]):
    """A projection of decoded events whose handlers share one batch's state (``ContextT``).

    ``open_batch`` builds the state, given the events the batch will apply (e.g. to read every row they
    touch in one query); the handlers apply events to it, in log order; ``close_batch`` writes it.
    """

    handlers: ClassVar[EventHandlers[Any]]

    @abstractmethod
    def open_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> ContextT:
        """The state the handlers of one batch share; ``notifications`` are those they will apply."""

    @abstractmethod
    def close_batch(self, context: ContextT) -> None:
        """Write what the batch's handlers left in ``context`` (still inside the batch's transaction)."""

    def apply_batch(self, cursor: Cursor, notifications: Sequence[Notification], decode: Decode) -> None:
        # Most events concern few projections: one no handler wants is not even decoded.
        handled = [
            (handler, notification)
            for notification in notifications
            if (handler := self.handlers.for_topic(notification.topic)) is not None
        ]
        if not handled:
            return
        self._apply_handled(cursor, handled, decode)

    def _apply_handled(
        self,
        cursor: Cursor,
        handled: Sequence[tuple[Callable[[ContextT, Any, int], None], Notification]],
        decode: Decode,
    ) -> None:
        context = self.open_batch(cursor, [notification for _, notification in handled])
        for handler, notification in handled:
            handler(context, decode(notification), notification.id)
        self.close_batch(context)

    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        self.apply_batch(cursor, (notification,), decode)


class EventProjection(BatchedEventProjection[Cursor]):
    """A projection whose handlers write through the cursor, statement by statement."""

    def open_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> Cursor:
        return cursor

    def close_batch(self, context: Cursor) -> None:
        return None

    def _apply_handled(
        self,
        cursor: Cursor,
        handled: Sequence[tuple[Callable[[Cursor, Any, int], None], Notification]],
        decode: Decode,
    ) -> None:
        # Hundreds of small writes: pipelined on PostgreSQL, so that each is not a network round trip.
        with cursor.pipelined():
            super()._apply_handled(cursor, handled, decode)


_SECONDARY_INDEX = re.compile(r"\s*CREATE\s+INDEX\s+IF\s+NOT\s+EXISTS\s+(\w+)\s+ON\s", re.IGNORECASE)


def secondary_indexes(projection: Projection) -> list[str]:
    """The names of the non-unique indexes the projection's schema creates (``CREATE INDEX IF NOT EXISTS``)."""
    return [match[1] for statement in projection.schema() if (match := _SECONDARY_INDEX.match(statement))]
