"""Serving: the embedded all-in-one (``deploy-tokens serve``) and the gunicorn entry point (``Procfile``).

Embedded: one gunicorn worker process serves the API with threads and, in the same process, follows the
log with the projector and runs the scheduled jobs. Production (``Procfile``): gunicorn workers only serve;
the projector, the RQ worker and the scheduler are separate processes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from api.app import create_app
from deploy_tokens.logs import configure_logging
from deploy_tokens.runtime import Runtime
from deploy_tokens.settings import Settings

log = logging.getLogger(__name__)


class BackgroundThreads:
    """Daemon threads beside the API: the credential-index follower always; embedded, also the projector
    and the expiry scheduler."""

    def __init__(self, runtime: Runtime, *, embedded: bool) -> None:
        self.runtime = runtime
        self.embedded = embedded
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        runtime = self.runtime
        self._spawn("credential-index", runtime.index.follow)
        self._spawn("auth-bans", runtime.bans.follow)
        if self.embedded:
            from workers.embedded import EmbeddedScheduler

            self._spawn("projector", lambda stop: runtime.projector.run_forever(stop, poll_interval=0.2))
            self._spawn("expiry-scheduler", EmbeddedScheduler(runtime).run_forever)

    def _spawn(self, name: str, target: Callable[[threading.Event], None]) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        self.threads.append(thread)
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
            "logconfig_dict": configure_logging(),
        },
    ).run()


def wsgi_app() -> Flask:
    """``gunicorn 'api.server:wsgi_app()'``: the API; the projector, worker and scheduler are separate
    processes. Called in each worker after the fork, so each worker follows the projection itself."""
    runtime = Runtime.open(Settings.from_env())
    BackgroundThreads(runtime, embedded=False).start()
    return create_app(runtime)
