"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from api.context import runtime_of
from infrastructure.db import as_utc_text

health = Blueprint("health", __name__)


@health.get("/-/health")
def liveness() -> ResponseReturnValue:
    """The process answers; says nothing about its dependencies."""
    return jsonify(status="ok")


@health.get("/-/readiness")
def readiness() -> ResponseReturnValue:
    """Ready when the database answers within the probe's deadline and accepts writes, and the activity writer
    is not stalled (rows waiting, no progress for longer than its ``stall_after``). The projections' positions
    are reported beside."""
    runtime = runtime_of(current_app)
    activity = _activity_check()
    activity_ok = activity is None or activity["status"] == "ok"
    extra = {} if activity is None else {"activity": activity}
    try:
        statuses, writable = runtime.probe.ask(
            lambda: (runtime.projector.status(), runtime.db.accepts_writes())
        )
    except Exception as error:  # any database failure means "not ready", never a 500
        message = str(error) if isinstance(error, TimeoutError) else type(error).__name__
        return jsonify(
            status="failed", checks={"database": {"status": "failed", "message": message}, **extra}
        ), 503
    if not writable:
        return jsonify(
            status="failed",
            checks={"database": {"status": "failed", "message": "the database refuses writes"}, **extra},
        ), 503
    checks = {
        status.name: {"status": "ok", "position": status.position, "head": status.head, "lag": status.lag}
        for status in statuses
    }
    body = jsonify(
        status="ok" if activity_ok else "failed", checks={"database": {"status": "ok"}, **checks, **extra}
    )
    return (body, 200) if activity_ok else (body, 503)


def _activity_check() -> dict[str, Any] | None:
    """None when this app records no activity. A stalled writer loses nothing yet (rows wait in memory), but
    it will once the queue is full, and a restart would lose what is queued: the orchestrator must know."""
    from api.activity import activity_of

    recorder = activity_of(current_app)
    if recorder is None:
        return None
    stats = recorder.stats()
    check: dict[str, Any] = {
        "status": "ok",
        "queued": stats.depth,
        "oldest_queued_age_seconds": round(stats.oldest_queued_age, 3),
        "last_write_at": None if stats.last_write_at is None else as_utc_text(stats.last_write_at),
        "set_aside": stats.set_aside,
        "dropped": stats.dropped,
    }
    if stats.stalled_for > recorder.stall_after:
        check["status"] = "failed"
        check["message"] = (
            f"{stats.depth} activity rows waiting, writer without progress for {stats.stalled_for:.0f} s "
            f"(limit {recorder.stall_after:g} s)"
        )
    return check
