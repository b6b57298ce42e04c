"""The embedded all-in-one process (``deploy-tokens serve``): API, projector and scheduled jobs together.

One gunicorn worker process serves the API with threads and, in the same process, follows the log with the
projector and runs the daily expiry scan (SQLite and in-process jobs by default). The production shape
(``Procfile``) runs the same pieces as separate processes.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api.app import create_app
from api.server import BackgroundThreads, Follower
from deploy_tokens.runtime import Runtime
from infrastructure.logs import configure_logging
from infrastructure.settings import Settings
from workers.embedded import EmbeddedScheduler

log = logging.getLogger(__name__)


def embedded_threads(runtime: Runtime) -> list[tuple[str, Follower]]:
    """What the embedded process runs beside the API: the projector and the expiry scheduler."""
    return [
        ("projector", lambda stop: runtime.projector.run_forever(stop, poll_interval=0.2)),
        ("expiry-scheduler", EmbeddedScheduler(runtime).run_forever),
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
        BackgroundThreads(runtime, embedded_threads(runtime)).start()
        return create_app(runtime)


def serve(settings: Settings, *, host: str, port: int) -> None:
    log.info("serving on http://%s:%s (%r)", host, port, settings)
    _EmbeddedGunicorn(
        settings,
        {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": 8,
            "accesslog": "-",
            "keepalive": 5,
            "logconfig_dict": configure_logging(),
        },
    ).run()
