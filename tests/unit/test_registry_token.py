"""Registry token auth without I/O: the derived signing key, scope parsing and the JWT's claims and header.

``tests/integration/test_registry_key_tools.py`` checks the key against openssl and another process;
``tests/e2e/test_registry_token_verifier.py`` presents these tokens to the real docker-registry.
"""

from __future__ import annotations

import base64
import re
import time
from datetime import UTC, datetime, timedelta, timezone

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

from ..registry_signing import ISSUER, NOW, OTHER_SECRET, PULL_PUSH, REPO, SECRET, SERVICE, mint


@pytest.fixture(scope="module")
def key() -> RegistrySigningKey:
    return derive_signing_key(SECRET)


def public_numbers(signing_key: RegistrySigningKey) -> ec.EllipticCurvePublicNumbers:
    return signing_key.private_key.public_key().public_numbers()


# --- the derived signing key -------------------------------------------------------------------------


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


def test_common_name_is_configurable() -> None:
    certificate = derive_signing_key(SECRET, common_name="registry-issuer").certificate
    assert certificate.subject.rfc4514_string() == "CN=registry-issuer"


def test_kid_has_libtrust_shape(key: RegistrySigningKey) -> None:
    assert re.fullmatch(r"[A-Z2-7]{4}(?::[A-Z2-7]{4}){11}", key.kid)


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
