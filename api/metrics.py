"""``GET /metrics``: Prometheus text exposition (format 0.0.4), hand-written.

``prometheus_client`` is not a dependency of the service, and the handful of series below does not justify
one: a counter is a dict of label tuples, a histogram a list of bucket counts, each behind its own lock
(uncontended, well under a microsecond on the auth hot path).

Series (all names prefixed ``deploy_tokens_``):

* ``auth_decisions_total{endpoint,action,result,reason}`` counter: every auth decision. ``endpoint`` is
  ``auth_request``, ``jwt`` or ``check``; ``result`` is ``allowed``, ``denied`` or ``unavailable`` (the
  credential index could not be confirmed current, reason ``stale_index``).
* ``auth_decision_duration_seconds{endpoint}`` histogram: time spent answering one auth request (parsing,
  every decision it needed, recording), measured inside the view.
* ``projection_position{projection}``, ``projection_lag_events{projection}`` and ``event_log_head`` gauges,
  from ``runtime.projector.status()`` at scrape time; ``projection_status_up`` is 0 when that failed.
* ``credential_index_age_seconds`` gauge: time since the in-memory index was last confirmed current;
  ``credential_index_tokens`` gauge.
* ``activity_queue_depth``, ``activity_oldest_queued_age_seconds`` (by the oldest unwritten row's own
  timestamp), ``activity_stalled_seconds`` (time without progress while rows wait; readiness fails past
  the recorder's ``stall_after``) and ``activity_last_write_timestamp_seconds`` (Unix time; 0: never)
  gauges; ``activity_dropped_total``, ``activity_written_total``, ``activity_write_errors_total`` and
  ``activity_set_aside_total`` (rows the database refused on their own, kept in
  ``token_activity_rejected``) counters. Present once activity recording is installed.

Values are per process: with several gunicorn workers each keeps its own counters (as with
``prometheus_client`` outside its multiprocess mode); the embedded server runs one worker.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterable, Sequence

from flask import Blueprint, Flask, Response, current_app

from api.context import runtime_of
from api.openapi import operation

__all__ = ["METRICS_KEY", "Counter", "Histogram", "Metrics", "metrics", "metrics_of"]

METRICS_KEY = "deploy_tokens.metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Auth answers take tens of microseconds in-process; the tail covers a refresh of the index (a database read).
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

metrics = Blueprint("metrics", __name__)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _header(name: str, help_text: str, kind: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


class Counter:
    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        lines = _header(self.name, self.help, "counter")
        lines += [f"{self.name}{_labels(self.labels, key)} {_number(value)}" for key, value in items]
        return lines


class Histogram:
    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DURATION_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help_text
        self.labels = tuple(labels)
        self.buckets = tuple(sorted(buckets))
        # Per label tuple: per-bucket (non-cumulative) counts, the +Inf overflow last, then sum.
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        slot = bisect.bisect_left(self.buckets, value)  # le: a value equal to a bound counts in it
        with self._lock:
            counts = self._counts.get(label_values)
            if counts is None:
                counts = self._counts[label_values] = [0] * (len(self.buckets) + 1)
                self._sums[label_values] = 0.0
            counts[slot] += 1
            self._sums[label_values] += value

    def count(self, *label_values: str) -> int:
        with self._lock:
            return sum(self._counts.get(label_values, ()))

    def render(self) -> list[str]:
        with self._lock:
            snapshot = sorted((key, list(counts), self._sums[key]) for key, counts in self._counts.items())
        lines = _header(self.name, self.help, "histogram")
        for key, counts, total in snapshot:
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {running}")
        return lines


class Metrics:
    """One application's series (kept in ``app.extensions`` so test apps never share counts)."""

    def __init__(self) -> None:
        self.auth_decisions = Counter(
            "deploy_tokens_auth_decisions_total",
            "Auth decisions by endpoint, action, result and reason.",
            ("endpoint", "action", "result", "reason"),
        )
        self.auth_duration = Histogram(
            "deploy_tokens_auth_decision_duration_seconds",
            "Time to answer one auth request, by endpoint.",
            ("endpoint",),
        )
        self.auth_bans = Counter(
            "deploy_tokens_auth_bans_total",
            "Client addresses banned after repeated failed credentials, by the endpoint of the last failure.",
            ("endpoint",),
        )

    def render(self, app: Flask) -> str:
        lines = self.auth_decisions.render() + self.auth_duration.render() + self.auth_bans.render()
        lines += _runtime_lines(app)
        lines += _activity_lines(app)
        return "\n".join(lines) + "\n"


