"""The embedded default's scheduler: the same scan, in-process, daily at 01:00 UTC, with catch-up; each scan is
recorded (``embedded-<day>`` in ``expiry_scan_runs``), so a restart the same day does not scan again and
``deploy-tokens schedule`` can tell when the next one runs. Activity retention runs here too, once a day from
02:00 UTC when it is on (behaviour [retention])."""

from __future__ import annotations

import logging
import threading
from datetime import date

from deploy_tokens.runtime import Runtime
from infrastructure.scan_runs import ScanRuns
from workers.jobs import RETENTION_ACTOR, RETENTION_HOUR_UTC, SCAN_HOUR_UTC, run_inline_scan


def embedded_scan_id(day: date) -> str:
    return f"embedded-{day:%Y%m%d}"


log = logging.getLogger(__name__)


class EmbeddedScheduler:
    """Checks every ``interval`` seconds; scans once per UTC day, as soon as it is past 01:00 UTC.

    A process started after 01:00 scans at once (the catch-up), unless that day's scan is recorded as run
    (a restart); a failed scan is tried again on the next tick. The scan is idempotent anyway: a second
    scan on one day sends nothing twice.
    """

    def __init__(self, runtime: Runtime, *, interval: float = 30.0) -> None:
        self.runtime = runtime
        self.interval = interval
        self.last_day: date | None = None
        self.last_retention_day: date | None = None

    def tick(self) -> bool:
        now = self.runtime.clock.now()
        if now.hour < SCAN_HOUR_UTC or self.last_day == now.date():
            return False
        scan_id = embedded_scan_id(now.date())
        recorded = ScanRuns(self.runtime.db).get(scan_id)
        if recorded is None or recorded.status == "failed":
            run_inline_scan(self.runtime, source="embedded", scan_id=scan_id)
        self.last_day = now.date()
        return recorded is None or recorded.status == "failed"

    def retention_tick(self) -> bool:
        """Activity retention (behaviour [retention]), when it is on: once per UTC day from 02:00. A restart
        the same day runs it again only if that day recorded no archive; a run that found the lock taken, or
        failed, is tried again on the next tick. Returns whether it ran."""
        now = self.runtime.clock.now()
        if (
            self.runtime.settings.activity_retention_days is None
            or now.hour < RETENTION_HOUR_UTC
            or self.last_retention_day == now.date()
        ):
            return False
        retention = self.runtime.activity_retention()
        ran = not retention.ran_on(now) and retention.apply(RETENTION_ACTOR, now=now).status != "busy"
        if ran or retention.ran_on(now):
            self.last_retention_day = now.date()
        return ran

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("embedded expiry scan failed; retrying on the next tick")
            try:
                self.retention_tick()
            except Exception:
                log.exception("embedded activity retention failed; retrying on the next tick")
            stop.wait(self.interval)
