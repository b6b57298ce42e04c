"""The deploy-token expiry email: what it says, to whom, and its deterministic Message-ID.

The Message-ID is the same on every attempt for one token, expiry date and interval, so it doubles as an
idempotency key for the receivers and relays that de-duplicate on it; with the boundary derived from it, a
resend is byte-identical apart from its Date.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses
from typing import Literal
from urllib.parse import urlsplit

from domain.deploy_token import INTERVALS

__all__ = ["ExpiryNotice", "Recipient", "compose", "message_id"]

NOTICE_INTERVALS = INTERVALS  # the domain decides which intervals exist

# Message-ID right-hand sides must be a plain dot-atom; anything looser would let a misconfigured domain
# break the header or produce ids that relays rewrite (and then de-duplication stops working).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


@dataclass(frozen=True)
class Recipient:
    name: str
    email: str


@dataclass(frozen=True)
class ExpiryNotice:
    token_id: int
    token_name: str
    namespace_kind: Literal["project", "group"]
    namespace_path: str
    expires_at: datetime
    interval_days: int
    days_left: int
    settings_url: str
    recipients: tuple[Recipient, ...]

    def __post_init__(self) -> None:
        # Validate at construction so a bad notice fails in the scanner, not halfway through a send.
        if self.token_id <= 0:
            raise ValueError(f"token_id must be positive, got {self.token_id}")
        if self.namespace_kind not in ("project", "group"):
            raise ValueError(f"namespace_kind must be 'project' or 'group', got {self.namespace_kind!r}")
        if self.expires_at.tzinfo is None or self.expires_at.utcoffset() is None:
            raise ValueError("expires_at must be timezone-aware (UTC)")
        if self.interval_days not in NOTICE_INTERVALS:
            raise ValueError(f"interval_days must be one of {NOTICE_INTERVALS}, got {self.interval_days}")
        if not 0 <= self.days_left <= self.interval_days:
            raise ValueError(
                f"days_left must be between 0 and interval_days ({self.interval_days}), got {self.days_left}"
            )
        # The URL ends up in an href; only web links are acceptable there.
        if urlsplit(self.settings_url).scheme not in ("http", "https"):
            raise ValueError("settings_url must be an http(s) URL")
        if not self.recipients:
            raise ValueError("an expiry notice needs at least one recipient")


def _expiry_utc(notice: ExpiryNotice) -> datetime:
    return notice.expires_at.astimezone(UTC)


def message_id(notice: ExpiryNotice, domain: str) -> str:
    """Return the Message-ID for this notice: identical on every retry, so it works as an idempotency key.

    The expiry *date* is part of the key because a changed expiry starts a new notification cycle; the
    interval is part of it because the 60-, 30- and 7-day mails are distinct messages.
    """
    if not _DOMAIN_RE.fullmatch(domain):
        raise ValueError(
            f"invalid Message-ID domain {domain!r}: use an ASCII host name such as notify.example.com"
        )
    day = _expiry_utc(notice).strftime("%Y%m%d")
    return f"<deploy-token-expiry.{notice.token_id}.{day}.{notice.interval_days}d@{domain}>"


def _one_line(text: str) -> str:
    # Token names and paths are user input; control characters and line separators would break headers
    # (the email package refuses CR/LF outright) or forge extra lines in the text body.
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in text)
    return " ".join(cleaned.split())


def _days_phrase(days_left: int) -> str:
    if days_left == 0:
        return "today"
    if days_left == 1:
        return "in 1 day"
    return f"in {days_left} days"


def _unique_recipients(recipients: tuple[Recipient, ...]) -> list[Address]:
    # A user can be owner and maintainer at once; listing them twice would deliver two copies.
    seen: set[str] = set()
    addresses: list[Address] = []
    for recipient in recipients:
        key = recipient.email.strip().lower()
        if key in seen:
            continue
        seen.add(key)
        addresses.append(Address(display_name=_one_line(recipient.name), addr_spec=recipient.email.strip()))
    return addresses


def compose(
    notice: ExpiryNotice,
    *,
    sender: str,
    domain: str,
    now: datetime | None = None,
) -> EmailMessage:
    """Build the multipart/alternative expiry email for ``notice``.

    Pass ``now`` for a reproducible Date header; every other header and the body depend only on the
    arguments. The token's secret value is not part of ``ExpiryNotice`` and so can never leak into the mail.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")

    parsed_sender = getaddresses([sender])
    if len(parsed_sender) != 1 or "@" not in parsed_sender[0][1]:
        raise ValueError(
            f"sender must be one address such as 'Deploy tokens <noreply@example.com>', got {sender!r}"
        )

    mid = message_id(notice, domain)
    expires = _expiry_utc(notice)
    name = _one_line(notice.token_name)
    path = _one_line(notice.namespace_path)
    kind = notice.namespace_kind
    when = _days_phrase(notice.days_left)
    date_text = expires.strftime("%Y-%m-%d")
    instant_text = expires.strftime("%Y-%m-%d %H:%M:%S UTC")
    days_text = "less than a day" if notice.days_left == 0 else f"{notice.days_left}"

    message = EmailMessage()
    message["Subject"] = f'Your deploy token "{name}" for {kind} {path} expires {when}'
    message["From"] = sender
    message["To"] = _unique_recipients(notice.recipients)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = mid
    message["X-Idempotency-Key"] = mid
    # RFC 3834: stops vacation responders and mailing lists from answering a machine-sent notice.
    message["Auto-Submitted"] = "auto-generated"
    # Exchange ignores Auto-Submitted for out-of-office replies; this is its own switch.
    message["X-Auto-Response-Suppress"] = "All"

    text = (
        f"Hello,\n"
        f"\n"
        f'The deploy token "{name}" (ID {notice.token_id}) for {kind} {path} expires {when}.\n'
        f"\n"
        f"  Token:       {name} (ID {notice.token_id})\n"
        f"  {kind.capitalize() + ':':<12} {path}\n"
        f"  Expires on:  {date_text} (UTC)\n"
        f"  Expires at:  {instant_text}\n"
        f"  Days left:   {days_text}\n"
        f"\n"
        f"From that moment, anything still using this token (CI jobs, registry\n"
        f"logins, pull secrets) will be refused. To avoid an outage, rotate the\n"
        f"token or create a replacement, update everything that uses it, and then\n"
        f"revoke the old one.\n"
        f"\n"
        f"Manage deploy tokens: {notice.settings_url}\n"
        f"\n"
        f"You are receiving this {notice.interval_days}-day notice because you are an owner or\n"
        f"maintainer of the {kind} {path}.\n"
    )
    e_name = html.escape(name)
    e_path = html.escape(path)
    e_url = html.escape(notice.settings_url, quote=True)
    html_body = (
        "<!DOCTYPE html>\n"
        '<html><head><meta charset="utf-8"></head><body>\n'
        f"<p>Hello,</p>\n"
        f"<p>The deploy token <strong>{e_name}</strong> (ID {notice.token_id}) for {kind} "
        f"<strong>{e_path}</strong> expires {when}.</p>\n"
        "<table>\n"
        f'<tr><th align="left">Token</th><td>{e_name} (ID {notice.token_id})</td></tr>\n'
        f'<tr><th align="left">{kind.capitalize()}</th><td>{e_path}</td></tr>\n'
        f'<tr><th align="left">Expires on</th><td>{date_text} (UTC)</td></tr>\n'
        f'<tr><th align="left">Expires at</th><td>{instant_text}</td></tr>\n'
        f'<tr><th align="left">Days left</th><td>{days_text}</td></tr>\n'
        "</table>\n"
        "<p>From that moment, anything still using this token (CI jobs, registry logins, pull secrets) "
        "will be refused. To avoid an outage, rotate the token or create a replacement, update everything "
        "that uses it, and then revoke the old one.</p>\n"
        f'<p><a href="{e_url}">Manage deploy tokens</a></p>\n'
        f"<p>You are receiving this {notice.interval_days}-day notice because you are an owner or "
        f"maintainer of the {kind} {e_path}.</p>\n"
        "</body></html>\n"
    )
    # Quoted-printable keeps the body 7-bit clean, so non-ASCII token names survive relays that do not
    # offer 8BITMIME (the default heuristic would pick raw 8bit).
    message.set_content(text, cte="quoted-printable")
    message.add_alternative(html_body, subtype="html", cte="quoted-printable")
    # The default boundary is random; deriving it from the Message-ID makes a retry byte-identical.
    # "=_" cannot occur in quoted-printable output, so the boundary can never collide with the body.
    message.set_boundary("=_" + hashlib.sha256(mid.encode()).hexdigest()[:32])
    return message
