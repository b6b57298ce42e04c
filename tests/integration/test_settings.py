"""Settings read from the environment: the registry token server's and the log level, with their defaults and a
``ConfigurationError`` naming a malformed value (the folder and secret are set up as for the service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrastructure.settings import DEFAULT_REGISTRY_ISSUER, ConfigurationError, Settings

REGISTRY_ISSUER_ENV = "DEPLOY_TOKENS_REGISTRY_ISSUER"
REGISTRY_TOKEN_TTL_ENV = "DEPLOY_TOKENS_REGISTRY_TOKEN_TTL"


@pytest.fixture
def base(tmp_path: Path) -> dict[str, str]:
    return {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}


def test_registry_settings(base: dict[str, str]):
    def registry_issuer(env: dict[str, str]) -> str:
        return Settings.from_env({**base, **env}).registry_issuer

    def registry_token_ttl(env: dict[str, str]) -> int:
        return Settings.from_env({**base, **env}).registry_token_ttl

    assert registry_issuer({}) == DEFAULT_REGISTRY_ISSUER
    assert registry_issuer({REGISTRY_ISSUER_ENV: " gitlab-issuer "}) == "gitlab-issuer"
    assert registry_token_ttl({}) == 300
    assert registry_token_ttl({REGISTRY_TOKEN_TTL_ENV: "900"}) == 900
    for bad in ("0", "59", "86401", "5m", "-300", "\u0663\u0660\u0660"):
        with pytest.raises(ConfigurationError):
            registry_token_ttl({REGISTRY_TOKEN_TTL_ENV: bad})


def test_log_level_setting(base: dict[str, str]):
    assert Settings.from_env(base).log_level == "INFO"
    assert Settings.from_env({**base, "DEPLOY_TOKENS_LOG_LEVEL": "WARNING"}).log_level == "WARNING"
    for bad in ("LOUD", "info", "10"):
        with pytest.raises(ConfigurationError, match="DEPLOY_TOKENS_LOG_LEVEL"):
            Settings.from_env({**base, "DEPLOY_TOKENS_LOG_LEVEL": bad})
