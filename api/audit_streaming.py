"""Audit event streaming destinations (behaviour [audit-streaming]): GitLab's path, administrators create and
delete them, administrators and auditors list them; and their figures for ``/metrics``.

Series (``/metrics``, read from the database at scrape time through the runtime's probe, labelled with the
destination's id and name):

* ``audit_stream_status_up`` gauge: 1 when the figures below could be read;
* ``audit_stream_lag_events`` gauge: audit events not yet acknowledged by the destination;
* ``audit_stream_position`` gauge: the log position up to which it acknowledged;
* ``audit_stream_delivered_total`` and ``audit_stream_failures_total`` counters: acknowledged deliveries and
  failed attempts (an error answer, a timeout, no connection);
* ``audit_stream_last_success_timestamp_seconds`` gauge: Unix time of its last acknowledgement (0: none).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields, validate
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.auth import require_admin, require_principal
from api.context import runtime, runtime_of
from api.openapi import operation
from api.params import load
from api.schemas import GitLabDateTime
from deploy_tokens.audit_streaming import Destination, stream_figures
from domain.audit_streaming import MAX_NAME_LENGTH, MAX_URL_LENGTH, STARTS, TOKEN_MAX_LENGTH

audit_streaming = Blueprint("audit_streaming", __name__, url_prefix="/api/v4/admin/audit_events/streaming")

_MISSING: dict[str, str | list[Any] | dict[Any, Any]] = {"required": "is missing", "null": "is missing"}


class DestinationCreateSchema(Schema):
    # Bounded here too (the domain gives the field messages): a huge value is refused before it is copied.
    name = fields.String(
        required=True, error_messages=_MISSING, validate=validate.Length(max=10 * MAX_NAME_LENGTH)
    )
    destination_url = fields.String(
        required=True, error_messages=_MISSING, validate=validate.Length(max=10 * MAX_URL_LENGTH)
    )
    verification_token = fields.String(
        load_default=None, allow_none=True, validate=validate.Length(max=10 * TOKEN_MAX_LENGTH)
    )
    start = fields.String(load_default="now", validate=validate.OneOf(STARTS))


class DestinationSchema(Schema):
    id = fields.Integer()
    name = fields.String()
    destination_url = fields.String()
    verification_token = fields.String(allow_none=True)
    start = fields.String()
    created_at = GitLabDateTime()


def _shown(destination: Destination) -> dict[str, Any]:
    shown: dict[str, Any] = DestinationSchema().dump(destination.__dict__)
    return shown


def _secret_response(body: Any, status: int = 200) -> Response:
    response: Response = jsonify(body)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"  # carries verification tokens
    return response


@audit_streaming.post("/destinations")
@operation(
    "Create an audit event streaming destination (administrators); start=beginning replays the whole log",
    tag="audit",
    body=DestinationCreateSchema,
    response=DestinationSchema,
    status=201,
)
def create_destination() -> ResponseReturnValue:
    principal = require_admin(writes=True)
    params = load(DestinationCreateSchema())
    created = (
        runtime()
        .audit_streaming()
        .create_destination(
            principal.actor,
            name=params["name"],
            destination_url=params["destination_url"],
            verification_token=params["verification_token"],
            start=params["start"],
        )
    )
    return _secret_response(_shown(created), 201)


@audit_streaming.get("/destinations")
@operation(
    "List the audit event streaming destinations (administrators; auditors, without verification tokens)",
    tag="audit",
    response=DestinationSchema,
    many=True,
)
def list_destinations() -> ResponseReturnValue:
    principal = require_principal()
    listed = runtime().audit_streaming().destinations(principal.actor)
    return _secret_response([_shown(destination) for destination in listed])


@audit_streaming.delete("/destinations/<int:destination_id>")
@operation("Delete an audit event streaming destination: deliveries to it stop", tag="audit", status=204)
def delete_destination(destination_id: int) -> ResponseReturnValue:
    principal = require_admin(writes=True)
    runtime().audit_streaming().delete_destination(principal.actor, destination_id)
    return "", 204


# /metrics ------------------------------------------------------------------------------------------------


class AuditStreamFigures(Collector):
    """Lag, position, deliveries and failures per destination, asked through the runtime's probe so that a
    frozen database never holds a scrape longer than the probe's deadline."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def describe(self) -> Iterable[Any]:
        return []  # registered without collecting at registration time

    def collect(self) -> Iterable[Metric]:
        runtime = runtime_of(self.app)
        try:
            figures = runtime.probe.ask(lambda: stream_figures(runtime.db))
        except Exception:  # the database is down or frozen: say so, never fail or hold the scrape
            yield GaugeMetricFamily(
                "deploy_tokens_audit_stream_status_up",
                "1 when the audit streaming figures could be read at scrape time.",
                value=0.0,
            )
            return
        yield GaugeMetricFamily(
            "deploy_tokens_audit_stream_status_up",
            "1 when the audit streaming figures could be read at scrape time.",
            value=1.0,
        )
        labels = ("destination_id", "destination")
        lag = GaugeMetricFamily(
            "deploy_tokens_audit_stream_lag_events",
            "Audit events a streaming destination has not acknowledged yet.",
            labels=labels,
        )
        position = GaugeMetricFamily(
            "deploy_tokens_audit_stream_position",
            "Log position up to which a streaming destination acknowledged the audit events.",
            labels=labels,
        )
        delivered = CounterMetricFamily(
            "deploy_tokens_audit_stream_delivered",
            "Audit events a streaming destination acknowledged (2xx).",
            labels=labels,
        )
        failures = CounterMetricFamily(
            "deploy_tokens_audit_stream_failures",
            "Failed delivery attempts to a streaming destination (error answers, timeouts, no connection).",
            labels=labels,
        )
        last_success = GaugeMetricFamily(
            "deploy_tokens_audit_stream_last_success_timestamp_seconds",
            "Unix time of a streaming destination's last acknowledgement (0: none yet).",
            labels=labels,
        )
        for figure in figures:
            values = (str(figure.destination_id), figure.name)
            lag.add_metric(values, figure.lag)
            position.add_metric(values, figure.position)
            delivered.add_metric(values, figure.delivered)
            failures.add_metric(values, figure.failures)
            last_success.add_metric(values, figure.last_success_at or 0.0)
        yield from (lag, position, delivered, failures, last_success)
