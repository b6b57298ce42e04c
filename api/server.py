"""The web process: the API with the threads each API process needs, for gunicorn (``Procfile``).

Every API process follows the credential projection (its in-memory index) and, with Redis, the ban list;
``wsgi_app()`` is what gunicorn loads in each worker after the fork. The embedded all-in-one
(``deploy-tokens serve``), which also runs the projector and the scheduled jobs in the same process, is
composed by the console script (``cli/serve.py``) from this and ``workers``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from flask import Flask

from api.app import create_app
from deploy_tokens.runtime import Runtime
from infrastructure.settings import Settings

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


def wsgi_app() -> Flask:
    """``gunicorn 'api.server:wsgi_app()'``: the API; the projector, worker and scheduler are separate
    processes. Called in each worker after the fork, so each worker follows the projection itself."""
    runtime = Runtime.open(Settings.from_env())
    BackgroundThreads(runtime).start()
    return create_app(runtime)
