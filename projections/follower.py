"""Following the database: run one step each time something may have changed, until told to stop.

On PostgreSQL the step runs as soon as a ``NOTIFY`` arrives on the channel, and at the latest one
``interval`` after the previous run; SQLite has no notifications, so there it runs every ``interval``. The
connection that listens is bounded like every other (``POSTGRES_BOUNDS``): a server that stops answering is
noticed, and the follower reconnects until it is back. Failures are logged once per outage (and again when
the failure changes), and the recovery once, not on every retry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from infrastructure.db import POSTGRES_BOUNDS, Database, database_unavailable

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        db: Database,
        step: Callable[[], object],
        *,
        channel: str | None,
        interval: float,
        activity: str,
        when_failing: str,
    ) -> None:
        """``channel``: where PostgreSQL announces changes (None: poll); ``activity`` names the step in logs
        and ``when_failing`` says what its failure means for the service."""
        self._db = db
        self._step = step
        self._channel = channel
        self._interval = interval
        self._activity = activity
        self._when_failing = when_failing
        self._failure: str | None = None  # the kind of failure of the outage under way, if any

    def run(self, stop: threading.Event) -> None:
        if self._channel is None:
            while not stop.is_set():
                self._step_logged(stop)
                stop.wait(self._interval)
            return
        self._listen(stop, self._channel)

    def _listen(self, stop: threading.Event, channel: str) -> None:
        import psycopg
        from psycopg import sql

        while not stop.is_set():
            try:
                with psycopg.connect(self._db.conninfo(), autocommit=True, **POSTGRES_BOUNDS) as connection:
                    connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    while not stop.is_set():
                        self._step_logged(stop)
                        for _ in connection.notifies(timeout=self._interval, stop_after=1):
                            pass
            except psycopg.OperationalError as error:
                self._failed(error, "lost its database connection")
                stop.wait(self._interval)

    def _step_logged(self, stop: threading.Event) -> None:
        try:
            self._step()
        except Exception as error:
            self._failed(error, "failed")
            # A failing step is not retried at once, however many notifications arrive meanwhile.
            stop.wait(self._interval)
            return
        if self._failure is not None:
            log.warning("%s works again", self._activity)
        self._failure = None

    def _failed(self, error: Exception, what_happened: str) -> None:
        unavailable = database_unavailable(error)
        # An outage shows as many exception classes (refused, timed out, pool exhausted): one kind. Anything
        # else is told apart by its class, so that a new fault is not hidden behind the one logged first.
        failure = "database unavailable" if unavailable else type(error).__qualname__
        if failure == self._failure:
            return  # the same outage, already logged: retried quietly until it ends
        self._failure = failure
        level = logging.WARNING if unavailable else logging.ERROR
        log.log(level, "%s %s; %s", self._activity, what_happened, self._when_failing, exc_info=error)
