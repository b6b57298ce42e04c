"""What the pages show about a token: dates, "in N days", the expiry warning level, scope descriptions; and
how long the tokens of a trust policy live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from domain.deploy_token import INTERVALS, days_left
from domain.scopes import DESCRIPTIONS, READ_VIRTUAL_REGISTRY, SCOPES, WRITE_VIRTUAL_REGISTRY
from projections.credentials import TokenRecord

VIRTUAL_REGISTRY_SCOPES: Final = frozenset({READ_VIRTUAL_REGISTRY, WRITE_VIRTUAL_REGISTRY})

# Warning levels inside the notification windows (behaviour [notifications]): the closest window decides.
# Each level has words
# and an icon, so that the warning never rests on colour alone.
_LEVELS: Final[dict[int, str]] = {7: "danger", 30: "warning", 60: "notice"}


def short_date(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%b %-d, %Y")


def date_time(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def in_days(days: int) -> str:
    if days <= 0:
        return "in less than a day"
    return "in 1 day" if days == 1 else f"in {days} days"


def days_ago(days: int) -> str:
    if days <= 0:
        return "today"
    return "1 day ago" if days == 1 else f"{days} days ago"


@dataclass(frozen=True)
class Expiry:
    """How a token's expiry reads: "Never", or the date with "in N days" and a warning inside 60/30/7 days."""

    date: str
    iso: str | None
    relative: str | None
    level: str | None  # "danger" (within 7 days), "warning" (30), "notice" (60), or None
    window: int | None

    @property
    def warning_text(self) -> str | None:
        return None if self.window is None else f"Expires within {self.window} days"


def expiry_of(token: TokenRecord, now: datetime) -> Expiry:
    if token.expires_at is None:
        return Expiry("Never", None, None, None, None)
    iso = token.expires_at.isoformat()
    left = days_left(token.expires_at, now.date())
    if token.is_expired(now):
        return Expiry(short_date(token.expires_at), iso, f"expired {days_ago(-left)}", None, None)
    if token.revoked:  # a revoked token will never expire in use: no warning
        return Expiry(short_date(token.expires_at), iso, in_days(left), None, None)
    window = next((interval for interval in sorted(INTERVALS) if left <= interval), None)
    level = None if window is None else _LEVELS.get(window)
    return Expiry(short_date(token.expires_at), iso, in_days(left), level, window)


def status_of(token: TokenRecord, now: datetime) -> str:
    if token.revoked:
        return "Revoked"
    if token.is_expired(now):
        return "Expired"
    return "Active"


@dataclass(frozen=True)
class ScopeChoice:
    name: str
    description: str
    virtual_registry: bool


def scope_choices() -> list[ScopeChoice]:
    return [ScopeChoice(scope, DESCRIPTIONS[scope], scope in VIRTUAL_REGISTRY_SCOPES) for scope in SCOPES]


def duration(seconds: int) -> str:
    """A trust policy's TTL as people say it: "15 minutes", "1 hour", "1 minute 30 seconds"."""
    parts = []
    for size, unit in ((3600, "hour"), (60, "minute"), (1, "second")):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}" if count == 1 else f"{count} {unit}s")
    return " ".join(parts) or "0 seconds"
