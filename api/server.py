"""The web process: the API with the threads each API process needs, for gunicorn (``Procfile``).

Every API process follows the credential projection (its in-memory index) and, with Redis, the ban list;
``wsgi_app()`` is what gunicorn loads in each worker after the fork. The embedded all-in-one
(``deploy-tokens serve``), which also runs the projector and the scheduled jobs in the same process, is
composed by the console script (``cli/serve.py``) from this and ``workers``.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence

from flask import Flask

from api.app import create_app
from api.metrics import metrics_of
from deploy_tokens.runtime import Runtime
from infrastructure.settings import ConfigurationError, Settings

Follower = Callable[[threading.Event], None]


class BackgroundThreads:
    """Daemon threads beside the API until ``close``: the credential-index and ban followers, and ``extra``
    (named targets, each run with the stop event)."""

    def __init__(self, runtime: Runtime, extra: Sequence[tuple[str, Follower]] = ()) -> None:
        self.runtime = runtime
        self.extra = tuple(extra)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        self._spawn("credential-index", self.runtime.index.follow)
        self._spawn("auth-bans", self.runtime.bans.follow)
        for name, target in self.extra:
            self._spawn(name, target)

    def _spawn(self, name: str, target: Follower) -> None:
        thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=5)


# gunicorn's exit status for a worker that cannot boot: the master stops instead of starting it again.
WORKER_BOOT_ERROR = 3


def wsgi_app() -> Flask:
    """``gunicorn 'api.server:wsgi_app()'``: the API; the projector, worker and scheduler are separate
    processes. Called in each worker after the fork, so each worker follows the projection itself.

    With several workers (a metrics folder is set), each also publishes its per-process figures every second
    for ``/metrics`` to combine."""
    try:
        settings = Settings.from_env()
    except ConfigurationError as error:  # api.gunicorn_conf reports this before any worker starts
        sys.stderr.write(f"configuration error: {error}\n")
        sys.stderr.flush()
        raise SystemExit(WORKER_BOOT_ERROR) from None
    runtime = Runtime.open(settings)
    app = create_app(runtime)
    extra: list[tuple[str, Follower]] = []
    if settings.metrics_dir is not None:
        extra.append(("metrics-publisher", metrics_of(app).publisher(app)))
    BackgroundThreads(runtime, extra).start()
    return app
