"""Web UI fixtures: the Flask app over a runtime (SQLite), a client that signs in like a browser, and
personal access tokens for the world's users."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.app import create_app
from deploy_tokens.runtime import Runtime

from ..conftest import World

_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]+)"')
PROJECT_SETTINGS = "/acme/api/-/settings/repository"
GROUP_SETTINGS = "/groups/acme/-/settings/repository"


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


def personal_access_token(world: World, role: str, scopes: Iterable[str] = ("api",)) -> str:
    """A fresh personal access token of one of the world's users ("admin" is the bootstrap admin)."""
    if role == "admin":
        return world.admin_token
    user_id = world.users[role].user_id
    assert user_id is not None
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, user_id, name="ui", scopes=list(scopes)
    )
    return issued.value


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the page has no CSRF token"
    return found.group(1)


class WebClient:
    """The Flask test client used as a browser would: it reads each form's CSRF token from the page."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client
        self.csrf = ""

    def get(self, url: str, **kwargs: object) -> TestResponse:
        response = self.client.get(url, **kwargs)
        if response.status_code < 500 and response.mimetype == "text/html":
            found = _CSRF.search(response.text)
            if found:
                self.csrf = found.group(1)
        return response

    def post(
        self, url: str, data: dict[str, object] | None = None, *, csrf: str | None = None
    ) -> TestResponse:
        form = dict(data or {})
        form["csrf_token"] = self.csrf if csrf is None else csrf
        return self.client.post(url, data=form)

    def sign_in(self, token: str, next_url: str | None = None) -> TestResponse:
        self.get("/users/sign_in")
        data: dict[str, object] = {"personal_access_token": token}
        if next_url is not None:
            data["next"] = next_url
        response = self.post("/users/sign_in", data)
        assert response.status_code == 303, response.text
        self.get(response.headers["Location"])  # as a browser would: the new session's page and CSRF token
        return response


@pytest.fixture
def web(app: Flask) -> WebClient:
    return WebClient(app.test_client())


@pytest.fixture
def signed_in(web: WebClient, world: World) -> Callable[..., WebClient]:
    """``signed_in("maintainer")``: the web client, signed in as that role (with the api scope)."""

    def sign_in(role: str, scopes: Iterable[str] = ("api",)) -> WebClient:
        web.sign_in(personal_access_token(world, role, scopes))
        return web

    return sign_in
