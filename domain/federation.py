"""Federation (behaviour [federation]): trust policies, and the use of an ID token exchanged under one.

A trust policy lets a CI job that presents an OIDC ID token from a named issuer, for a named audience and
with exactly the claims the policy lists, exchange it for a short-lived deploy token of the policy's holder
with the policy's scopes. Nothing secret is stored for it: the CI system's signature is the credential.

A policy is one aggregate per integer id (``trust_policy_uuid``), like a deploy token. Each exchange saves an
``IdTokenUse`` stream named after the ID token's issuer and ``jti`` in the same transaction as the token it
issues, so the event store's primary key refuses a second exchange of one ID token in any process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal
from urllib.parse import urlsplit
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.deploy_token import HolderKind
from domain.errors import ErrorCollector, NotFound, ValidationError
from domain.scopes import canonical_scopes
from domain.streams import stream_id
from domain.text import check_text

MatchKind = Literal["exact", "glob"]
MATCH_KINDS: Final[tuple[MatchKind, ...]] = ("exact", "glob")

NAME_MAX_LENGTH: Final = 255
URL_MAX_LENGTH: Final = 255
VALUE_MAX_LENGTH: Final = 255
MAX_CONDITIONS: Final = 16
DEFAULT_TTL: Final = timedelta(minutes=15)
MIN_TTL: Final = timedelta(minutes=1)
MAX_TTL: Final = timedelta(hours=1)

# Claims that say which repository or project the job runs for. A policy must pin one of them exactly:
# an issuer such as gitlab.com or GitHub signs ID tokens for every project it hosts, so a policy on
# ``ref`` alone would trust every project's main branch.
IDENTIFYING_CLAIMS: Final[tuple[str, ...]] = (
    "sub",
    "project_id",
    "project_path",
    "namespace_id",
    "namespace_path",
    "repository",
    "repository_id",
    "repository_owner",
    "repository_owner_id",
)
# Registered claims the verifier checks itself; a condition on them would be meaningless or misleading.
RESERVED_CLAIMS: Final[frozenset[str]] = frozenset({"iss", "aud", "exp", "nbf", "iat", "jti"})
_CLAIM_NAME: Final = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.:-]{0,63}\Z")
_VISIBLE_ASCII: Final = re.compile(r"\A[\x21-\x7e]+\Z")

_ID_TOKEN_NAMESPACE: Final = UUID("3c2b8f4e-7d1a-4e59-b6c0-91f5a2d4e8b3")


def trust_policy_uuid(policy_id: int) -> UUID:
    return stream_id("trust_policy", policy_id)


def id_token_use_uuid(issuer: str, token_id: str) -> UUID:
    """One stream per ID token ever exchanged: its issuer and ``jti`` name it (a NUL cannot be in either)."""
    return uuid5(_ID_TOKEN_NAMESPACE, f"{issuer}\x00{token_id}")


# Validation -------------------------------------------------------------------------------------------------


def check_policy_name(name: str | None) -> str:
    if name is None or not name.strip():
        raise ValidationError.single("name", "can't be blank")
    if len(name) > NAME_MAX_LENGTH:
        raise ValidationError.single("name", f"is too long (maximum is {NAME_MAX_LENGTH} characters)")
    return check_text(name, "name")


def check_issuer(issuer: str | None, *, allow_insecure: bool = False) -> str:
    """An absolute ``https`` URL (``http`` too with ``allow_insecure``) without credentials, query or fragment:
    the ID token's ``iss`` must equal it character for character."""
    field = "issuer"
    if not issuer:
        raise ValidationError.single(field, "can't be blank")
    if len(issuer) > URL_MAX_LENGTH:
        raise ValidationError.single(field, f"is too long (maximum is {URL_MAX_LENGTH} characters)")
    if not _VISIBLE_ASCII.match(issuer):
        raise ValidationError.single(field, "is invalid: only visible ASCII characters are allowed")
    try:
        parts = urlsplit(issuer)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationError.single(field, "is invalid: not a URL") from None
    schemes = ("https", "http") if allow_insecure else ("https",)
    if parts.scheme not in schemes:
        raise ValidationError.single(field, f"is invalid: the scheme must be {' or '.join(schemes)}")
    if not parts.hostname or "@" in parts.netloc:
        raise ValidationError.single(field, "is invalid: a host and no credentials are required")
    if parts.query or parts.fragment or "?" in issuer or "#" in issuer:
        raise ValidationError.single(field, "is invalid: no query string or fragment")
    return issuer


def check_audience(audience: str | None) -> str:
    if not audience:
        raise ValidationError.single("audience", "can't be blank")
    if len(audience) > URL_MAX_LENGTH:
        raise ValidationError.single("audience", f"is too long (maximum is {URL_MAX_LENGTH} characters)")
    if not _VISIBLE_ASCII.match(audience):
        raise ValidationError.single("audience", "is invalid: only visible ASCII characters are allowed")
    return audience


def check_ttl(ttl_seconds: int | None) -> int:
    if ttl_seconds is None:
        return int(DEFAULT_TTL.total_seconds())
    low, high = int(MIN_TTL.total_seconds()), int(MAX_TTL.total_seconds())
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not low <= ttl_seconds <= high:
        raise ValidationError.single("ttl_seconds", f"must be a whole number from {low} to {high}")
    return ttl_seconds


