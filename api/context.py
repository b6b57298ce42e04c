"""Access to the runtime's components from a request."""

from __future__ import annotations

from flask import current_app

from deploy_tokens.runtime import Runtime
from deploy_tokens.service import DeployTokenService


def runtime() -> Runtime:
    value = current_app.config["RUNTIME"]
    assert isinstance(value, Runtime)
    return value


def service() -> DeployTokenService:
    return runtime().service
