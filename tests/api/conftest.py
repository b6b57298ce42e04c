"""API fixtures: the Flask app over a runtime (SQLite), a test client, and credentials per role."""

from __future__ import annotations

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from deploy_tokens.runtime import Runtime

from ..conftest import Credentials, StoredWorlds, World


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


@pytest.fixture
def creds(world: World, stored_worlds: StoredWorlds, request: pytest.FixtureRequest) -> Credentials:
    """Recorded with the stored world (the ``settings`` fixture sees that this test asks for it)."""
    return stored_worlds.credentials(request)
