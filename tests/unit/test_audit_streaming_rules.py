"""behaviour [audit-streaming]: the destinations register's rules, the retry waits and the signature (no I/O)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime
from ipaddress import ip_address

import pytest

from domain.actors import Actor
from domain.audit_streaming import (
    AuditStreaming,
    check_destination_url,
    check_verification_token,
    generate_verification_token,
    is_local_host,
    is_public_address,
)
from domain.errors import NotFound, ValidationError
from infrastructure.audit_delivery import DeliveryPolicy, signature

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)
ADMIN = Actor.user(1, "root", is_admin=True)


def _add(register: AuditStreaming, name: str, url: str = "https://siem.example.com/") -> int:
    return register.create_destination(
        name=name, destination_url=url, start="now", secret_ref=f"ref-{name}", actor=ADMIN, now=NOW
    )


def test_ids_grow_and_are_never_reused():
    register = AuditStreaming.initial(NOW)
    assert [_add(register, "a"), _add(register, "b")] == [1, 2]
    register.delete_destination(2, actor=ADMIN, now=NOW)
    assert _add(register, "c") == 3


def test_names_are_unique_without_regard_to_case_until_deleted():
    register = AuditStreaming.initial(NOW)
    _add(register, "SIEM")
    with pytest.raises(ValidationError) as refused:
        _add(register, "siem")
    assert refused.value.errors == {"name": ["has already been taken"]}
    register.delete_destination(1, actor=ADMIN, now=NOW)
    assert _add(register, "siem") == 2


def test_at_most_five():
    register = AuditStreaming.initial(NOW)
    for name in "abcde":
        _add(register, name)
    with pytest.raises(ValidationError, match="Maximum number of destinations"):
        _add(register, "f")


def test_deleting_an_unknown_destination_is_not_found():
    register = AuditStreaming.initial(NOW)
    with pytest.raises(NotFound):
        register.delete_destination(1, actor=ADMIN, now=NOW)
    _add(register, "a")
    register.delete_destination(1, actor=ADMIN, now=NOW)
    with pytest.raises(NotFound):
        register.delete_destination(1, actor=ADMIN, now=NOW)


def test_the_event_carries_no_token_only_its_reference():
    register = AuditStreaming.initial(NOW)
    _add(register, "a")
    created = register.collect_events()[-1]
    assert isinstance(created, AuditStreaming.DestinationCreated)
    assert created.secret_ref == "ref-a"
    assert "token" not in " ".join(vars(created))


def test_several_field_errors_are_reported_together():
    register = AuditStreaming.initial(NOW)
    with pytest.raises(ValidationError) as refused:
        register.create_destination(
            name="", destination_url="ftp://x", start="later", secret_ref="r", actor=ADMIN, now=NOW
        )
    assert set(refused.value.errors) == {"name", "destination_url", "start"}


@pytest.mark.parametrize(
    "url",
    [
        "https://siem.example.com",
        "https://siem.example.com:8443/intake",
        "https://siem.example.com./",
        "https://xn--sem-sna.example.com/",
        "https://8.8.8.8/in",
        "https://[2001:4860:4860::8888]/in",
    ],
)
def test_good_urls(url: str):
    assert check_destination_url(url) == url
    assert check_destination_url(url, allow_insecure=True) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://siem.example.com", "Only allowed schemes are https"),  # the token would travel in clear
        ("https://localhost/", "Requests to the local network are not allowed"),
        ("https://intake.localhost./", "Requests to the local network are not allowed"),
        ("https://127.0.0.1:9000/", "Requests to the local network are not allowed"),
        ("https://169.254.169.254/latest/meta-data", "Requests to the local network are not allowed"),
        ("https://10.1.2.3/", "Requests to the local network are not allowed"),
        ("https://[::1]:9000/x", "Requests to the local network are not allowed"),
        ("https://[::ffff:127.0.0.1]/", "Requests to the local network are not allowed"),
    ],
)
def test_insecure_urls_only_where_the_instance_allows_them(url: str, why: str):
    with pytest.raises(ValidationError) as refused:
        check_destination_url(url)
    assert refused.value.errors == {"destination_url": [f"is blocked: {why}"]}
    assert check_destination_url(url, allow_insecure=True) == url


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1",
        "http://[fe80::1%25eth0]/",
        "http://[v1.x]/",
        "http://[example.com]/",
        "http://-bad-.example.com/",
        "http://a..b/",
        "http://" + "a" * 64 + ".example.com/",
        "http://host:65536/",
        "https://siem.example.com/intake?token=s3cret",  # a secret in the URL would be kept in clear
        "https://siem.example.com/intake?",
        "file:///etc/passwd",
        "gopher://host/",
        "//host/path",
    ],
)
def test_bad_urls(url: str):
    for allow_insecure in (False, True):
        with pytest.raises(ValidationError) as refused:
            check_destination_url(url, allow_insecure=allow_insecure)
        assert list(refused.value.errors) == ["destination_url"]


def test_generated_tokens_are_24_base58_characters_and_valid():
    tokens = {generate_verification_token() for _ in range(50)}
    assert len(tokens) == 50
    for token in tokens:
        assert len(token) == 24 and check_verification_token(token) == token
        assert not set(token) & set("0OIl+/=")


def test_retry_waits_double_up_to_the_cap():
    policy = DeliveryPolicy(timeout=1, first_retry=1, max_retry=10)
    assert [policy.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy.backoff(10_000) == 10, "no overflow however long it fails"


def test_signature_is_hmac_sha256_of_the_exact_body():
    body = b'{"id":1}'
    expected = hmac.new(b"k" * 24, body, hashlib.sha256).hexdigest()
    assert signature(body, "k" * 24) == f"sha256={expected}"
    assert signature(body + b" ", "k" * 24) != signature(body, "k" * 24)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),  # multicast
        ("ff0e::1", False),
        ("::1", False),
        ("::ffff:127.0.0.1", False),  # IPv4-mapped
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::7f00:1", False),  # NAT64 of 127.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("64:ff9b:1::a00:1", False),  # local-use NAT64
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("::127.0.0.1", False),  # IPv4-compatible
    ],
)
def test_only_public_addresses_are_reachable(address: str, public: bool):
    assert is_public_address(ip_address(address)) is public
    assert is_local_host(address) is not public
