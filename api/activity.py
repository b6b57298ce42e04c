"""Per-token activity in the Flask app: one recorder per app, fed by the auth-check views.

The storage (table, queue, batched writer, queries) is ``infrastructure.activity``.
"""

from __future__ import annotations

from typing import Final

from flask import Flask

from deploy_tokens.runtime import Runtime
from infrastructure.activity import STALL_AFTER, ActivityRecorder, create_activity_table
from infrastructure.db import Database

__all__ = ["ACTIVITY_KEY", "activity_of", "install_activity"]

ACTIVITY_KEY: Final = "deploy_tokens.activity"


def install_activity(
    app: Flask,
    source: Runtime | Database,
    *,
    capacity: int = 100_000,
    batch_size: int = 500,
    interval: float = 0.2,
    stall_after: float = STALL_AFTER,
    start: bool = True,
) -> ActivityRecorder:
    """Create the table, attach a recorder to ``app`` and start its writer thread.

    ``source`` is the runtime (``install_activity(app, runtime)``) or its ``Database``. The writer stops
    and flushes at interpreter exit; call ``recorder.close()`` to stop it sooner (tests do, before the
    runtime closes its database). ``/-/readiness`` fails once rows have waited ``stall_after`` seconds
    without the writer making progress.
    """
    database = source if isinstance(source, Database) else source.db
    create_activity_table(database)
    previous = activity_of(app)
    if previous is not None:
        previous.close()
    recorder = ActivityRecorder(
        database, capacity=capacity, batch_size=batch_size, interval=interval, stall_after=stall_after
    )
    app.extensions[ACTIVITY_KEY] = recorder
    if start:
        recorder.start()
    return recorder


def activity_of(app: Flask) -> ActivityRecorder | None:
    recorder = app.extensions.get(ACTIVITY_KEY)
    return recorder if isinstance(recorder, ActivityRecorder) else None
