"""gunicorn settings for the ``web`` process (``gunicorn -c python:api.gunicorn_conf``): JSON logs.

``PORT``, ``WEB_CONCURRENCY`` and ``WEB_THREADS`` are gunicorn's own variables (the platform conventions), so
they are read here; every ``DEPLOY_TOKENS_*`` setting comes from ``Settings``, which also fails the start
with a ``ConfigurationError`` naming a malformed one.
"""

import os

from infrastructure.logs import configure_logging
from infrastructure.settings import Settings

logconfig_dict = configure_logging(Settings.from_env().log_level)
accesslog = "-"
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
keepalive = 5
