"""The Flask application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.routing import IntegerConverter, Map

from api.activity import ACTIVITY_KEY
from api.audit import audit
from api.audit_streaming import audit_streaming
from api.auth_checks import auth_checks
from api.context import RUNTIME_KEY
from api.deploy_tokens import deploy_tokens
from api.directory import directory
from api.errors import register_error_handlers
from api.health import health
from api.input_limits import RoutableEnviron, install
from api.metrics import metrics
from api.openapi import build_spec
from api.resources import EncodedPathMiddleware
from api.trust_policies import trust_policies
from api.version import version_api
from deploy_tokens.runtime import Runtime


class DatabaseId(IntegerConverter):
    """``<int:…>`` ids fit a BIGINT: a larger number names nothing (404), instead of overflowing the driver."""

    def __init__(self, map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(map, *args, **kwargs)


def create_app(runtime: Runtime) -> Flask:
    app = Flask("deploy_tokens")
    app.url_map.converters["int"] = DatabaseId  # before any route is added
    app.config[RUNTIME_KEY] = runtime
    app.json.sort_keys = False  # type: ignore[attr-defined]
    install(app)  # body cap, JSON bounds, parameter checks: before any view or blueprint hook
    app.register_blueprint(health)
    app.register_blueprint(deploy_tokens)
    app.register_blueprint(trust_policies)  # behaviour [federation]
    app.register_blueprint(audit)
    app.register_blueprint(audit_streaming)  # behaviour [audit-streaming]
    app.register_blueprint(directory)
    app.register_blueprint(auth_checks)
    app.register_blueprint(metrics)
    app.register_blueprint(version_api)
    from api.ui import ui  # the web UI: Settings > Repository > Deploy tokens (behaviour [manage], [ui])

    app.register_blueprint(ui)
    register_error_handlers(app)
    app.wsgi_app = EncodedPathMiddleware(RoutableEnviron(app.wsgi_app))  # type: ignore[method-assign]
    app.extensions[ACTIVITY_KEY] = runtime.activity

    @app.get("/api/v4/openapi.json")
    def openapi() -> ResponseReturnValue:
        return jsonify(build_spec(app))

    return app
