"""The Flask application factory."""

from __future__ import annotations

from flask import Flask

from api.health import health
from deploy_tokens.runtime import Runtime


def create_app(runtime: Runtime) -> Flask:
    app = Flask("deploy_tokens")
    app.config["RUNTIME"] = runtime
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(health)
    return app


def runtime_of(app: Flask) -> Runtime:
    runtime = app.config["RUNTIME"]
    assert isinstance(runtime, Runtime)
    return runtime
