"""Marshmallow schemas: every input is parsed and every output serialised through one of these."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from marshmallow import Schema, fields, validate

from api.params import PaginationSchema
from domain.scopes import SCOPES


def gitlab_time(moment: datetime | None) -> str | None:
    """GitLab's timestamps: UTC with milliseconds and a Z, e.g. ``2019-03-15T08:00:00.000Z``."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class GitLabDateTime(fields.Field[date | datetime | None]):
    """Serialises as GitLab does; parses ISO 8601 datetimes and plain dates (a date: 00:00 UTC, behaviour [expiry])."""

    default_error_messages = {"invalid": "must be in ISO 8601 format"}

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return gitlab_time(value)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date | datetime | None:
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            return parse_iso8601(value)
        except (ValueError, OverflowError):  # OverflowError: 24:00 on 9999-12-31
            raise self.make_error("invalid") from None


class UtcInstant(GitLabDateTime):
    """An instant to query by (a filter's bound, a point in time): what ``GitLabDateTime`` reads, as an aware UTC
    datetime; a plain date is 00:00 UTC that day. An instant that does not exist in UTC (9999-12-31T23:59-01:00)
    is a field error, not an overflow deep in a query."""

    default_error_messages = {"range": "must be between 0001-01-01 and 9999-12-31 UTC"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime | None:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        if parsed is None:
            return None
        if not isinstance(parsed, datetime):
            return datetime.combine(parsed, time(), tzinfo=UTC)
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise self.make_error("range") from None


# ISO 8601 forms ``fromisoformat`` does not read: ordinal dates (2026-010, 2026010) and 24:00 (the day's end).
_ORDINAL_DATE = re.compile(r"\A(\d{4})-?(\d{3})(?=\Z|T)")
_END_OF_DAY = re.compile(r"T24(?::?00(?::?00(?:[.,]0+)?)?)?(?=\Z|Z|[+-])")


def parse_iso8601(value: str) -> date | datetime:
    """Any complete ISO 8601 date (calendar, week or ordinal; extended or basic) or date-time; a date-time
    without an offset is UTC. Raises ``ValueError`` for anything else (``OverflowError`` past year 9999)."""
    text = value.strip().upper()
    ordinal = _ORDINAL_DATE.match(text)
    if ordinal:
        day = date(int(ordinal.group(1)), 1, 1) + timedelta(days=int(ordinal.group(2)) - 1)
        if day.year != int(ordinal.group(1)) or int(ordinal.group(2)) == 0:
            raise ValueError(f"no day {ordinal.group(2)} in {ordinal.group(1)}")
        text = day.isoformat() + text[ordinal.end() :]
    if "T" not in text and " " not in text:
        return date.fromisoformat(text)
    end_of_day = _END_OF_DAY.search(text)
    if end_of_day:
        text = text[: end_of_day.start()] + "T00:00:00" + text[end_of_day.end() :]
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if end_of_day:
        parsed += timedelta(days=1)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ScopeList(fields.Field[list[str]]):
    """Scopes as a JSON array, repeated ``scopes[]`` parameters or one comma-separated string."""

    default_error_messages = {"invalid": "does not have a valid value"}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> list[str]:
        if isinstance(value, str):
            items = [part.strip() for part in value.split(",") if part.strip()]
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            items = [item.strip() for part in value for item in part.split(",") if item.strip()]
        else:
            raise self.make_error("invalid")
        if not items or any(item not in SCOPES for item in items):
            raise self.make_error("invalid")
        return items

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> list[str]:
        return list(value)


class Flag(fields.Boolean):
    """GitLab booleans arrive as true/false, 1/0 or "true"/"false" strings."""

    default_error_messages = {"invalid": "is invalid"}


class DeployTokenSchema(Schema):
    id = fields.Integer(attribute="token_id", dump_only=True)
    name = fields.String(dump_only=True)
    username = fields.String(dump_only=True)
    expires_at = GitLabDateTime(dump_only=True, allow_none=True)
    scopes = fields.List(fields.String(), dump_only=True)
    revoked = fields.Boolean(dump_only=True)
    expired = fields.Boolean(dump_only=True)


class CreatedDeployTokenSchema(DeployTokenSchema):
    token = fields.String(dump_only=True)


class DeployTokenCreateSchema(Schema):
    name = fields.String(
        required=True, validate=validate.Length(min=1), error_messages={"required": "is missing"}
    )
    scopes = ScopeList(required=True, error_messages={"required": "is missing"})
    expires_at = GitLabDateTime(load_default=None, allow_none=True)
    username = fields.String(load_default=None, allow_none=True)


class DeployTokenListSchema(PaginationSchema):
    active = Flag(load_default=False)


class RotateSchema(Schema):
    grace_period_seconds = fields.Integer(load_default=0, validate=validate.Range(min=0, max=30 * 24 * 3600))


class RevokeByValueSchema(Schema):
    token = fields.String(
        required=True, validate=validate.Length(min=1), error_messages={"required": "is missing"}
    )


class HistoryEntrySchema(Schema):
    version = fields.Integer()
    event = fields.String()
    timestamp = GitLabDateTime()
    actor = fields.Dict()
    changes = fields.Dict()


class CiVariableSchema(Schema):
    key = fields.String()
    value = fields.String()
    variable_type = fields.String()
    protected = fields.Boolean()
    masked = fields.Boolean()
    raw = fields.Boolean()
    environment_scope = fields.String()
