"""``GET /api/v4/metadata`` and ``/api/v4/version`` in GitLab's shape, with this service's version."""

from __future__ import annotations

from importlib import metadata

import pytest
from flask.testing import FlaskClient

from ..conftest import World
from .conftest import Credentials


@pytest.mark.parametrize("path", ["/api/v4/metadata", "/api/v4/version"])
def test_an_authenticated_caller_gets_the_services_version_in_gitlabs_shape(
    client: FlaskClient, world: World, creds: Credentials, path: str
):
    response = client.get(path, headers=creds["guest"])
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["version", "revision", "kas", "enterprise"]
    assert body["version"] == metadata.version("deploy-tokens")
    assert isinstance(body["revision"], str) and body["revision"]
    assert body["kas"] == {
        "enabled": False,
        "externalUrl": None,
        "externalK8sProxyUrl": None,
        "version": None,
    }
    assert body["enterprise"] is False


@pytest.mark.parametrize("path", ["/api/v4/metadata", "/api/v4/version"])
def test_anonymous_and_deploy_token_callers_get_401(client: FlaskClient, world: World, path: str):
    assert client.get(path).status_code == 401
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="deploy", scopes=["read_repository"]
    )
    assert client.get(path, headers={"PRIVATE-TOKEN": issued.value}).status_code == 401


def test_python_gitlab_reads_it(client: FlaskClient, world: World, creds: Credentials):
    """What ``gitlab.Gitlab.version()`` reads: ``version`` and ``revision``, split on dots by its own tests."""
    body = client.get("/api/v4/version", headers=creds["admin"]).get_json()
    assert len(body["version"].split(".")) == 3
