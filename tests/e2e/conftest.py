"""Session-scoped end-to-end stack: the service against PostgreSQL, served on a loopback port, with nginx +
fcgiwrap + git http-backend, docker-registry (token auth), pypiserver and nginx WebDAV around it.

The directory and the deploy tokens are made through the real python-gitlab client against the live service.
One local OIDC issuer (``tests/oidc_issuer.py``, plain HTTP on loopback) stands in for a CI system's; the
service allows ``http`` issuers for it (``oidc_allow_insecure``), as ``DEPLOY_TOKENS_OIDC_ALLOW_INSECURE`` would.
The service's clock is an :class:`OffsetClock` (real time plus an offset): docker-registry checks JWT
lifetimes against real time, and an expired token is reached by moving the offset, never by sleeping.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gitlab
import psycopg
import pytest
from gitlab.v4.objects import Group, Project

from api.app import create_app
from deploy_tokens.runtime import Runtime
from infrastructure.settings import DatabaseLocation

from ..conftest import POSTGRES_URL, make_settings, require_postgres
from ..oidc_issuer import LocalIssuer
from .harness import MissingTool, OffsetClock, Stack, check_tools, serve_app


def missing(error: MissingTool) -> None:
    """Under CI a missing binary fails the run; locally the suite is skipped with the reason."""
    if os.environ.get("CI") == "true":
        pytest.fail(str(error), pytrace=False)
    pytest.skip(str(error))


@pytest.fixture(scope="session")
def e2e_tools() -> None:
    try:
        check_tools()
    except MissingTool as error:
        missing(error)


@pytest.fixture(scope="session")
def e2e_schema() -> Iterator[str]:
    require_postgres()
    schema = f"e2e_{secrets.token_hex(6)}"
    yield schema
    with psycopg.connect(DatabaseLocation.parse(POSTGRES_URL).conninfo(), autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(scope="session")
def e2e_clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture(scope="session")
def e2e_service(
    e2e_tools: None, e2e_schema: str, e2e_clock: OffsetClock, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Runtime]]:
    """The service (PostgreSQL) on a free loopback port; werkzeug, a thread per request, same process."""
    data = tmp_path_factory.mktemp("service")
    # behaviour [federation]: the local issuer speaks plain http.
    settings = dataclasses.replace(make_settings("postgres", data, e2e_schema), oidc_allow_insecure=True)
    with Runtime.open(settings, clock=e2e_clock) as runtime:
        app = create_app(runtime)
        server, thread = serve_app(app)
        url = f"http://127.0.0.1:{server.server_port}"
        runtime.settings = dataclasses.replace(runtime.settings, external_url=url)
        try:
            yield url, runtime
        finally:
            server.shutdown()
            thread.join(timeout=10)
            server.server_close()


@pytest.fixture(scope="session")
def stack(e2e_service: tuple[str, Runtime], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(e2e_service[0], tmp_path_factory.mktemp("stack")) as started:
        yield started


@pytest.fixture(scope="session")
def local_issuer() -> Iterator[LocalIssuer]:
    """A CI system's OIDC issuer (discovery and JWKS over HTTP), shared by the session: ``mint`` signs ID tokens."""
    with LocalIssuer(path="/ci") as issuer:
        yield issuer


@dataclass
class Token:
    id: int
    username: str
    value: str
    holder: Project | Group

    def revoke(self) -> None:
        """The revoke extension endpoint (GitLab has none; python-gitlab's generic POST)."""
        kind = "projects" if isinstance(self.holder, Project) else "groups"
        self.holder.manager.gitlab.http_post(f"/{kind}/{self.holder.id}/deploy_tokens/{self.id}/revoke")

    def delete(self) -> None:
        """GitLab's DELETE: python-gitlab ``deploytokens.delete``."""
        self.holder.deploytokens.delete(self.id)


class Directory:
    """Groups, projects (each with a bare repository) and deploy tokens, all made through python-gitlab."""

    _names = itertools.count(1)

    def __init__(self, gl: gitlab.Gitlab, stack: Stack) -> None:
        self.gl = gl
        self.stack = stack

    def unique(self, stem: str) -> str:
        return f"{stem}{next(self._names)}"

    def group(self, stem: str, parent: Group | None = None) -> Group:
        path = self.unique(stem)
        attributes: dict[str, Any] = {"name": path.title(), "path": path}
        if parent is not None:
            attributes["parent_id"] = parent.id
        created = self.gl.groups.create(attributes)
        assert isinstance(created, Group)
        return created

    def project(self, stem: str, namespace: Group) -> Project:
        created = self.gl.projects.create({"name": self.unique(stem), "namespace_id": namespace.id})
        assert isinstance(created, Project)
        self.stack.create_repository(created.path_with_namespace)
        return created

    def token(self, holder: Project | Group, *scopes: str, **attributes: Any) -> Token:
        created = holder.deploytokens.create({"name": self.unique("t"), "scopes": list(scopes), **attributes})
        return Token(created.id, created.username, created.token, holder)

    def set_external_authorization(self, enabled: bool) -> None:
        self.gl.settings.update(new_data={"external_authorization_service_enabled": enabled})


@pytest.fixture(scope="session")
def gl(e2e_service: tuple[str, Runtime]) -> gitlab.Gitlab:
    url, runtime = e2e_service
    _, issued = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
    return gitlab.Gitlab(url, private_token=issued.value, retry_transient_errors=False)


@pytest.fixture(scope="session")
def directory(gl: gitlab.Gitlab, stack: Stack) -> Directory:
    return Directory(gl, stack)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A scratch directory per test; also HOME for the clients, so no user configuration leaks in."""
    return tmp_path
