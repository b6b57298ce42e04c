"""API fixtures: the Flask app over a runtime (SQLite), a test client, and credentials per role."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from deploy_tokens.runtime import Runtime

from ..conftest import World


@pytest.fixture
def backend() -> str:
    """One backend here: views and services behave alike on both, and tests/integration runs the persistence
    and the projections on both. A module whose behaviour depends on the database takes both back with
    ``from ..conftest import backend``."""
    return "sqlite"


@pytest.fixture
def app(runtime: Runtime) -> Flask:
    application = create_app(runtime)
    application.testing = True
    return application


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class Credentials:
    """PRIVATE-TOKEN headers for the world's users, by role name ("admin", "maintainer", ...)."""

    def __init__(self, world: World) -> None:
        self.headers = {"admin": {"PRIVATE-TOKEN": world.admin_token}}
        for name, actor in world.users.items():
            assert actor.user_id is not None
            issued = world.runtime.directory.create_personal_access_token(
                world.admin, actor.user_id, name="api", scopes=["api"]
            )
            self.headers[name] = {"PRIVATE-TOKEN": issued.value}

    def __getitem__(self, role: str) -> dict[str, str]:
        return self.headers[role]


@pytest.fixture
def creds(world: World) -> Credentials:
    return Credentials(world)
