"""The embedded all-in-one process (``deploy-tokens serve``): API, projector and scheduled jobs together.

One gunicorn worker process serves the API with threads and, in the same process, follows the log with the
projector and runs the daily expiry scan (SQLite and in-process jobs by default). The production shape
(``Procfile``) runs the same pieces as separate processes.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api.app import create_app
from api.server import BackgroundThreads, Follower
from deploy_tokens.runtime import Runtime
from infrastructure.logs import configure_logging
from infrastructure.settings import Settings
from workers import audit_streamer
from workers.embedded import EmbeddedScheduler

log = logging.getLogger(__name__)


def embedded_threads(runtime: Runtime) -> list[tuple[str, Follower]]:
    """What the embedded process runs beside the API: the projector, the expiry scheduler and the audit
    streamer (behaviour [audit-streaming])."""
    return [
        ("projector", lambda stop: runtime.projector.run_forever(stop, poll_interval=0.2)),
        ("expiry-scheduler", EmbeddedScheduler(runtime).run_forever),
        ("audit-streamer", lambda stop: audit_streamer.follow(runtime, stop)),
    ]


class _EmbeddedGunicorn(BaseApplication):
    """Opens the runtime in the worker process, after the fork: database connections never cross a fork."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:  # type: ignore[override]
        runtime = Runtime.open(self.settings)
        app = create_app(runtime)
        bind = self.options["bind"]
        where = bind if bind.startswith("unix:") else f"http://{bind}"
        data = self.settings.database
        store = f"data in {data.sqlite_path}" if data.sqlite_path is not None else repr(data)
        print(f"deploy-tokens: ready on {where} ({store}; Ctrl-C stops)", file=sys.stderr, flush=True)
        BackgroundThreads(runtime, embedded_threads(runtime)).start()
        return app


def serve(settings: Settings, *, bind: str) -> None:
    """One gunicorn worker with eight threads on ``bind``; gunicorn's start-up lines only at DEBUG, so that
    the first line is the one saying it is ready (the access log and warnings follow)."""
    log.debug("serving on %s (%r)", bind, settings)
    logging_config = configure_logging(settings.log_level)
    if settings.log_level not in ("DEBUG", "NOTSET"):
        logging_config["loggers"]["gunicorn.error"]["level"] = "WARNING"
    _EmbeddedGunicorn(
        settings,
        {
            "bind": bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": 8,
            "accesslog": "-",
            "keepalive": 5,
            "logconfig_dict": logging_config,
            "control_socket_disable": True,  # one worker, stopped with Ctrl-C: nothing to control
        },
    ).run()
