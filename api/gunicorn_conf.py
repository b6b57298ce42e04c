"""gunicorn settings for the ``web`` process (``gunicorn -c python:api.gunicorn_conf 'api.server:wsgi_app()'``).

Everything comes from ``Settings`` (a malformed or missing setting stops the start with one line naming it, and
exit status 2): where to listen (``DEPLOY_TOKENS_BIND``/``PORT``, loopback unless they say otherwise), the
worker processes and threads (``WEB_CONCURRENCY``, ``WEB_THREADS``), the log level (JSON logs on stderr).

Per instance, so that two web processes on one machine never share them:

* **the control socket** (``gunicornc``) is named after the address the instance listens on, in gunicorn's
  own folder for it (``$XDG_RUNTIME_DIR``, else ``~/.gunicorn``): ``deploy-tokens-web-127.0.0.1-8080.ctl``.
  A second instance on the same address fails to listen before it creates its socket, so it never removes
  the first one's. ``--control-socket PATH`` on the command line still wins.
* **the metrics folder**: a private temporary folder (``PROMETHEUS_MULTIPROC_DIR`` for the workers) where
  every worker keeps its counters, so that each scrape of ``/metrics``, whichever worker answers, reports the
  sum over all of them (``api/metrics.py``). Created when the instance starts, removed when it stops.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.config import ControlSocket

from infrastructure.logs import configure_logging
from infrastructure.settings import METRICS_DIR_ENV, ConfigurationError, Settings

try:
    _settings = Settings.from_env()
except ConfigurationError as error:
    sys.stderr.write(f"configuration error: {error}\n")
    sys.stderr.flush()
    raise SystemExit(2) from None

logconfig_dict = configure_logging(_settings.log_level)
accesslog = "-"
worker_class = "gthread"
threads = _settings.web_threads
workers = _settings.web_concurrency
bind = _settings.bind
keepalive = 5

_GUNICORN_DEFAULT_SOCKET = ControlSocket.default


def control_socket_for(address: str) -> str:
    """The instance's control socket: gunicorn's folder for it, named after the listening address."""
    name = re.sub(r"[^A-Za-z0-9.-]+", "-", address.removeprefix("unix:")).strip("-")
    return os.path.join(os.path.dirname(_GUNICORN_DEFAULT_SOCKET), f"deploy-tokens-web-{name}.ctl")


def on_starting(server: Any) -> None:
    """In the master, before any worker exists: the instance's control socket and metrics folder."""
    if server.cfg.control_socket == _GUNICORN_DEFAULT_SOCKET:  # not chosen on the command line
        server.cfg.set("control_socket", control_socket_for(server.cfg.bind[0]))
    os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="deploy-tokens-metrics-")


def child_exit(server: Any, worker: Any) -> None:
    """A worker's per-process gauges stop counting once it is gone (its counters keep adding up)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def on_exit(server: Any) -> None:
    folder = os.environ.pop(METRICS_DIR_ENV, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