@dataclass(frozen=True)
class ClaimCondition:
    """``claim`` must be present in the ID token and equal ``value`` (``exact``), or match it as a pattern
    (``glob``: ``*`` stands for any characters but ``/``, ``**`` for any characters)."""

    claim: str
    value: str
    match: MatchKind = "exact"

    def as_event_data(self) -> dict[str, str]:
        return {"claim": self.claim, "value": self.value, "match": self.match}

    @classmethod
    def from_event_data(cls, data: Mapping[str, Any]) -> ClaimCondition:
        return cls(str(data["claim"]), str(data["value"]), data.get("match", "exact"))

    def accepts(self, claims: Mapping[str, Any]) -> bool:
        presented = claim_text(claims.get(self.claim))
        if presented is None:
            return False
        if self.match == "exact":
            return presented == self.value
        return _glob(self.value).fullmatch(presented) is not None


def claim_text(value: Any) -> str | None:
    """A claim as a condition compares it: strings as they are, booleans as ``true``/``false`` (GitHub sends
    some as JSON booleans, GitLab as strings), integers in decimal; anything else matches nothing."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return None


def _glob(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\*\*|\*)", pattern)
    translated = "".join(
        ".*" if part == "**" else "[^/]*" if part == "*" else re.escape(part) for part in parts
    )
    return re.compile(translated, re.DOTALL)


def check_conditions(conditions: Iterable[ClaimCondition]) -> tuple[ClaimCondition, ...]:
    """At most ``MAX_CONDITIONS``, one per claim, printable values, and one exact identifying claim."""
    field = "claims"
    checked = tuple(conditions)
    errors: list[str] = []
    if len(checked) > MAX_CONDITIONS:
        errors.append(f"is too long (maximum is {MAX_CONDITIONS} conditions)")
    seen: set[str] = set()
    for condition in checked:
        if not _CLAIM_NAME.match(condition.claim):
            errors.append(f"has an invalid claim name: {condition.claim[:64]!r}")
        elif condition.claim in RESERVED_CLAIMS:
            errors.append(f"cannot constrain {condition.claim}: the verifier checks it")
        elif condition.claim in seen:
            errors.append(f"names {condition.claim} more than once")
        seen.add(condition.claim)
        if condition.match not in MATCH_KINDS:
            errors.append(f"has an unknown match for {condition.claim[:64]}: use exact or glob")
        if not condition.value:
            errors.append(f"needs a value for {condition.claim[:64]}")
        elif len(condition.value) > VALUE_MAX_LENGTH:
            errors.append(f"has a value too long for {condition.claim[:64]} (maximum is {VALUE_MAX_LENGTH})")
        else:
            try:
                check_text(condition.value, field)
            except ValidationError:
                errors.append(f"has control characters in the value for {condition.claim[:64]}")
    if not any(c.claim in IDENTIFYING_CLAIMS and c.match == "exact" for c in checked):
        errors.append(
            "must match one of " + ", ".join(IDENTIFYING_CLAIMS) + " exactly (which project or repository)"
        )
    if errors:
        raise ValidationError({field: errors})
    return tuple(sorted(checked, key=lambda condition: condition.claim))


@dataclass(frozen=True)
class PolicyTerms:
    """What a policy says, apart from whose it is: validated together, all errors at once."""

    name: str
    issuer: str
    audience: str
    conditions: tuple[ClaimCondition, ...]
    scopes: tuple[str, ...]
    ttl_seconds: int

    @classmethod
    def checked(
        cls,
        *,
        name: str | None,
        issuer: str | None,
        audience: str | None,
        conditions: Iterable[ClaimCondition],
        scopes: Iterable[str],
        ttl_seconds: int | None,
        allowed_issuers: Iterable[str],
        allow_insecure: bool = False,
    ) -> PolicyTerms:
        """``allowed_issuers`` is the instance's list: a policy on an issuer not on it could never match."""
        errors = ErrorCollector()
        checked_name = errors.check(check_policy_name, name)
        checked_issuer = errors.check(
            lambda value: check_issuer(value, allow_insecure=allow_insecure), issuer
        )
        if checked_issuer is not None and checked_issuer not in set(allowed_issuers):
            errors.add(
                "issuer", "is not an issuer this instance trusts (an administrator adds it in the settings)"
            )
        checked_audience = errors.check(check_audience, audience)
        checked_conditions = errors.check(check_conditions, conditions)
        checked_scopes = errors.check(canonical_scopes, scopes)
        checked_ttl = errors.check(check_ttl, ttl_seconds)
        errors.raise_if_any()
        assert checked_name is not None and checked_issuer is not None and checked_audience is not None
        assert checked_conditions is not None and checked_scopes is not None and checked_ttl is not None
        return cls(
            checked_name, checked_issuer, checked_audience, checked_conditions, checked_scopes, checked_ttl
        )

    def as_event_data(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "issuer": self.issuer,
            "audience": self.audience,
            "conditions": [condition.as_event_data() for condition in self.conditions],
            "scopes": list(self.scopes),
            "ttl_seconds": self.ttl_seconds,
        }