def metrics_of(app: Flask) -> Metrics:
    found = app.extensions.get(METRICS_KEY)
    if isinstance(found, Metrics):
        return found
    created = Metrics()
    return app.extensions.setdefault(METRICS_KEY, created)  # type: ignore[no-any-return]


def _gauge(name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> list[str]:
    """``samples``: (rendered label set, value)."""
    return _header(name, help_text, "gauge") + [
        f"{name}{labels} {_number(value)}" for labels, value in samples
    ]


def _runtime_lines(app: Flask) -> list[str]:
    runtime = runtime_of(app)
    lines: list[str] = []
    try:
        statuses = runtime.probe.ask(runtime.projector.status)
        up = 1.0
    except Exception:  # the database is down or frozen: say so, and never fail or hold the scrape
        statuses = []
        up = 0.0
    lines += _gauge(
        "deploy_tokens_projection_status_up",
        "1 when the projection positions could be read at scrape time.",
        [("", up)],
    )
    if statuses:
        lines += _gauge(
            "deploy_tokens_event_log_head", "Position of the last event in the log.", [("", statuses[0].head)]
        )
        lines += _gauge(
            "deploy_tokens_projection_position",
            "Position each projection has applied up to.",
            [(_labels(("projection",), (s.name,)), s.position) for s in statuses],
        )
        lines += _gauge(
            "deploy_tokens_projection_lag_events",
            "Events in the log that each projection has not applied yet.",
            [(_labels(("projection",), (s.name,)), s.lag) for s in statuses],
        )
    index = runtime.index
    confirmed = index.confirmed_at
    age = math.inf if confirmed is None else max(time.monotonic() - confirmed, 0.0)
    lines += _gauge(
        "deploy_tokens_credential_index_age_seconds",
        "Seconds since the in-memory credential index was last confirmed current.",
        [("", age)],
    )
    lines += _gauge(
        "deploy_tokens_credential_index_tokens", "Tokens held by the credential index.", [("", len(index))]
    )
    lines += _gauge(
        "deploy_tokens_auth_banned_addresses",
        "Client addresses refused by every auth endpoint right now (failed-credential bans in force).",
        [("", runtime.bans.stats().banned_addresses)],
    )
    return lines


def _activity_lines(app: Flask) -> list[str]:
    from api.activity import activity_of

    recorder = activity_of(app)
    if recorder is None:
        return []
    stats = recorder.stats()
    last_write = 0.0 if stats.last_write_at is None else stats.last_write_at.timestamp()
    lines: list[str] = []
    for gauge, help_text, sample in (
        ("queue_depth", "Activity rows waiting to be written.", float(stats.depth)),
        (
            "oldest_queued_age_seconds",
            "Age of the oldest activity row not written yet, by its own timestamp (0: none waiting).",
            stats.oldest_queued_age,
        ),
        (
            "stalled_seconds",
            "Seconds the activity writer has made no progress while rows wait (0: none waiting).",
            stats.stalled_for,
        ),
        (
            "last_write_timestamp_seconds",
            "Unix time of the activity writer's last commit (0: none yet).",
            last_write,
        ),
    ):
        lines += _gauge(f"deploy_tokens_activity_{gauge}", help_text, [("", sample)])
    for name, help_text, value in (
        (
            "dropped",
            "Activity rows dropped because the queue was full or they could not be kept.",
            stats.dropped,
        ),
        ("written", "Activity rows written to token_activity.", stats.written),
        ("write_errors", "Failed activity batch writes.", stats.write_errors),
        (
            "set_aside",
            "Activity rows the database refused on their own, kept in token_activity_rejected.",
            stats.set_aside,
        ),
    ):
        series = f"deploy_tokens_activity_{name}_total"
        lines += [*_header(series, help_text, "counter"), f"{series} {value}"]
    return lines


@metrics.get("/metrics")
@operation("Prometheus metrics (text exposition format)", tag="operations", auth="none", errors=())
def prometheus_metrics() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    body = metrics_of(app).render(app)
    return Response(body, status=200, content_type=CONTENT_TYPE)
