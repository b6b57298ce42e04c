"""The registry signing key and token minting shared by the unit tests and the tests against real tools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from api.registry_token import RegistrySigningKey, issue_token

SECRET = b"registry-test-secret-0123456789abcdef"
OTHER_SECRET = b"another-registry-secret-0123456789abc"
ISSUER = "deploy-token-service"
SERVICE = "container_registry"
NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
REPO = "group/project/app"
PULL_PUSH: list[dict[str, object]] = [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}]


def mint(key: RegistrySigningKey, access: Sequence[Mapping[str, object]], *, now: datetime = NOW) -> str:
    response = issue_token(
        key, issuer=ISSUER, audience=SERVICE, subject="gitlab+deploy-token-1", access=access, now=now
    )
    token = response["token"]
    assert isinstance(token, str)
    return token
