"""``GET /metrics``: Prometheus text exposition (format 0.0.4), through ``prometheus_client``.

Series (all names prefixed ``deploy_tokens_``):

* ``auth_decisions_total{endpoint,action,result,reason}`` counter: every auth decision. ``endpoint`` is
  ``auth_request``, ``jwt`` or ``check``; ``result`` is ``allowed``, ``denied`` or ``unavailable`` (the
  credential index could not be confirmed current, reason ``stale_index``). Token exchanges count here too
  (``endpoint="oauth_token"``, ``action="token_exchange"``), by their refusal's reason code; ``unavailable``
  is an issuer that could not be reached.
* ``auth_decision_duration_seconds{endpoint}`` histogram: time spent answering one auth request (parsing,
  every decision it needed, recording), measured inside the view.
* ``auth_bans_total{endpoint}`` counter and ``auth_banned_addresses`` gauge: failed-credential bans.
* ``projection_position{projection}``, ``projection_lag_events{projection}`` and ``event_log_head`` gauges,
  from ``runtime.projector.status()`` at scrape time; ``projection_status_up`` is 0 when that failed.
* ``expiry_scan_last_success_timestamp_seconds`` gauge: when the last expiry scan that succeeded finished
  (Unix time; 0: none recorded), read at scrape time (``deploy-tokens schedule`` tells the rest).
* ``audit_stream_lag_events{destination_id,destination}``, ``audit_stream_failures_total{…}`` and the other
  audit streaming series, read at scrape time (listed in ``api/audit_streaming.py``).
* ``credential_index_age_seconds`` gauge: time since the in-memory index was last confirmed current;
  ``credential_index_tokens`` gauge.
* ``activity_queue_depth``, ``activity_oldest_queued_age_seconds`` (by the oldest unwritten row's own
  timestamp), ``activity_stalled_seconds`` (time without progress while rows wait; readiness fails past
  the recorder's ``stall_after``) and ``activity_last_write_timestamp_seconds`` (Unix time; 0: never)
  gauges; ``activity_dropped_total``, ``activity_written_total``, ``activity_write_errors_total`` and
  ``activity_set_aside_total`` (rows the database refused on their own, kept in
  ``token_activity_rejected``) counters. Present once activity recording is installed.

**Several worker processes** (the ``web`` process: gunicorn, ``api/gunicorn_conf.py``) use
``prometheus_client``'s multiprocess mode: the instance gives its workers a private folder
(``PROMETHEUS_MULTIPROC_DIR``), every counter and histogram of every worker lives in a memory-mapped file
there, and a scrape, whichever worker answers it, adds up the files of all workers (of exited ones too, so a
restarted worker never makes a counter go back). Each worker publishes its per-process figures (index age,
activity queue and counts, bans in force) every second; a scrape shows the worst of the live workers
(``livemax``: ages, stalls, the index size, bans; the last write's time is the latest) or their sum
(``livesum``: the queue), and sums the activity counters. The database's figures are read at scrape time.
Without the folder (the embedded server's one worker, tests) the same series come from the process itself.

The auth hot path pays one dict lookup and one ``prometheus_client`` increment per series: each labelled
child is looked up once and kept.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import prometheus_client
from flask import Blueprint, Flask, Response, current_app
from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from api.audit_streaming import AuditStreamFigures
from api.context import runtime_of
from api.openapi import operation
from infrastructure.scan_runs import ScanRuns

__all__ = ["METRICS_KEY", "Counter", "Histogram", "Metrics", "metrics", "metrics_of"]

log = logging.getLogger(__name__)

METRICS_KEY = "deploy_tokens.metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PUBLISH_INTERVAL = 1.0  # seconds between a worker's publications of its per-process figures

# The series are those of the exposition this replaced: no ``_created`` companions.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

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


def _render(registry: CollectorRegistry) -> list[str]:
    return generate_latest(registry).decode().splitlines()


def _sample(collector: Collector, name: str, labels: dict[str, str]) -> float:
    for family in collector.collect():
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


class Counter:
    """A ``prometheus_client`` counter whose labelled children are kept by label tuple, so that counting on
    the hot path is one dict lookup and one increment."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.labels = tuple(labels)
        self.registry = CollectorRegistry() if registry is None else registry
        self._metric = prometheus_client.Counter(name, help_text, self.labels, registry=self.registry)
        self._children: dict[tuple[str, ...], Any] = {} if self.labels else {(): self._metric}

    def _child(self, label_values: tuple[str, ...]) -> Any:
        child = self._children.get(label_values)
        if child is None:
            child = self._children[label_values] = self._metric.labels(*label_values)
        return child

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        child = self._children.get(label_values)
        if child is None:
            child = self._child(label_values)
        child.inc(amount)

    def value(self, *label_values: str) -> float:
        """This process's count (with several workers, ``/metrics`` adds up all of theirs)."""
        return _sample(self._metric, self.name, dict(zip(self.labels, label_values, strict=True)))

    def render(self) -> list[str]:
        """This counter alone, as exposition lines (with ``registry`` shared, every series in it)."""
        return _render(self.registry)


