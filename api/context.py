"""The one way the API reaches the runtime: ``runtime()`` inside a request, ``runtime_of(app)`` with an app."""

from __future__ import annotations

from flask import current_app
from flask.sansio.app import App

from deploy_tokens.runtime import Runtime

RUNTIME_KEY = "RUNTIME"


def runtime_of(app: App) -> Runtime:
    value = app.config[RUNTIME_KEY]
    assert isinstance(value, Runtime)
    return value


def runtime() -> Runtime:
    return runtime_of(current_app)