# The aggregates ------------------------------------------------------------------------------------------


class TrustPolicy(Aggregate):
    TOPIC = "deploy_tokens:TrustPolicy"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:TrustPolicy.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:TrustPolicy.Created"
        policy_id: int
        holder_kind: str
        holder_id: int
        name: str
        issuer: str
        audience: str
        conditions: list[dict[str, str]]
        scopes: list[str]
        ttl_seconds: int
        actor: dict[str, Any]

    class Changed(Aggregate.Event):
        """The policy's terms after the change, whole (an auditor reads each version without replaying)."""

        TOPIC = "deploy_tokens:TrustPolicy.Changed"
        name: str
        issuer: str
        audience: str
        conditions: list[dict[str, str]]
        scopes: list[str]
        ttl_seconds: int
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, TrustPolicy)
            aggregate._take_terms(self.name, self.issuer, self.audience, self.conditions, self.scopes)
            aggregate.ttl_seconds = self.ttl_seconds

    class Deleted(Aggregate.Event):
        TOPIC = "deploy_tokens:TrustPolicy.Deleted"
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, TrustPolicy)
            aggregate.deleted_at = self.timestamp

    def __init__(
        self,
        policy_id: int,
        holder_kind: str,
        holder_id: int,
        name: str,
        issuer: str,
        audience: str,
        conditions: list[dict[str, str]],
        scopes: list[str],
        ttl_seconds: int,
        actor: dict[str, Any],
    ) -> None:
        self.policy_id = policy_id
        self.holder_kind: HolderKind = "project" if holder_kind == "project" else "group"
        self.holder_id = holder_id
        self.ttl_seconds = ttl_seconds
        self.creator = actor
        self.deleted_at: datetime | None = None
        self._take_terms(name, issuer, audience, conditions, scopes)

    def _take_terms(
        self, name: str, issuer: str, audience: str, conditions: list[dict[str, str]], scopes: list[str]
    ) -> None:
        self.name = name
        self.issuer = issuer
        self.audience = audience
        self.conditions = tuple(ClaimCondition.from_event_data(data) for data in conditions)
        self.scopes = tuple(scopes)

    @classmethod
    def create(
        cls,
        *,
        policy_id: int,
        holder_kind: HolderKind,
        holder_id: int,
        terms: PolicyTerms,
        actor: Actor,
        now: datetime,
    ) -> TrustPolicy:
        return cls._create(
            cls.Created,
            id=trust_policy_uuid(policy_id),
            timestamp=now,
            policy_id=policy_id,
            holder_kind=holder_kind,
            holder_id=holder_id,
            actor=actor.as_event_data(),
            **terms.as_event_data(),
        )

    @property
    def terms(self) -> PolicyTerms:
        return PolicyTerms(
            self.name, self.issuer, self.audience, self.conditions, self.scopes, self.ttl_seconds
        )

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)

    def _ensure_exists(self) -> None:
        if self.deleted:
            raise NotFound("404 Trust policy")

    def change(self, terms: PolicyTerms, *, actor: Actor, now: datetime) -> bool:
        """Records the new terms; nothing when they are the terms already in force."""
        self._ensure_exists()
        if terms == self.terms:
            return False
        self.trigger_event(self.Changed, timestamp=now, actor=actor.as_event_data(), **terms.as_event_data())
        return True

    def delete(self, *, actor: Actor, now: datetime) -> None:
        self._ensure_exists()
        self.trigger_event(self.Deleted, timestamp=now, actor=actor.as_event_data())

    def unmet_conditions(self, claims: Mapping[str, Any]) -> list[str]:
        """The claims (by name) whose condition the ID token does not meet; empty when it meets them all."""
        return [condition.claim for condition in self.conditions if not condition.accepts(claims)]

    def accepts_audience(self, audiences: Iterable[str]) -> bool:
        return self.audience in set(audiences)


class IdTokenUse(Aggregate):
    """An ID token that was exchanged (behaviour [federation]): saved with the token it gave, never twice."""

    TOPIC = "deploy_tokens:IdTokenUse"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:IdTokenUse.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:IdTokenUse.Created"
        issuer: str
        jti: str
        token_id: int
        policy_id: int
        id_token_expires_at: datetime

    def __init__(
        self, issuer: str, jti: str, token_id: int, policy_id: int, id_token_expires_at: datetime
    ) -> None:
        self.issuer = issuer
        self.jti = jti
        self.token_id = token_id
        self.policy_id = policy_id
        self.id_token_expires_at = id_token_expires_at

    @classmethod
    def record(
        cls,
        *,
        issuer: str,
        jti: str,
        token_id: int,
        policy_id: int,
        id_token_expires_at: datetime,
        now: datetime,
    ) -> IdTokenUse:
        return cls._create(
            cls.Created,
            id=id_token_use_uuid(issuer, jti),
            timestamp=now,
            issuer=issuer,
            jti=jti,
            token_id=token_id,
            policy_id=policy_id,
            id_token_expires_at=id_token_expires_at,
        )
