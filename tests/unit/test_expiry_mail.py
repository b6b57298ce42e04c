"""The expiry email's composition: Message-ID, notice validation, headers and both bodies (no I/O)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from deploy_tokens.expiry_mail import ExpiryNotice, Recipient, compose, message_id

UTC = dt.UTC
NOW = dt.datetime(2025, 1, 30, 1, 0, tzinfo=UTC)
SENDER = "Deploy tokens <noreply@example.com>"
DOMAIN = "notify.example.com"
SETTINGS_URL = "https://gitlab.example.com/acme/backend/api/-/settings/repository#js-deploy-tokens"


def make_notice(**overrides: Any) -> ExpiryNotice:
    fields: dict[str, Any] = {
        "token_id": 42,
        "token_name": "ci-pull",
        "namespace_kind": "project",
        "namespace_path": "acme/backend/api",
        "expires_at": dt.datetime(2025, 3, 1, tzinfo=UTC),
        "interval_days": 30,
        "days_left": 30,
        "settings_url": SETTINGS_URL,
        "recipients": (Recipient("Ann Owner", "ann@example.com"), Recipient("Bob Maint", "bob@example.com")),
    }
    fields.update(overrides)
    return ExpiryNotice(**fields)


def make_message(**overrides: Any) -> EmailMessage:
    return compose(make_notice(**overrides), sender=SENDER, domain=DOMAIN, now=NOW)


def parts(message: EmailMessage) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.iter_parts()}


# --------------------------------------------------------------------------- message_id


def test_message_id_is_identical_for_equal_notices() -> None:
    assert message_id(make_notice(), DOMAIN) == message_id(make_notice(), DOMAIN)
    assert message_id(make_notice(), DOMAIN) == "<deploy-token-expiry.42.20250301.30d@notify.example.com>"


def test_message_id_differs_per_interval() -> None:
    seven_day = make_notice(interval_days=7, days_left=7)
    assert message_id(seven_day, DOMAIN) != message_id(make_notice(), DOMAIN)


def test_message_id_changes_when_expiry_date_changes() -> None:
    renewed = make_notice(expires_at=dt.datetime(2025, 3, 2, tzinfo=UTC))
    assert message_id(renewed, DOMAIN) != message_id(make_notice(), DOMAIN)


def test_message_id_uses_the_utc_date_of_expiry() -> None:
    # 01:00 on 1 March at +02:00 is still 28 February in UTC.
    plus_two = dt.timezone(dt.timedelta(hours=2))
    notice = make_notice(expires_at=dt.datetime(2025, 3, 1, 1, 0, tzinfo=plus_two))
    assert ".20250228.30d@" in message_id(notice, DOMAIN)


@pytest.mark.parametrize("domain", ["", "notify example.com", "a>b", "user@example.com", "-bad.example"])
def test_message_id_rejects_malformed_domain(domain: str) -> None:
    with pytest.raises(ValueError, match="domain"):
        message_id(make_notice(), domain)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"expires_at": dt.datetime(2025, 3, 1)}, "timezone-aware"),
        ({"interval_days": 14, "days_left": 10}, "interval_days"),
        ({"days_left": 31}, "days_left"),
        ({"days_left": -1}, "days_left"),
        ({"settings_url": "javascript:alert(1)"}, "settings_url"),
        ({"recipients": ()}, "recipient"),
        ({"token_id": 0}, "token_id"),
    ],
)
def test_notice_rejects_invalid_fields(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_notice(**overrides)


# --------------------------------------------------------------------------- compose


def test_compose_builds_multipart_alternative_with_text_then_html() -> None:
    message = make_message()
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def test_compose_sets_the_expected_headers() -> None:
    message = make_message()
    expected_id = "<deploy-token-expiry.42.20250301.30d@notify.example.com>"
    assert message["Subject"] == 'Your deploy token "ci-pull" for project acme/backend/api expires in 30 days'
    assert message["From"] == SENDER
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com", "bob@example.com"]
    assert message["Date"] == "Thu, 30 Jan 2025 01:00:00 +0000"
    assert message["Message-ID"] == expected_id
    assert message["X-Idempotency-Key"] == expected_id
    assert message["Auto-Submitted"] == "auto-generated"


@pytest.mark.parametrize(("days_left", "phrase"), [(0, "expires today"), (1, "expires in 1 day")])
def test_compose_subject_wording_for_the_last_days(days_left: int, phrase: str) -> None:
    message = make_message(interval_days=7, days_left=days_left)
    assert message["Subject"].endswith(phrase)


def test_compose_body_names_token_namespace_expiry_days_and_link_in_both_parts() -> None:
    notice = make_notice(
        token_name="registry-reader",
        namespace_kind="group",
        namespace_path="acme/platform",
        expires_at=dt.datetime(2025, 3, 1, 12, 30, 15, tzinfo=UTC),
        interval_days=7,
        days_left=5,
    )
    bodies = parts(compose(notice, sender=SENDER, domain=DOMAIN, now=NOW))
    for body in bodies.values():
        assert "registry-reader" in body
        assert "group" in body
        assert "acme/platform" in body
        assert "2025-03-01" in body
        assert "2025-03-01 12:30:15 UTC" in body
        assert "expires in 5 days" in body
        assert "ID 42" in body
    assert SETTINGS_URL in bodies["text/plain"]
    assert f'href="{SETTINGS_URL}"' in bodies["text/html"]


def test_compose_escapes_user_input_in_html() -> None:
    bodies = parts(make_message(token_name="<script>alert(1)</script>", namespace_path='a/"b"&c'))
    assert "<script>" not in bodies["text/html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bodies["text/html"]
    assert "a/&quot;b&quot;&amp;c" in bodies["text/html"]
    # The text part is not HTML, so it shows the name as typed.
    assert "<script>alert(1)</script>" in bodies["text/plain"]


def test_compose_escapes_quotes_in_the_settings_link() -> None:
    html_body = parts(make_message(settings_url='https://x.example/a"onmouseover="b'))["text/html"]
    assert 'href="https://x.example/a&quot;onmouseover=&quot;b"' in html_body


def test_compose_cannot_be_tricked_into_extra_headers_by_a_token_name() -> None:
    message = make_message(token_name="evil\r\nBcc: attacker@example.net")
    assert message["Bcc"] is None
    assert "\n" not in message["Subject"]
    assert b"\nBcc:" not in message.as_bytes()


def test_compose_is_byte_identical_for_the_same_inputs() -> None:
    # Same Message-ID, boundary and Date: a retry sends exactly the same bytes.
    assert make_message().as_bytes() == make_message().as_bytes()


def test_compose_lists_a_recipient_once_even_if_given_twice() -> None:
    message = make_message(
        recipients=(Recipient("Ann", "ann@example.com"), Recipient("Ann (owner)", "ANN@example.com"))
    )
    assert [a.addr_spec for a in message["To"].addresses] == ["ann@example.com"]


def test_compose_keeps_non_ascii_token_names_intact_over_7bit() -> None:
    message = make_message(token_name="déploiement-ü")
    raw = message.as_bytes()
    assert raw.isascii()
    reparsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(reparsed, EmailMessage)
    assert "déploiement-ü" in reparsed["Subject"]
    assert all("déploiement-ü" in body for body in parts(reparsed).values())


def test_compose_rejects_a_naive_now() -> None:
    with pytest.raises(ValueError, match="now"):
        compose(make_notice(), sender=SENDER, domain=DOMAIN, now=dt.datetime(2025, 1, 30))
