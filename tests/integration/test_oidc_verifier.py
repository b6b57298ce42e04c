"""The OIDC ID-token verifier (behaviour [federation]) against a real local issuer over HTTP: what it accepts,
each reason it refuses, that it asks an untrusted issuer nothing, its caches and rate-limited refreshes, and
that an issuer that is down, failing or stalled makes it answer ``IssuerUnavailable`` within its deadline."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

import pytest

from domain.clock import FixedClock
from infrastructure.oidc import IdTokenRefused, IdTokenVerifier, IssuerUnavailable, VerifiedIdToken

from ..oidc_issuer import LocalIssuer, github_actions_claims, gitlab_ci_claims, new_key, segment

NOW = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
LEEWAY = timedelta(seconds=60)


@pytest.fixture
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer(path="/gitlab") as running:  # a path issuer, as a GitLab behind a relative URL is
        yield running


def verifier(**options: Any) -> IdTokenVerifier:
    return IdTokenVerifier(**{"clock": FixedClock(NOW), "leeway": LEEWAY, "allow_insecure": True, **options})


def verify(issuer: LocalIssuer, token: str, **options: Any) -> VerifiedIdToken:
    return verifier(**options).verify(token, allowed_issuers=[issuer.issuer])


def refused(issuer: LocalIssuer, token: object, **options: Any) -> IdTokenRefused:
    with pytest.raises(IdTokenRefused) as caught:
        verifier(**options).verify(cast(str, token), allowed_issuers=[issuer.issuer])
    if isinstance(token, str):  # the detail goes into audit records: never any part of the token
        assert not any(len(part) >= 8 and part in caught.value.detail for part in token.split("."))
    return caught.value


def unavailable(issuer: LocalIssuer, token: str, **options: Any) -> IssuerUnavailable:
    with pytest.raises(IssuerUnavailable) as caught:
        verify(issuer, token, **options)
    assert caught.value.issuer == issuer.issuer
    return caught.value


def at(moment: datetime) -> int:
    return int(moment.timestamp())


def signing_input(token: str) -> str:
    return token.rsplit(".", 1)[0]


# Accepted ---------------------------------------------------------------------------------------------------


def test_an_rs256_token_of_a_path_issuer_is_verified_with_all_its_claims(issuer: LocalIssuer) -> None:
    token = issuer.mint(gitlab_ci_claims("group/project", "main"), now=NOW, lifetime=timedelta(minutes=5))

    verified = verify(issuer, token)

    assert verified.issuer == issuer.issuer
    assert verified.subject == "project_path:group/project:ref_type:branch:ref:main"
    assert verified.audiences == ("deploy-tokens",)
    assert verified.issued_at == NOW
    assert verified.expires_at == NOW + timedelta(minutes=5)
    assert verified.token_id == verified.claims["jti"]
    assert verified.claims["project_path"] == "group/project"
    assert verified.claims["ref_protected"] == "true"


def test_an_es256_token_is_verified(issuer: LocalIssuer) -> None:
    token = issuer.mint(github_actions_claims("octo/app", environment="prod"), alg="ES256", now=NOW)

    verified = verify(issuer, token)

    assert verified.subject == "repo:octo/app:environment:prod"
    assert verified.claims["repository"] == "octo/app"


def test_an_audience_list_is_returned_whole_for_the_policies_to_match(issuer: LocalIssuer) -> None:
    token = issuer.mint(audience=["https://first.example", "deploy-tokens"], now=NOW)

    assert verify(issuer, token).audiences == ("https://first.example", "deploy-tokens")


def test_a_token_naming_no_key_is_verified_with_the_issuers_only_key() -> None:
    with LocalIssuer(algorithms=("RS256",)) as single:
        assert verify(single, single.mint(kid=None, now=NOW)).subject == "local-issuer-subject"


def test_an_https_issuer_is_verified_through_its_certificate_with_insecure_issuers_not_allowed() -> None:
    with LocalIssuer(tls=True) as secure:
        verified = verify(secure, secure.mint(now=NOW), allow_insecure=False, tls=secure.client_tls())

    assert verified.issuer.startswith("https://")


# Refused before anything is fetched -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", [{"alg": "none"}, {"alg": "None"}, {"alg": "RS512"}, {"alg": ["RS256"]}, {}]
)
def test_an_algorithm_other_than_rs256_or_es256_is_refused_unfetched(
    issuer: LocalIssuer, header: dict[str, Any]
) -> None:
    token = f"{segment({'typ': 'JWT', **header})}.{segment(issuer.payload(now=NOW))}."

    assert refused(issuer, token).reason == "algorithm_not_allowed"
    assert issuer.requests.total() == 0


def test_hs256_signed_with_the_issuers_public_key_is_refused_unfetched(issuer: LocalIssuer) -> None:
    # The key-confusion attack: a verifier that took the algorithm from the token would check this HMAC
    # with the public key as the secret, and anyone can compute it.
    key = issuer.current_key("RS256")
    unsigned = f"{segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{segment(issuer.payload(now=NOW))}"
    signature = hmac.new(key.public_pem, unsigned.encode(), hashlib.sha256).digest()

    assert refused(issuer, f"{unsigned}.{segment(signature)}").reason == "algorithm_not_allowed"
    assert issuer.requests.total() == 0


ISSUER_VARIANTS: Final[dict[str, Callable[[str], object]]] = {
    "other": lambda url: "http://127.0.0.1:1/gitlab",
    "trailing-slash": lambda url: f"{url}/",
    "sub-path": lambda url: f"{url}/group",
    "upper-case": lambda url: url.upper(),
    "list": lambda url: [url],
    "number": lambda url: 7,
}


@pytest.mark.parametrize("variant", ISSUER_VARIANTS)
def test_an_issuer_not_exactly_on_the_list_is_refused_with_no_request_at_all(
    issuer: LocalIssuer, variant: str
) -> None:
    token = issuer.mint({"iss": ISSUER_VARIANTS[variant](issuer.issuer)}, now=NOW)

    assert refused(issuer, token).reason == "issuer_not_allowed"
    assert issuer.requests.total() == 0


def test_a_token_naming_no_issuer_is_refused_with_no_request_at_all(issuer: LocalIssuer) -> None:
    assert refused(issuer, issuer.mint(now=NOW, drop=["iss"])).reason == "issuer_not_allowed"
    assert issuer.requests.total() == 0


def test_a_refusal_detail_is_short_printable_and_safe_to_log(issuer: LocalIssuer) -> None:
    hostile = "https://evil.example/" + "\x1b[31m\n\u202e" * 500

    detail = refused(issuer, issuer.mint({"iss": hostile}, now=NOW)).detail

    assert len(detail) < 200
    assert detail.isprintable()


# Malformed --------------------------------------------------------------------------------------------------


HUGE_INTEGER: Final = b'{"exp": ' + b"9" * 5000 + b"}"  # past Python's 4300 digits of int parsing
INVALID_UTF8: Final = b'{"sub": "\xff\xfe"}'
# Each kind of garbage from the segments of a valid token (header, payload, signature) and its issuer.
GARBAGE: Final[dict[str, Callable[[LocalIssuer, str, str, str], object]]] = {
    "empty": lambda i, h, p, s: "",
    "one-segment": lambda i, h, p, s: h,
    "two-segments": lambda i, h, p, s: f"{h}.{p}",
    "four-segments": lambda i, h, p, s: f"{h}.{p}.{s}.{s}",
    "trailing-dot": lambda i, h, p, s: f"{h}.{p}.{s}.",
    "empty-header": lambda i, h, p, s: f".{p}.{s}",
    "nul": lambda i, h, p, s: f"{h}.{p}\x00.{s}",
    "space": lambda i, h, p, s: f"{h}. {p}.{s}",
    "newline": lambda i, h, p, s: f"{h}.{p}.{s}\n",
    "non-ascii": lambda i, h, p, s: f"{h}.{p}é.{s}",
    "surrogate": lambda i, h, p, s: f"{h}.{p}\ud800.{s}",
    "padding": lambda i, h, p, s: f"{h}==.{p}.{s}",
    "20-kib": lambda i, h, p, s: i.mint({"padding": "x" * 20 * 1024}, now=NOW),
    "header-list": lambda i, h, p, s: f"{segment([{'alg': 'RS256'}])}.{p}.{s}",
    "payload-list": lambda i, h, p, s: f"{h}.{segment([i.payload(now=NOW)])}.{s}",
    "payload-null": lambda i, h, p, s: f"{h}.{segment(b'null')}.{s}",
    "payload-not-json": lambda i, h, p, s: f"{h}.{segment(b'{iss: 1')}.{s}",
    "payload-deeply-nested": lambda i, h, p, s: f"{h}.{segment(b'[' * 5000)}.{s}",
    "huge-integer": lambda i, h, p, s: f"{h}.{segment(HUGE_INTEGER)}.{s}",
    "invalid-utf8": lambda i, h, p, s: f"{h}.{segment(INVALID_UTF8)}.{s}",
    "kid-not-text": lambda i, h, p, s: f"{segment({'alg': 'RS256', 'kid': 7})}.{p}.{s}",
    "unknown-crit": lambda i, h, p, s: f"{segment({'alg': 'RS256', 'crit': ['exp'], 'exp': 1})}.{p}.{s}",
    "detached-b64": lambda i, h, p, s: f"{segment({'alg': 'RS256', 'b64': False, 'crit': ['b64']})}..{s}",
    "bytes": lambda i, h, p, s: f"{h}.{p}.{s}".encode(),
    "none": lambda i, h, p, s: None,
}


@pytest.mark.parametrize("kind", GARBAGE)
def test_garbage_is_refused_as_malformed_unfetched(issuer: LocalIssuer, kind: str) -> None:
    header, payload, signature = issuer.mint(now=NOW).split(".")
    token = GARBAGE[kind](issuer, header, payload, signature)

    assert refused(issuer, token).reason == "malformed"
    assert issuer.requests.total() == 0


# Keys and signatures ----------------------------------------------------------------------------------------


def test_a_token_naming_no_key_is_refused_when_the_issuer_publishes_several(issuer: LocalIssuer) -> None:
    assert refused(issuer, issuer.mint(kid=None, now=NOW)).reason == "unknown_key"


def test_a_token_naming_a_key_the_issuer_does_not_publish_is_refused(issuer: LocalIssuer) -> None:
    error = refused(issuer, issuer.mint(kid="no-such-key", now=NOW))

    assert (error.reason, error.detail) == ("unknown_key", "the issuer publishes no key 'no-such-key'")


def test_a_token_signed_by_a_foreign_key_under_a_published_kid_is_refused(issuer: LocalIssuer) -> None:
    assert refused(issuer, issuer.mint(key=issuer.foreign_key(), now=NOW)).reason == "bad_signature"


def test_a_foreign_es256_key_is_refused_too(issuer: LocalIssuer) -> None:
    token = issuer.mint(alg="ES256", key=issuer.foreign_key("ES256"), now=NOW)

    assert refused(issuer, token).reason == "bad_signature"


def test_an_es256_token_naming_the_rsa_key_is_refused(issuer: LocalIssuer) -> None:
    token = issuer.mint(alg="ES256", kid=issuer.current_key("RS256").kid, now=NOW)

    assert refused(issuer, token).reason == "bad_signature"


def test_a_payload_changed_after_signing_is_refused(issuer: LocalIssuer) -> None:
    header, _, signature = issuer.mint(gitlab_ci_claims("group/project"), now=NOW).split(".")
    changed = issuer.payload(gitlab_ci_claims("group/other-project"), now=NOW)

    assert refused(issuer, f"{header}.{segment(changed)}.{signature}").reason == "bad_signature"


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_truncated_or_empty_signature_is_refused(issuer: LocalIssuer, alg: str) -> None:
    token = issuer.mint(alg=alg, now=NOW)

    truncated = base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")[:-8]

    assert refused(issuer, f"{signing_input(token)}.{segment(truncated)}").reason == "bad_signature"
    assert refused(issuer, signing_input(token) + ".").reason == "bad_signature"


def test_a_symmetric_key_in_the_jwks_under_the_tokens_kid_is_refused(issuer: LocalIssuer) -> None:
    issuer.serve_raw(
        issuer.jwks_path, b'{"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}]}'
    )

    assert refused(issuer, issuer.mint(kid="shared", now=NOW)).reason == "bad_signature"


# Time -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": at(NOW - LEEWAY - timedelta(seconds=1))}, "expired"),
        ({"exp": at(NOW - LEEWAY)}, "expired"),
        ({"exp": at(NOW - LEEWAY + timedelta(seconds=1))}, None),
        ({"nbf": at(NOW + LEEWAY + timedelta(seconds=1))}, "not_yet_valid"),
        ({"nbf": at(NOW + LEEWAY)}, None),
        ({"iat": at(NOW + LEEWAY + timedelta(seconds=1)), "nbf": at(NOW)}, "issued_in_future"),
        ({"iat": at(NOW + LEEWAY), "nbf": at(NOW)}, None),
    ],
    ids=[
        "expired-beyond-leeway",
        "expired-at-leeway",
        "expired-within-leeway",
        "nbf-beyond-leeway",
        "nbf-within-leeway",
        "iat-beyond-leeway",
        "iat-within-leeway",
    ],
)
def test_times_are_checked_against_the_clock_with_leeway(
    issuer: LocalIssuer, claims: dict[str, int], reason: str | None
) -> None:
    token = issuer.mint(claims, now=NOW - timedelta(minutes=1))

    if reason is None:
        assert verify(issuer, token).subject == "local-issuer-subject"
    else:
        assert refused(issuer, token).reason == reason


def test_the_clock_not_the_wall_decides(issuer: LocalIssuer) -> None:
    token = issuer.mint(now=datetime(2001, 1, 1, tzinfo=UTC), lifetime=timedelta(minutes=5))

    assert verifier(clock=FixedClock(datetime(2001, 1, 1, 0, 1, tzinfo=UTC))).verify(
        token, allowed_issuers=[issuer.issuer]
    ).issued_at == datetime(2001, 1, 1, tzinfo=UTC)
    assert refused(issuer, token).reason == "expired"


# Claims -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["sub", "aud", "exp", "iat", "jti"])
def test_a_missing_required_claim_is_refused(issuer: LocalIssuer, claim: str) -> None:
    error = refused(issuer, issuer.mint(now=NOW, drop=[claim]))

    assert (error.reason, error.detail) == ("missing_claim", f"the {claim} claim is missing")


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": True},
        {"exp": str(at(NOW) + 300)},
        {"iat": False},
        {"nbf": True},
        {"nbf": [1]},
        {"aud": []},
        {"aud": [1]},
        {"aud": ["deploy-tokens", ""]},
        {"aud": 5},
        {"aud": ""},
        {"sub": ""},
        {"sub": 5},
        {"jti": ""},
        {"jti": 7},
    ],
    ids=str,
)
def test_a_required_claim_of_the_wrong_type_counts_as_missing(
    issuer: LocalIssuer, claims: dict[str, Any]
) -> None:
    assert refused(issuer, issuer.mint(claims, now=NOW)).reason == "missing_claim"


@pytest.mark.parametrize(
    "claims",
    [{"exp": 10**400}, {"exp": 1e300}, {"iat": -(10**20)}, {"nbf": float("nan")}, {"jti": "a\x00b"}],
    ids=["huge-exp", "far-exp", "ancient-iat", "nan-nbf", "nul-in-jti"],
)
def test_signed_claims_that_are_no_time_or_hold_control_characters_are_malformed(
    issuer: LocalIssuer, claims: dict[str, Any]
) -> None:
    assert refused(issuer, issuer.mint(claims, now=NOW)).reason == "malformed"


# Caches and refreshes ---------------------------------------------------------------------------------------


def test_discovery_and_keys_are_fetched_once_then_cached(issuer: LocalIssuer) -> None:
    shared = verifier()
    for alg in ("RS256", "ES256", "RS256"):
        shared.verify(issuer.mint(alg=alg, now=NOW), allowed_issuers=[issuer.issuer])

    assert issuer.requests == {issuer.discovery_path: 1, issuer.jwks_path: 1}


def test_cached_keys_keep_verifying_while_the_issuer_fails(issuer: LocalIssuer) -> None:
    shared = verifier()
    shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer])
    issuer.fail_with(500)

    assert shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer]).issuer == issuer.issuer


def test_discovery_and_keys_are_fetched_again_after_the_cache_lifespan(issuer: LocalIssuer) -> None:
    shared = verifier(cache_lifespan=timedelta(seconds=0.3))
    shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer])
    time.sleep(0.35)
    shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer])

    assert issuer.requests == {issuer.discovery_path: 2, issuer.jwks_path: 2}


def test_a_token_signed_by_a_rotated_in_key_is_verified_after_one_refresh(issuer: LocalIssuer) -> None:
    shared = verifier(min_refresh_interval=timedelta(0))
    old = issuer.mint(now=NOW)
    shared.verify(old, allowed_issuers=[issuer.issuer])
    issuer.rotate()

    assert shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer]).issuer == issuer.issuer
    assert issuer.requests[issuer.jwks_path] == 2
    with pytest.raises(IdTokenRefused) as caught:
        shared.verify(old, allowed_issuers=[issuer.issuer])  # its key has left the JWKS
    assert caught.value.reason == "unknown_key"


def test_a_key_kept_through_a_rotation_still_verifies(issuer: LocalIssuer) -> None:
    shared = verifier()
    old = issuer.mint(now=NOW)
    issuer.rotate(keep_old=True)

    shared.verify(issuer.mint(now=NOW), allowed_issuers=[issuer.issuer])
    assert shared.verify(old, allowed_issuers=[issuer.issuer]).issuer == issuer.issuer


def test_a_flood_of_random_kids_fetches_the_keys_no_more_than_the_interval_allows(
    issuer: LocalIssuer,
) -> None:
    shared = verifier(min_refresh_interval=timedelta(seconds=10))
    tokens = [issuer.mint(kid=uuid.uuid4().hex, now=NOW) for _ in range(64)]

    def attempt(token: str) -> str:
        try:
            shared.verify(token, allowed_issuers=[issuer.issuer])
        except IdTokenRefused as error:
            return error.reason
        return "verified"

    with ThreadPoolExecutor(max_workers=16) as pool:
        reasons = set(pool.map(attempt, tokens))

    assert reasons == {"unknown_key"}
    # The first fetch is the keys' first: no refresh within the interval after it, however many kids.
    assert issuer.requests == {issuer.discovery_path: 1, issuer.jwks_path: 1}


def test_an_unknown_kid_refreshes_again_once_the_interval_has_passed(issuer: LocalIssuer) -> None:
    shared = verifier(min_refresh_interval=timedelta(seconds=0.5))
    first, successor = issuer.mint(now=NOW), new_key("RS256")  # made before the timed part: keys take a while
    shared.verify(first, allowed_issuers=[issuer.issuer])
    issuer.rotate(to=[successor])
    rotated = issuer.mint(now=NOW)
    with pytest.raises(IdTokenRefused):
        shared.verify(rotated, allowed_issuers=[issuer.issuer])
    assert issuer.requests[issuer.jwks_path] == 1

    time.sleep(0.55)

    assert shared.verify(rotated, allowed_issuers=[issuer.issuer]).issuer == issuer.issuer
    assert issuer.requests[issuer.jwks_path] == 2


# The issuer unavailable -------------------------------------------------------------------------------------


def test_an_issuer_that_is_down_is_unavailable() -> None:
    with LocalIssuer() as stopped:
        token, url = stopped.mint(now=NOW), stopped.issuer
        stopped.stop()
        with pytest.raises(IssuerUnavailable) as caught:
            verifier().verify(token, allowed_issuers=[url])

    assert caught.value.detail == "discovery: connection refused"


def test_an_issuer_whose_host_name_cannot_be_encoded_is_unavailable_at_once(issuer: LocalIssuer) -> None:
    url = "https://" + "a" * 64 + ".example"  # a DNS label is at most 63 characters
    token = issuer.mint({"iss": url}, now=NOW)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable) as caught:
        verifier(http_timeout=5.0).verify(token, allowed_issuers=[url])
    assert time.monotonic() - started < 2  # not the whole deadline
    assert caught.value.detail == "discovery: the host name does not resolve"


@pytest.mark.parametrize("status", [500, 404, 302])
def test_an_issuer_answering_other_than_200_is_unavailable(issuer: LocalIssuer, status: int) -> None:
    issuer.fail_with(status)

    assert unavailable(issuer, issuer.mint(now=NOW)).detail == f"discovery: HTTP {status}"


def test_a_stalled_issuer_is_unavailable_within_the_timeout(issuer: LocalIssuer) -> None:
    issuer.stall(30)
    started = time.monotonic()

    assert unavailable(issuer, issuer.mint(now=NOW), http_timeout=1).detail == "discovery: timed out"
    assert time.monotonic() - started < 3


def test_requests_waiting_on_a_stalled_issuer_all_end_within_the_timeout_after_one_request(
    issuer: LocalIssuer,
) -> None:
    issuer.stall(30)
    shared = verifier(http_timeout=1)
    started = time.monotonic()

    def attempt(token: str) -> str:
        try:
            shared.verify(token, allowed_issuers=[issuer.issuer])
        except IssuerUnavailable:
            return "unavailable"
        return "verified"

    tokens = [issuer.mint(now=NOW) for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(attempt, tokens)) == {"unavailable"}
    assert time.monotonic() - started < 3.5
    assert issuer.requests.total() == 1


def test_after_a_failure_the_issuer_is_not_asked_again_until_the_interval_has_passed(
    issuer: LocalIssuer,
) -> None:
    shared = verifier(min_refresh_interval=timedelta(seconds=0.5))
    first, second, third = (issuer.mint(now=NOW) for _ in range(3))
    issuer.fail_with(500)
    with pytest.raises(IssuerUnavailable):
        shared.verify(first, allowed_issuers=[issuer.issuer])
    issuer.heal()

    with pytest.raises(IssuerUnavailable) as caught:
        shared.verify(second, allowed_issuers=[issuer.issuer])
    assert caught.value.detail == "discovery: HTTP 500 (moments ago, not asked again yet)"
    assert issuer.requests.total() == 1

    time.sleep(0.55)
    assert shared.verify(third, allowed_issuers=[issuer.issuer]).issuer == issuer.issuer


def test_a_discovery_document_naming_another_issuer_is_unavailable(issuer: LocalIssuer) -> None:
    issuer.advertise(issuer="https://gitlab.example.com")

    error = unavailable(issuer, issuer.mint(now=NOW))

    assert error.detail == "discovery: the document names the issuer 'https://gitlab.example.com'"
    assert issuer.requests[issuer.jwks_path] == 0


@pytest.mark.parametrize(
    ("where", "body", "detail"),
    [
        ("discovery", b"<html>sign in</html>", "discovery: the answer is not JSON"),
        ("discovery", b"[]", "discovery: the document is not a JSON object"),
        ("discovery", b'{"issuer": "__ISSUER__"}', "discovery: the document names no jwks_uri"),
        ("jwks", b"not json", "JWKS: the answer is not JSON"),
        ("jwks", b'{"keys": []}', "JWKS: no usable signing key in it"),
        ("jwks", b'{"keys": [{"kty": "RSA", "kid": "x"}]}', "JWKS: no usable signing key in it"),
        (
            "jwks",
            b'{"keys": "' + b"k" * (1024 * 1024) + b'"}',
            "JWKS: the answer is larger than 1048576 bytes",
        ),
    ],
    ids=["not-json", "list", "no-jwks-uri", "jwks-not-json", "no-keys", "unusable-key", "over-1-mib"],
)
def test_unusable_documents_make_the_issuer_unavailable(
    issuer: LocalIssuer, where: str, body: bytes, detail: str
) -> None:
    path = issuer.discovery_path if where == "discovery" else issuer.jwks_path
    issuer.serve_raw(path, body.replace(b"__ISSUER__", issuer.issuer.encode()))

    assert unavailable(issuer, issuer.mint(now=NOW)).detail == detail


def test_an_http_issuer_is_refused_unfetched_unless_insecure_issuers_are_allowed(issuer: LocalIssuer) -> None:
    assert (
        unavailable(issuer, issuer.mint(now=NOW), allow_insecure=False).detail
        == "discovery: not an https URL"
    )
    assert issuer.requests.total() == 0


@pytest.mark.parametrize(
    "jwks_uri", ["http://127.0.0.1:9/keys", "file:///etc/passwd", "ftp://127.0.0.1/keys"]
)
def test_an_https_issuer_whose_jwks_uri_is_not_https_is_unavailable(jwks_uri: str) -> None:
    with LocalIssuer(tls=True) as secure:
        secure.advertise(jwks_uri=jwks_uri)
        with pytest.raises(IssuerUnavailable) as caught:
            verify(secure, secure.mint(now=NOW), allow_insecure=False, tls=secure.client_tls())

        assert caught.value.detail.endswith("not an https URL")
        assert secure.requests == {secure.discovery_path: 1}


def test_an_https_issuer_with_an_untrusted_certificate_is_unavailable() -> None:
    with LocalIssuer(tls=True) as secure, pytest.raises(IssuerUnavailable) as caught:
        verify(secure, secure.mint(now=NOW), allow_insecure=False)

    assert caught.value.detail.startswith("discovery: TLS error")
