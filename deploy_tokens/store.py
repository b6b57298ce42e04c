"""The event store (an ``eventsourcing`` Application) and integer-id allocation on top of it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

# Importing the aggregates registers their pinned topics before any stored event is read.
import domain.deploy_token
import domain.directory  # noqa: F401
from deploy_tokens.db import private_sqlite_file
from deploy_tokens.settings import DatabaseLocation


class EventStore(Application[UUID]):
    """Every lifecycle event of tokens and directory, in one totally ordered log."""

    name = "DeployTokens"

    def __init__(self, location: DatabaseLocation) -> None:
        if location.sqlite_path is not None:
            private_sqlite_file(location.sqlite_path)  # before the library's sqlite3 connection creates it
        super().__init__(env=persistence_env(location))

    def head(self) -> int:
        """The position of the newest event in the log (0 when empty)."""
        return self.recorder.max_notification_id() or 0


def persistence_env(location: DatabaseLocation) -> dict[str, str]:
    if location.dialect == "sqlite":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(location.sqlite_path),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": location.dbname,
        "POSTGRES_HOST": location.host,
        "POSTGRES_PORT": str(location.port),
        "POSTGRES_USER": location.user,
        "POSTGRES_PASSWORD": location.password,
        "POSTGRES_SCHEMA": location.schema,
        "POSTGRES_POOL_SIZE": "4",
        "POSTGRES_MAX_OVERFLOW": "8",
        # Leave POSTGRES_ENABLE_DB_FUNCTIONS off: in 9.5.6 it skips the table lock and loses events.
    }


class IdAllocator:
    """Allocates dense integer ids by claiming the stream ``stream_of(n)`` in the event store.

    The first event of stream ``n`` can be stored only once (the store's primary key), so two processes that
    pick the same ``n`` cannot both succeed: the loser retries with ``n + 1``. Ids are never reused because
    streams are never deleted. Because ids are dense, the highest one is found by exponential and binary
    search over stream existence when a process first allocates.
    """

    def __init__(self, store: EventStore, stream_of: Callable[[int], UUID]) -> None:
        self._store = store
        self._stream_of = stream_of
        self._lock = threading.Lock()
        self._highest: int | None = None

    def _exists(self, number: int) -> bool:
        return self._stream_of(number) in self._store.repository

    def _find_highest(self, known: int = 0) -> int:
        """The highest allocated id, given that ``known`` is allocated (0: nothing known)."""
        if known == 0:
            if not self._exists(1):
                return 0
            known = 1
        low, high = known, known * 2
        while self._exists(high):
            low, high = high, high * 2
        while high - low > 1:  # invariant: low exists, high does not
            middle = (low + high) // 2
            if self._exists(middle):
                low = middle
            else:
                high = middle
        return low

    def save_new(
        self, build: Callable[[int], Sequence[Aggregate]], *, attempts: int = 1000
    ) -> tuple[int, list[Recording[Any]]]:
        """Build the aggregates for the next free id and save them atomically; return the id used.

        ``build`` may raise a domain error, which propagates. An IntegrityError that is not about the id
        (a claimed path, for instance) propagates too.
        """
        with self._lock:
            if self._highest is None:
                self._highest = self._find_highest()
            number = self._highest + 1
            for _ in range(attempts):
                aggregates = build(number)
                try:
                    recordings = self._store.save(*aggregates)
                except IntegrityError:
                    if not self._exists(number):
                        raise
                    number = self._find_highest(number) + 1
                    continue
                self._highest = number
                return number, recordings
        raise RuntimeError("could not allocate an id: too much contention")
