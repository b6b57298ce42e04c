"""Tokens minted by the service presented to the real verifier: Debian's ``docker-registry`` (distribution
2.8.2) on a free loopback port, so the claim and header rules are checked against the registry itself rather
than against our reading of it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
import pytest

from api.registry_token import RegistrySigningKey, derive_signing_key

from ..ports import free_port
from ..registry_signing import ISSUER, OTHER_SECRET, PULL_PUSH, REPO, SECRET, SERVICE, mint


@pytest.fixture(scope="module")
def key() -> RegistrySigningKey:
    return derive_signing_key(SECRET)


def http_get(url: str, token: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    # No proxies: an http_proxy in the environment must not intercept loopback requests.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass(frozen=True)
class Registry:
    url: str
    key: RegistrySigningKey


@pytest.fixture(scope="module")
def registry(key: RegistrySigningKey, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-registry is not installed (apt-get install docker-registry)")
        pytest.skip("docker-registry is not installed")
    run_dir = tmp_path_factory.mktemp("registry")
    (run_dir / "token.crt").write_bytes(key.certificate_pem())
    port = free_port()
    # JSON strings are valid YAML scalars, so json.dumps quotes paths safely.
    (run_dir / "config.yml").write_text(
        f"""version: 0.1
log: {{ level: warn }}
storage:
  filesystem: {{ rootdirectory: {json.dumps(str(run_dir / "data"))} }}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: http://127.0.0.1:9/jwt/auth
    service: {SERVICE}
    issuer: {ISSUER}
    rootcertbundle: {json.dumps(str(run_dir / "token.crt"))}
"""
    )
    log_path = run_dir / "registry.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([binary, "serve", str(run_dir / "config.yml")], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                pytest.fail(f"docker-registry exited early:\n{log_path.read_text()}")
            try:
                if http_get(f"{url}/v2/")[0] == 401:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer on {url}:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield Registry(url=url, key=key)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def live(registry: Registry, access: Sequence[Mapping[str, object]]) -> str:
    return mint(registry.key, access, now=datetime.now(UTC))


@pytest.mark.e2e
def test_registry_accepts_our_token_on_base_endpoint(registry: Registry) -> None:
    assert http_get(f"{registry.url}/v2/", live(registry, []))[0] == 200


@pytest.mark.e2e
def test_registry_accepts_kid_alone_so_the_libtrust_fingerprint_is_right(registry: Registry) -> None:
    # x5c takes precedence in the registry, so this is the only way to prove it computes the same kid.
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "u", "exp": now + 60, "nbf": now, "access": []}
    token = jwt.encode(claims, registry.key.private_key, algorithm="ES256", headers={"kid": registry.key.kid})
    assert http_get(f"{registry.url}/v2/", token)[0] == 200


@pytest.mark.e2e
def test_registry_rejects_token_signed_by_another_key(registry: Registry) -> None:
    foreign = mint(derive_signing_key(OTHER_SECRET), [], now=datetime.now(UTC))
    assert http_get(f"{registry.url}/v2/", foreign)[0] == 401


@pytest.mark.e2e
def test_registry_rejects_unsigned_token(registry: Registry) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "u", "exp": now + 60, "access": []}
    unsigned = jwt.encode(
        claims, "", algorithm="none", headers={"x5c": registry.key.x5c, "kid": registry.key.kid}
    )
    assert http_get(f"{registry.url}/v2/", unsigned)[0] == 401


@pytest.mark.e2e
def test_registry_lets_a_pull_token_list_tags(registry: Registry) -> None:
    token = live(registry, [{"type": "repository", "name": REPO, "actions": ["pull"]}])
    status, body = http_get(f"{registry.url}/v2/{REPO}/tags/list", token)
    assert status == 200 or (status == 404 and b"NAME_UNKNOWN" in body), (status, body)


@pytest.mark.e2e
def test_registry_denies_tags_to_a_token_without_access(registry: Registry) -> None:
    assert http_get(f"{registry.url}/v2/{REPO}/tags/list", live(registry, []))[0] == 401


@pytest.mark.e2e
def test_registry_lets_a_pull_push_token_start_an_upload(registry: Registry) -> None:
    status, body = http_get(
        f"{registry.url}/v2/{REPO}/blobs/uploads/", live(registry, PULL_PUSH), method="POST"
    )
    assert status == 202, (status, body)


@pytest.mark.e2e
def test_registry_denies_an_upload_to_a_pull_token(registry: Registry) -> None:
    token = live(registry, [{"type": "repository", "name": REPO, "actions": ["pull"]}])
    assert http_get(f"{registry.url}/v2/{REPO}/blobs/uploads/", token, method="POST")[0] == 401