class Histogram:
    """A ``prometheus_client`` histogram with its labelled children kept, like :class:`Counter`."""

    def __init__(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Iterable[float] = DURATION_BUCKETS,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.labels = tuple(labels)
        self.registry = CollectorRegistry() if registry is None else registry
        self._metric = prometheus_client.Histogram(
            name, help_text, self.labels, registry=self.registry, buckets=tuple(sorted(buckets))
        )
        self._children: dict[tuple[str, ...], Any] = {} if self.labels else {(): self._metric}

    def observe(self, value: float, *label_values: str) -> None:
        child = self._children.get(label_values)
        if child is None:
            child = self._children[label_values] = self._metric.labels(*label_values)
        child.observe(value)

    def count(self, *label_values: str) -> int:
        labels = dict(zip(self.labels, label_values, strict=True))
        return int(_sample(self._metric, f"{self.name}_count", labels))

    def render(self) -> list[str]:
        return _render(self.registry)


# Per-process figures: (series, help, how several live workers combine).
Combine = Literal["livemax", "livesum"]
_PROCESS_GAUGES: tuple[tuple[str, str, Combine], ...] = (
    (
        "deploy_tokens_credential_index_age_seconds",
        "Seconds since the in-memory credential index was last confirmed current.",
        "livemax",
    ),
    ("deploy_tokens_credential_index_tokens", "Tokens held by the credential index.", "livemax"),
    (
        "deploy_tokens_auth_banned_addresses",
        "Client addresses refused by every auth endpoint right now (failed-credential bans in force).",
        "livemax",
    ),
)
_ACTIVITY_GAUGES: tuple[tuple[str, str, Combine], ...] = (
    ("deploy_tokens_activity_queue_depth", "Activity rows waiting to be written.", "livesum"),
    (
        "deploy_tokens_activity_oldest_queued_age_seconds",
        "Age of the oldest activity row not written yet, by its own timestamp (0: none waiting).",
        "livemax",
    ),
    (
        "deploy_tokens_activity_stalled_seconds",
        "Seconds the activity writer has made no progress while rows wait (0: none waiting).",
        "livemax",
    ),
    (
        "deploy_tokens_activity_last_write_timestamp_seconds",
        "Unix time of the activity writer's last commit (0: none yet).",
        "livemax",
    ),
)
_ACTIVITY_COUNTERS: tuple[tuple[str, str], ...] = (
    ("dropped", "Activity rows dropped because the queue was full or they could not be kept."),
    ("written", "Activity rows written to token_activity."),
    ("write_errors", "Failed activity batch writes."),
    ("set_aside", "Activity rows the database refused on their own, kept in token_activity_rejected."),
)


def _values_in_files() -> None:
    """Keep this process's values in the multiprocess folder's files.

    ``prometheus_client`` chooses where values live when it is first imported, from the environment. The web
    process's master imports this package before its ``on_starting`` hook names the folder, so the choice is
    made again here, in the worker, before its first metric exists (as the library itself would have, had
    the folder been named earlier)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class Metrics:
    """One application's series (kept in ``app.extensions``, so test apps never share counts)."""

    def __init__(self, app: Flask, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            _values_in_files()
        self.registry = registry = CollectorRegistry()
        self.auth_decisions = Counter(
            "deploy_tokens_auth_decisions_total",
            "Auth decisions by endpoint, action, result and reason.",
            ("endpoint", "action", "result", "reason"),
            registry=registry,
        )
        self.auth_duration = Histogram(
            "deploy_tokens_auth_decision_duration_seconds",
            "Time to answer one auth request, by endpoint.",
            ("endpoint",),
            registry=registry,
        )
        self.auth_bans = Counter(
            "deploy_tokens_auth_bans_total",
            "Client addresses banned after repeated failed credentials, by the endpoint of the last failure.",
            ("endpoint",),
            registry=registry,
        )
        self._gauges = {
            name: prometheus_client.Gauge(name, text, registry=registry, multiprocess_mode=mode)
            for name, text, mode in _PROCESS_GAUGES
        }
        self._activity_gauges: dict[str, prometheus_client.Gauge] = {}
        self._activity_counters: dict[str, prometheus_client.Counter] = {}
        self._activity_published: dict[str, int] = {}
        self._publish_lock = threading.Lock()
        self._database = _DatabaseFigures(app)
        registry.register(self._database)
        self._streaming = AuditStreamFigures(app)  # audit streaming: lag and failures per destination
        registry.register(self._streaming)

    # Per-process figures ----------------------------------------------------------------------------------

    def publish(self, app: Flask) -> None:
        """Set this process's gauges and bring its activity counters up to date (at each scrape, and every
        second from each worker when several add up)."""
        runtime = runtime_of(app)
        index = runtime.index
        confirmed = index.confirmed_at
        with self._publish_lock:
            age = math.inf if confirmed is None else max(time.monotonic() - confirmed, 0.0)
            self._gauges["deploy_tokens_credential_index_age_seconds"].set(age)
            self._gauges["deploy_tokens_credential_index_tokens"].set(len(index))
            banned = runtime.bans.stats().banned_addresses
            self._gauges["deploy_tokens_auth_banned_addresses"].set(banned)
            self._publish_activity(app)

    def _publish_activity(self, app: Flask) -> None:
        from api.activity import activity_of

        recorder = activity_of(app)
        if recorder is None:
            return
        if not self._activity_gauges:
            for name, text, mode in _ACTIVITY_GAUGES:
                self._activity_gauges[name] = prometheus_client.Gauge(
                    name, text, registry=self.registry, multiprocess_mode=mode
                )
            for name, text in _ACTIVITY_COUNTERS:
                series = f"deploy_tokens_activity_{name}_total"
                self._activity_counters[name] = prometheus_client.Counter(
                    series, text, registry=self.registry
                )
                self._activity_published[name] = 0
        stats = recorder.stats()
        last_write = 0.0 if stats.last_write_at is None else stats.last_write_at.timestamp()
        for name, value in (
            ("deploy_tokens_activity_queue_depth", float(stats.depth)),
            ("deploy_tokens_activity_oldest_queued_age_seconds", stats.oldest_queued_age),
            ("deploy_tokens_activity_stalled_seconds", stats.stalled_for),
            ("deploy_tokens_activity_last_write_timestamp_seconds", last_write),
        ):
            self._activity_gauges[name].set(value)
        for name, total in (
            ("dropped", stats.dropped),
            ("written", stats.written),
            ("write_errors", stats.write_errors),
            ("set_aside", stats.set_aside),
        ):
            delta = total - self._activity_published[name]
            if delta > 0:
                self._activity_counters[name].inc(delta)
                self._activity_published[name] = total

    def publisher(self, app: Flask) -> Callable[[threading.Event], None]:
        """A background thread's target: publish every second until ``stop`` is set."""

        def run(stop: threading.Event) -> None:
            failing = False
            while not stop.wait(PUBLISH_INTERVAL):
                try:
                    self.publish(app)
                    failing = False
                except Exception:
                    if not failing:
                        log.exception("publishing this worker's metrics failed; retrying every second")
                    failing = True

        return run

    # The exposition ---------------------------------------------------------------------------------------

    def exposition(self, app: Flask) -> bytes:
        self.publish(app)
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        WorkerFilesCollector(registry, self.multiprocess_dir)
        registry.register(self._database)
        registry.register(self._streaming)
        return generate_latest(registry)

    def render(self, app: Flask) -> str:
        return self.exposition(app).decode()


class _DatabaseFigures(Collector):
    """What the database says at scrape time, the same whichever worker answers: projection positions and
    lag, and the last successful expiry scan. Asked through the runtime's probe, so a frozen database never
    holds a scrape longer than the probe's deadline."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.scan_runs: ScanRuns | None = None

    def describe(self) -> Iterable[Any]:
        return []  # registered without collecting at registration time

    def collect(self) -> Iterable[GaugeMetricFamily]:
        runtime = runtime_of(self.app)
        try:
            statuses = runtime.probe.ask(runtime.projector.status)
            up = 1.0
        except Exception:  # the database is down or frozen: say so, and never fail or hold the scrape
            statuses = []
            up = 0.0
        yield GaugeMetricFamily(
            "deploy_tokens_projection_status_up",
            "1 when the projection positions could be read at scrape time.",
            value=up,
        )
        if statuses:
            yield GaugeMetricFamily(
                "deploy_tokens_event_log_head",
                "Position of the last event in the log.",
                value=statuses[0].head,
            )
            position = GaugeMetricFamily(
                "deploy_tokens_projection_position",
                "Position each projection has applied up to.",
                labels=("projection",),
            )
            lag = GaugeMetricFamily(
                "deploy_tokens_projection_lag_events",
                "Events in the log that each projection has not applied yet.",
                labels=("projection",),
            )
            for status in statuses:
                position.add_metric((status.name,), status.position)
                lag.add_metric((status.name,), status.lag)
            yield position
            yield lag
        if self.scan_runs is None:
            self.scan_runs = ScanRuns(runtime.db)
        runs = self.scan_runs
        try:
            success = runtime.probe.ask(runs.last_success)
        except Exception:
            return  # unknown now: no sample rather than a wrong one
        finished = None if success is None else success.finished_at
        yield GaugeMetricFamily(
            "deploy_tokens_expiry_scan_last_success_timestamp_seconds",
            "Unix time the last successful expiry scan finished (0: none recorded).",
            value=0.0 if finished is None else finished.timestamp(),
        )


class WorkerFilesCollector(MultiProcessCollector):
    """Adds up the workers' files, leaving out a file that has no header yet.

    A worker creates its file first and sizes it after, so a scrape can meet a file of 0 bytes; a worker
    killed in between leaves it so for good (its pid never comes back). Such a file holds no counts, but read as
    it is it fails the whole exposition: every scrape would answer 500 until someone deleted it by hand."""

    def __init__(self, registry: CollectorRegistry, path: Path) -> None:
        super().__init__(registry, path=str(path))  # type: ignore[no-untyped-call]
        self.folder = path

    def collect(self) -> Iterable[Metric]:
        try:
            return self._merge_readable()
        except FileNotFoundError:
            # The arbiter removed a dead worker's live gauges between the listing and the reading: list again.
            return self._merge_readable()

    def _merge_readable(self) -> Iterable[Metric]:
        files = [str(path) for path in self.folder.glob("*.db") if _has_header(path)]
        return self.merge(files, accumulate=True)  # type: ignore[no-untyped-call,no-any-return]


_FILE_HEADER_BYTES = 8  # the used-bytes counter and its padding


def _has_header(path: Path) -> bool:
    try:
        return path.stat().st_size >= _FILE_HEADER_BYTES
    except FileNotFoundError:
        return False


def metrics_of(app: Flask) -> Metrics:
    found = app.extensions.get(METRICS_KEY)
    if isinstance(found, Metrics):
        return found
    created = Metrics(app, runtime_of(app).settings.metrics_dir)
    return app.extensions.setdefault(METRICS_KEY, created)  # type: ignore[no-any-return]


@metrics.get("/metrics")
@operation("Prometheus metrics (text exposition format)", tag="operations", auth="none", errors=())
def prometheus_metrics() -> Response:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return Response(metrics_of(app).exposition(app), status=200, content_type=CONTENT_TYPE)
