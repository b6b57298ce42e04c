"""Who did something, and from where: carried by every lifecycle event for auditors (behaviour [history])."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ActorKind = Literal["user", "system"]


@dataclass(frozen=True)
class Actor:
    kind: ActorKind
    username: str
    user_id: int | None = None
    is_admin: bool = False
    address: str | None = None

    @classmethod
    def user(
        cls, user_id: int, username: str, *, is_admin: bool = False, address: str | None = None
    ) -> Actor:
        return cls("user", username, user_id, is_admin, address)

    @classmethod
    def system(cls, process: str) -> Actor:
        """An automatic process (the expiry scan, a bootstrap) acting on the service's own authority."""
        return cls("system", process, None, True, None)

    def with_address(self, address: str | None) -> Actor:
        return Actor(self.kind, self.username, self.user_id, self.is_admin, address)

    def as_event_data(self) -> dict[str, Any]:
        """The JSON-friendly form stored in events (events keep plain data so replay never needs this class)."""
        return {"kind": self.kind, "id": self.user_id, "username": self.username, "address": self.address}

    @classmethod
    def from_event_data(cls, data: dict[str, Any]) -> Actor:
        return cls(
            data["kind"], data["username"], data.get("id"), data["kind"] == "system", data.get("address")
        )
