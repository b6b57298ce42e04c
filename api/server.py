"""Serving: the embedded all-in-one (``deploy-tokens serve``) and the gunicorn entry point (``Procfile``).

Embedded: one gunicorn worker process serves the API with threads and, in the same process, follows the
log with the projector and runs the scheduled jobs. Production (``Procfile``): gunicorn workers only serve;
the projector, the RQ worker and the scheduler are separate processes.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api.app import create_app
from deploy_tokens.runtime import Runtime
from deploy_tokens.settings import Settings

log = logging.getLogger(__name__)


class BackgroundThreads:
    """The in-process projector (and, embedded, the job scheduler): daemon threads stopped on exit."""

    def __init__(self, runtime: Runtime, *, embedded: bool) -> None:
        self.runtime = runtime
        self.embedded = embedded
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.embedded:
            projector = threading.Thread(
                target=self.runtime.projector.run_forever,
                args=(self.stop,),
                kwargs={"poll_interval": 0.2},
                name="projector",
                daemon=True,
            )
            self.threads.append(projector)
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


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
        BackgroundThreads(runtime, embedded=True).start()
        return create_app(runtime)


def serve(settings: Settings, *, host: str, port: int) -> None:
    """The embedded all-in-one: API, projector and jobs in one worker process (SQLite by default)."""
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
        },
    ).run()


def wsgi_app() -> Flask:
    """``gunicorn 'api.server:wsgi_app()'``: API only; the projector runs as its own process."""
    runtime = Runtime.open(Settings.from_env())
    return create_app(runtime)
