"""gunicorn settings for the ``web`` process (``gunicorn -c python:api.gunicorn_conf``): JSON logs."""

import os

from infrastructure.logs import configure_logging

logconfig_dict = configure_logging(os.environ.get("DEPLOY_TOKENS_LOG_LEVEL", "INFO"))
accesslog = "-"
worker_class = "gthread"
threads = int(os.environ.get("WEB_THREADS", "8"))
workers = int(os.environ.get("WEB_CONCURRENCY", "4"))
bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
keepalive = 5
