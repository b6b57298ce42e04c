"""Marshmallow schemas of the trust-policy API (behaviour [federation]): the body of a create or a change, and a
policy as the API shows it.

A field is parsed here for its type only (a string, an object of claims, a whole number). What a policy may say
(an issuer the instance trusts, an exact identifying claim, a TTL in range, ...) is the domain's to decide
(``domain.federation.PolicyTerms``), so that every such error comes back at once, under its field, as GitLab's
model validation answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.schemas import GitLabDateTime, ScopeList
from domain.federation import (
    DEFAULT_TTL,
    MAX_TTL,
    MIN_TTL,
    NAME_MAX_LENGTH,
    URL_MAX_LENGTH,
    claim_text,
)

_MISSING: Final[dict[str, str | list[Any] | dict[Any, Any]]] = {
    "required": "is missing",
    "null": "is missing",
}
_LOW, _HIGH = int(MIN_TTL.total_seconds()), int(MAX_TTL.total_seconds())
# What ``claims`` and ``claim_patterns`` say in the answer, the body and the document.
EXACT_DESCRIPTION: Final = "claim name → the value the ID token's claim must equal"
GLOB_DESCRIPTION: Final = (
    "claim name → a pattern the ID token's claim must match: `*` any characters but `/`, `**` any characters"
)
ATTRIBUTES: Final = ("name", "issuer", "audience", "claims", "claim_patterns", "scopes", "ttl_seconds")


class ClaimValues(fields.Dict):
    """Claim names and the values their conditions compare: a JSON object, or ``claims[<name>]=<value>`` form
    parameters (folded into one object by the view). A JSON boolean or integer reads as the ID token's claim
    would (``claim_text``: ``true``, ``42``), so ``{"ref_protected": true}`` means what it says."""

    default_error_messages = {
        "invalid": "must be an object of claim names to strings",
        "null": "must be an object of claim names to strings",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), values=fields.String(), **kwargs)

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise self.make_error("invalid")
        parsed: dict[str, str] = {}
        for claim, given in value.items():
            text = claim_text(given)
            if not isinstance(claim, str) or text is None:
                raise self.make_error("invalid")
            parsed[claim] = text
        return parsed


class WholeSeconds(fields.Integer):
    """A whole number of seconds: a JSON integer or digits (a form parameter). Marshmallow would read ``true``
    as 1 and ``900.5`` as 900; neither is a number of seconds anyone meant. The range is the domain's."""

    default_error_messages = {
        "invalid": f"must be a whole number from {_LOW} to {_HIGH}",
        "null": f"must be a whole number from {_LOW} to {_HIGH}",
    }

    def _deserialize(
        self, value: Any, attr: str | None, data: Mapping[str, Any] | None, **kwargs: Any
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise self.make_error("invalid")
        if isinstance(value, str):
            # Twenty digits pass every 64-bit number to the domain's range check and keep int() cheap.
            if not (value.isascii() and value.isdigit() and len(value) <= 20):
                raise self.make_error("invalid")
            return int(value)
        return value


def _text(maximum: int, **kwargs: Any) -> fields.String:
    # Bounded here too (the domain gives the field messages): a huge value is refused before it is copied.
    kwargs["error_messages"] = {
        "invalid": "is invalid",
        "null": "is invalid",
        **kwargs.get("error_messages", {}),
    }
    return fields.String(
        validate=validate.Length(max=10 * maximum, error=f"is too long (maximum is {maximum} characters)"),
        **kwargs,
    )


class TrustPolicyCreateSchema(Schema):
    name = _text(NAME_MAX_LENGTH, required=True, error_messages=_MISSING)
    issuer = _text(
        URL_MAX_LENGTH,
        required=True,
        error_messages=_MISSING,
        metadata={"description": "an issuer the instance trusts (`deploy_token_oidc_issuers`), exactly"},
    )
    audience = _text(
        URL_MAX_LENGTH,
        required=True,
        error_messages=_MISSING,
        metadata={"description": "the `aud` the ID token must carry"},
    )
    claims = ClaimValues(load_default=dict, metadata={"description": EXACT_DESCRIPTION})
    claim_patterns = ClaimValues(load_default=dict, metadata={"description": GLOB_DESCRIPTION})
    scopes = ScopeList(required=True, error_messages=_MISSING)
    ttl_seconds = WholeSeconds(
        load_default=None,
        allow_none=True,
        metadata={
            "description": "lifetime of each token the exchange issues",
            "minimum": _LOW,
            "maximum": _HIGH,
            "default": int(DEFAULT_TTL.total_seconds()),
        },
    )


class TrustPolicyChangeSchema(Schema):
    """Only the fields given change; ``claims`` and ``claim_patterns`` each replace their own conditions."""

    name = _text(NAME_MAX_LENGTH)
    issuer = _text(URL_MAX_LENGTH)
    audience = _text(URL_MAX_LENGTH)
    claims = ClaimValues(metadata={"description": EXACT_DESCRIPTION})
    claim_patterns = ClaimValues(metadata={"description": GLOB_DESCRIPTION})
    scopes = ScopeList(error_messages={"null": "does not have a valid value"})
    ttl_seconds = WholeSeconds(metadata={"minimum": _LOW, "maximum": _HIGH})

    @validates_schema
    def something_to_change(self, data: dict[str, Any], **kwargs: Any) -> None:
        """Grape's ``at_least_one_of``: ``name, issuer, ... are missing, at least one parameter must be provided``."""
        if not data:
            raise ValidationError(
                "are missing, at least one parameter must be provided", field_name=", ".join(ATTRIBUTES)
            )


class TrustPolicySchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    issuer = fields.String(dump_only=True)
    audience = fields.String(dump_only=True)
    claims = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        dump_only=True,
        metadata={"description": EXACT_DESCRIPTION},
    )
    claim_patterns = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        dump_only=True,
        metadata={"description": GLOB_DESCRIPTION},
    )
    scopes = fields.List(fields.String(), dump_only=True)
    ttl_seconds = fields.Integer(dump_only=True)
    created_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    updated_at = GitLabDateTime(dump_only=True, metadata={"type": "string", "format": "date-time"})
    created_by = fields.String(dump_only=True, metadata={"description": "the username of whoever created it"})
