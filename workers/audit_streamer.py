"""The audit streamer (behaviour [audit-streaming]) as a process of its own (``deploy-tokens audit-streamer``,
the ``Procfile``'s ``streamer``) or as a thread of the embedded all-in-one process (``deploy-tokens serve``).

Either way it follows the destinations and delivers the audit trail to each from a thread of its own; see
``deploy_tokens.audit_streaming``. The audit trail it reads is kept current by the projector (the
``projector`` process, or the embedded process's own).
"""

from __future__ import annotations

import signal
import threading

from deploy_tokens.runtime import Runtime

# How often the streamer looks for new destinations and, when a destination is up to date, for new events.
POLL_INTERVAL = 0.5


def follow(runtime: Runtime, stop: threading.Event, *, poll_interval: float = POLL_INTERVAL) -> None:
    """Deliver until ``stop`` is set (the embedded process's background thread)."""
    runtime.audit_streamer(poll_interval=poll_interval).run_forever(stop)


def run_process(runtime: Runtime, *, poll_interval: float = POLL_INTERVAL) -> None:
    """The production shape's process: deliver until SIGTERM or SIGINT, then stop each delivery thread (an
    event in flight is finished or abandoned within the delivery timeout; an abandoned one is sent again)."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    follow(runtime, stop, poll_interval=poll_interval)
