"""The embedded default's scheduler: the same scan, in-process, daily at 01:00 UTC, with catch-up."""

from __future__ import annotations

import logging
import threading
from datetime import date

from deploy_tokens.runtime import Runtime
from workers.jobs import SCAN_HOUR_UTC, InlineDispatcher

log = logging.getLogger(__name__)


class EmbeddedScheduler:
    """Checks every ``interval`` seconds; scans once per UTC day, as soon as it is past 01:00 UTC.

    A process started after 01:00 scans at once (the catch-up); the scan is idempotent, so a restart
    that scans a second time that day sends nothing twice.
    """

    def __init__(self, runtime: Runtime, *, interval: float = 30.0) -> None:
        self.runtime = runtime
        self.interval = interval
        self.last_day: date | None = None

    def tick(self) -> bool:
        now = self.runtime.clock.now()
        if now.hour < SCAN_HOUR_UTC or self.last_day == now.date():
            return False
        self.runtime.expiry_scan.run(InlineDispatcher(self.runtime.expiry_notifier()))
        self.last_day = now.date()
        return True

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("embedded expiry scan failed; retrying on the next tick")
            stop.wait(self.interval)
