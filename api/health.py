"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

health = Blueprint("health", __name__)


@health.get("/-/health")
def liveness() -> ResponseReturnValue:
    """The process answers; says nothing about its dependencies."""
    return jsonify(status="ok")


@health.get("/-/readiness")
def readiness() -> ResponseReturnValue:
    """Ready when the database answers and the projections are close to the head of the log."""
    from api.app import runtime_of

    runtime = runtime_of(current_app)
    try:
        statuses = runtime.projector.status()
    except Exception as error:  # any database failure means "not ready", never a 500
        return jsonify(
            status="failed", checks={"database": {"status": "failed", "message": type(error).__name__}}
        ), 503
    checks = {
        status.name: {"status": "ok", "position": status.position, "head": status.head, "lag": status.lag}
        for status in statuses
    }
    return jsonify(status="ok", checks={"database": {"status": "ok"}, **checks})
