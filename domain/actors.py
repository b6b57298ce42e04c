"""Who did something, and from where: carried by every lifecycle event for auditors (behaviour [history])."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

ActorKind = Literal["user", "system", "federated"]


@dataclass(frozen=True)
class FederatedIdentity:
    """Who a federated actor is (behaviour [federation]): the CI job an issuer vouched for, the policy that
    trusted it and the claims that policy matched. Never the ID token itself."""

    issuer: str
    subject: str
    policy_id: int
    id_token_jti: str
    claims: tuple[tuple[str, str], ...]  # the matched claims, by name

    def as_event_data(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "subject": self.subject,
            "policy_id": self.policy_id,
            "jti": self.id_token_jti,
            "claims": dict(self.claims),
        }

    @classmethod
    def from_event_data(cls, data: Mapping[str, Any]) -> FederatedIdentity:
        claims = data.get("claims") or {}
        return cls(
            str(data["issuer"]),
            str(data["subject"]),
            int(data["policy_id"]),
            str(data.get("jti", "")),
            tuple(sorted((str(key), str(value)) for key, value in claims.items())),
        )


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    username: str
    user_id: int | None = None
    is_admin: bool = False
    address: str | None = None
    federation: FederatedIdentity | None = None

    @classmethod
    def user(
        cls, user_id: int, username: str, *, is_admin: bool = False, address: str | None = None
    ) -> Actor:
        return cls("user", username, user_id, is_admin, address)

    @classmethod
    def system(cls, process: str) -> Actor:
        """An automatic process (the expiry scan, a bootstrap) acting on the service's own authority."""
        return cls("system", process, None, True, None)

    @classmethod
    def federated(cls, identity: FederatedIdentity, *, address: str | None = None) -> Actor:
        """A CI job acting through a trust policy: its username is the ID token's subject."""
        return cls("federated", identity.subject, None, False, address, identity)

    def with_address(self, address: str | None) -> Actor:
        return Actor(self.kind, self.username, self.user_id, self.is_admin, address, self.federation)

    def as_event_data(self) -> dict[str, Any]:
        """The JSON-friendly form stored in events (events keep plain data so replay never needs this class)."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "id": self.user_id,
            "username": self.username,
            "address": self.address,
        }
        if self.federation is not None:
            data["federation"] = self.federation.as_event_data()
        return data

    @classmethod
    def from_event_data(cls, data: dict[str, Any]) -> Actor:
        federation = data.get("federation")
        return cls(
            data["kind"],
            data["username"],
            data.get("id"),
            data["kind"] == "system",
            data.get("address"),
            None if federation is None else FederatedIdentity.from_event_data(federation),
        )
