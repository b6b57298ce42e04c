"""Registry token auth: the derived signing key, scope parsing and the JWT that distribution 2.8.2 accepts.

The ``e2e`` tests run Debian's ``docker-registry`` (distribution 2.8.2) on a free loopback port and
present it tokens minted here, so the claim and header rules are checked against the real verifier
rather than against our reading of it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from api.registry_token import (
    InvalidScope,
    RegistrySigningKey,
    RequestedScope,
    decode_token,
    derive_signing_key,
    issue_token,
    parse_scopes,
    registry_error,
)

SECRET = b"registry-test-secret-0123456789abcdef"
OTHER_SECRET = b"another-registry-secret-0123456789abc"
ISSUER = "deploy-token-service"
SERVICE = "container_registry"
NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)
REPO = "group/project/app"
PULL_PUSH: list[dict[str, object]] = [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> RegistrySigningKey:
    return derive_signing_key(SECRET)


def mint(key: RegistrySigningKey, access: Sequence[Mapping[str, object]], *, now: datetime = NOW) -> str:
    response = issue_token(
        key, issuer=ISSUER, audience=SERVICE, subject="gitlab+deploy-token-1", access=access, now=now
    )
    token = response["token"]
    assert isinstance(token, str)
    return token


def public_numbers(signing_key: RegistrySigningKey) -> ec.EllipticCurvePublicNumbers:
    return signing_key.private_key.public_key().public_numbers()


# --- the derived signing key -------------------------------------------------------------------------


def test_same_secret_gives_byte_identical_certificate_in_another_process(key: RegistrySigningKey) -> None:
    script = (
        "import sys; from api.registry_token import derive_signing_key; "
        f"sys.stdout.buffer.write(derive_signing_key({SECRET!r}).certificate_pem())"
    )
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, check=True)
    assert other.stdout == key.certificate_pem()


def test_same_secret_gives_same_private_key(key: RegistrySigningKey) -> None:
    again = derive_signing_key(SECRET)
    assert (
        again.private_key.private_numbers().private_value == key.private_key.private_numbers().private_value
    )


def test_different_secret_gives_different_key(key: RegistrySigningKey) -> None:
    other = derive_signing_key(OTHER_SECRET)
    assert public_numbers(other) != public_numbers(key)
    assert other.kid != key.kid


def test_short_secret_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        derive_signing_key(b"short")


def test_key_is_p256(key: RegistrySigningKey) -> None:
    assert isinstance(key.private_key.curve, ec.SECP256R1)


def test_certificate_has_fixed_century_validity(key: RegistrySigningKey) -> None:
    assert key.certificate.not_valid_before_utc == datetime(2020, 1, 1, tzinfo=UTC)
    assert key.certificate.not_valid_after_utc == datetime(2120, 1, 1, tzinfo=UTC)


def test_certificate_holds_the_signing_public_key(key: RegistrySigningKey) -> None:
    certificate_key = key.certificate.public_key()
    assert isinstance(certificate_key, ec.EllipticCurvePublicKey)
    assert certificate_key.public_numbers() == public_numbers(key)


def test_certificate_is_its_own_trust_anchor_for_openssl(key: RegistrySigningKey, tmp_path: Path) -> None:
    pem = tmp_path / "token.crt"
    pem.write_bytes(key.certificate_pem())
    result = subprocess.run(
        [require_tool("openssl"), "verify", "-CAfile", str(pem), str(pem)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_common_name_is_configurable() -> None:
    certificate = derive_signing_key(SECRET, common_name="registry-issuer").certificate
    assert certificate.subject.rfc4514_string() == "CN=registry-issuer"


def test_kid_has_libtrust_shape(key: RegistrySigningKey) -> None:
    assert re.fullmatch(r"[A-Z2-7]{4}(?::[A-Z2-7]{4}){11}", key.kid)


def test_kid_matches_openssl_libtrust_pipeline(key: RegistrySigningKey) -> None:
    openssl = require_tool("openssl")
    require_tool("base32")
    pipeline = (
        f"{openssl} x509 -pubkey -noout | {openssl} pkey -pubin -outform DER"
        f" | {openssl} dgst -sha256 -binary | head -c 30 | base32"
    )
    result = subprocess.run(
        ["sh", "-c", pipeline], input=key.certificate_pem(), capture_output=True, check=True
    )
    encoded = result.stdout.decode("ascii").strip()
    assert ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4)) == key.kid


def test_x5c_is_the_certificate_in_standard_base64(key: RegistrySigningKey) -> None:
    assert len(key.x5c) == 1
    der = base64.b64decode(key.x5c[0], validate=True)
    assert der == key.certificate.public_bytes(serialization.Encoding.DER)


def test_private_key_stays_out_of_repr(key: RegistrySigningKey) -> None:
    assert "private_key" not in repr(key)


# --- scope parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("repository:group/project/app:pull", RequestedScope("repository", REPO, ("pull",))),
        ("repository:group/project/app:pull,push", RequestedScope("repository", REPO, ("pull", "push"))),
        ("repository:group/project/app:*", RequestedScope("repository", REPO, ("*",))),
        ("registry:catalog:*", RequestedScope("registry", "catalog", ("*",))),
        ("repository(plugin):group/app:pull", RequestedScope("repository(plugin)", "group/app", ("pull",))),
        (
            "repository:localhost:5000/group/app:pull",
            RequestedScope("repository", "localhost:5000/group/app", ("pull",)),
        ),
        (
            "repository:my_group/app-name.x:pull",
            RequestedScope("repository", "my_group/app-name.x", ("pull",)),
        ),
        ("repository:group/app:pull,pull,push", RequestedScope("repository", "group/app", ("pull", "push"))),
    ],
)
def test_single_scope_is_parsed(value: str, expected: RequestedScope) -> None:
    assert parse_scopes([value]) == [expected]


def test_space_separated_scopes_in_one_value_are_all_parsed() -> None:
    assert parse_scopes(["repository:a/b:pull  repository:c/d:pull,push"]) == [
        RequestedScope("repository", "a/b", ("pull",)),
        RequestedScope("repository", "c/d", ("pull", "push")),
    ]


def test_repeated_scope_parameters_keep_request_order() -> None:
    assert parse_scopes(["repository:a/b:*", "repository:a/b:delete registry:catalog:*"]) == [
        RequestedScope("repository", "a/b", ("*",)),
        RequestedScope("repository", "a/b", ("delete",)),
        RequestedScope("registry", "catalog", ("*",)),
    ]


def test_empty_scope_values_yield_no_scopes() -> None:
    assert parse_scopes([]) == []
    assert parse_scopes(["", "   "]) == []


@pytest.mark.parametrize(
    "value",
    [
        "repository",
        "repository:group/app",
        ":group/app:pull",
        "REPOSITORY:group/app:pull",
        "repository(:group/app:pull",
        "repository::pull",
        "repository:Group/App:pull",
        "repository:group//app:pull",
        "repository:/group/app:pull",
        "repository:group/app/:pull",
        "repository:host:notaport/app:pull",
        "repository:group/app:",
        "repository:group/app:pull,,push",
        "repository:group/app:PULL",
        "repository:group/app:pull;push",
        "repository:" + "a" * 256 + ":pull",
    ],
)
def test_malformed_scope_is_rejected(value: str) -> None:
    with pytest.raises(InvalidScope):
        parse_scopes([value])


def test_malformed_scope_message_names_the_value() -> None:
    with pytest.raises(InvalidScope, match="repository:group/app"):
        parse_scopes(["repository:group/app"])


def test_hostile_name_is_rejected_in_linear_time() -> None:
    # The spec's name grammar, written naively for a backtracking engine, takes exponential time here.
    started = time.perf_counter()
    with pytest.raises(InvalidScope):
        parse_scopes(["repository:" + "a-" * 120 + "!:pull"])
    assert time.perf_counter() - started < 1.0


def test_bare_string_is_refused_instead_of_parsed_per_character() -> None:
    with pytest.raises(TypeError):
        parse_scopes("repository:group/app:pull")


def test_registry_error_has_registry_api_shape() -> None:
    assert registry_error("DENIED", "access forbidden") == {
        "errors": [{"code": "DENIED", "message": "access forbidden"}]
    }


# --- the token ------------------------------------------------------------------------------------


def test_response_carries_token_twice_with_expiry_and_issue_time(key: RegistrySigningKey) -> None:
    response = issue_token(
        key, issuer=ISSUER, audience=SERVICE, subject="u", access=[], now=NOW, ttl_seconds=600
    )
    assert response["access_token"] == response["token"]
    assert response["expires_in"] == 600
    assert response["issued_at"] == "2026-01-10T12:00:00Z"


def test_header_names_the_key_by_x5c_and_kid(key: RegistrySigningKey) -> None:
    header = jwt.get_unverified_header(mint(key, PULL_PUSH))
    assert header["alg"] == "ES256"
    assert header["x5c"] == key.x5c
    assert header["kid"] == key.kid


def test_claims_have_the_types_distribution_requires(key: RegistrySigningKey) -> None:
    claims = jwt.decode(mint(key, PULL_PUSH), options={"verify_signature": False})
    assert type(claims["aud"]) is str
    assert type(claims["exp"]) is int
    assert type(claims["nbf"]) is int
    assert type(claims["iat"]) is int


def test_claims_carry_issuer_audience_subject_and_access(key: RegistrySigningKey) -> None:
    claims = jwt.decode(mint(key, PULL_PUSH), options={"verify_signature": False})
    assert (claims["iss"], claims["aud"], claims["sub"]) == (ISSUER, SERVICE, "gitlab+deploy-token-1")
    assert claims["access"] == PULL_PUSH


def test_expiry_is_issue_time_plus_ttl(key: RegistrySigningKey) -> None:
    token = issue_token(key, issuer=ISSUER, audience=SERVICE, subject="u", access=[], now=NOW, ttl_seconds=90)
    claims = jwt.decode(str(token["token"]), options={"verify_signature": False})
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["exp"] == claims["iat"] + 90
    assert claims["nbf"] <= claims["iat"]


def test_each_token_gets_a_fresh_jti(key: RegistrySigningKey) -> None:
    first = jwt.decode(mint(key, []), options={"verify_signature": False})
    second = jwt.decode(mint(key, []), options={"verify_signature": False})
    assert isinstance(first["jti"], str) and first["jti"]
    assert first["jti"] != second["jti"]


def test_signature_verifies_with_the_certificate_public_key(key: RegistrySigningKey) -> None:
    certificate = x509.load_pem_x509_certificate(key.certificate_pem())
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    claims = jwt.decode(
        mint(key, PULL_PUSH),
        public_key,
        algorithms=["ES256"],
        audience=SERVICE,
        issuer=ISSUER,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},
    )
    assert claims["access"] == PULL_PUSH


def test_decode_token_returns_claims_of_a_valid_token(key: RegistrySigningKey) -> None:
    claims = decode_token(key, mint(key, PULL_PUSH), audience=SERVICE, issuer=ISSUER, now=NOW)
    assert claims["access"] == PULL_PUSH


def test_decode_token_rejects_a_token_signed_by_another_key(key: RegistrySigningKey) -> None:
    foreign = mint(derive_signing_key(OTHER_SECRET), PULL_PUSH)
    with pytest.raises(jwt.InvalidSignatureError):
        decode_token(key, foreign, audience=SERVICE, issuer=ISSUER, now=NOW)


def test_decode_token_rejects_an_expired_token(key: RegistrySigningKey) -> None:
    with pytest.raises(jwt.ExpiredSignatureError):
        decode_token(key, mint(key, []), audience=SERVICE, issuer=ISSUER, now=NOW + timedelta(seconds=300))


def test_decode_token_rejects_another_audience(key: RegistrySigningKey) -> None:
    with pytest.raises(jwt.InvalidAudienceError):
        decode_token(key, mint(key, []), audience="other_registry", issuer=ISSUER, now=NOW)


def test_naive_now_is_rejected(key: RegistrySigningKey) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        issue_token(
            key, issuer=ISSUER, audience=SERVICE, subject="u", access=[], now=datetime(2026, 1, 10, 12)
        )


def test_aware_now_in_another_zone_is_reported_in_utc(key: RegistrySigningKey) -> None:
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    response = issue_token(key, issuer=ISSUER, audience=SERVICE, subject="u", access=[], now=plus_two)
    assert response["issued_at"] == "2026-01-10T12:00:00Z"


@pytest.mark.parametrize("ttl", [0, -5])
def test_non_positive_ttl_is_rejected(key: RegistrySigningKey, ttl: int) -> None:
    with pytest.raises(ValueError, match="ttl_seconds"):
        issue_token(key, issuer=ISSUER, audience=SERVICE, subject="u", access=[], now=NOW, ttl_seconds=ttl)


def test_extra_claims_are_added(key: RegistrySigningKey) -> None:
    response = issue_token(
        key,
        issuer=ISSUER,
        audience=SERVICE,
        subject="u",
        access=[],
        now=NOW,
        extra_claims={"auth_type": "deploy_token"},
    )
    claims = jwt.decode(str(response["token"]), options={"verify_signature": False})
    assert claims["auth_type"] == "deploy_token"


def test_extra_claims_cannot_override_registered_claims(key: RegistrySigningKey) -> None:
    with pytest.raises(ValueError, match="access"):
        issue_token(
            key,
            issuer=ISSUER,
            audience=SERVICE,
            subject="u",
            access=[],
            now=NOW,
            extra_claims={"access": [{"type": "registry", "name": "catalog", "actions": ["*"]}]},
        )


@pytest.mark.parametrize(
    "entry",
    [
        {"type": "repository", "name": REPO, "actions": "pull"},
        {"type": "repository", "actions": ["pull"]},
        {"type": "repository", "name": REPO, "actions": [1]},
    ],
)
def test_malformed_access_entry_is_rejected(key: RegistrySigningKey, entry: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="access entry"):
        mint(key, [entry])


# --- against the real registry (distribution 2.8.2) ------------------------------------------------


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


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
