"""Errors the domain raises; the API maps each class to one GitLab status code."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class DomainError(Exception):
    """Base class of every rule the domain enforces."""


class ValidationError(DomainError):
    """Input broke a field rule. ``errors`` maps a field name to its messages (GitLab's 400 shape)."""

    def __init__(self, errors: Mapping[str, Sequence[str]]) -> None:
        self.errors: dict[str, list[str]] = {field: list(messages) for field, messages in errors.items()}
        super().__init__(self.sentence())

    @classmethod
    def single(cls, field: str, message: str) -> ValidationError:
        return cls({field: [message]})

    def sentence(self) -> str:
        """GitLab joins model errors into one sentence, e.g. ``Name is too long (maximum is 255 characters)``."""
        parts: list[str] = []
        for field, messages in self.errors.items():
            label = field.replace("_", " ").capitalize() if field != "base" else ""
            parts.extend(f"{label} {message}".strip() for message in messages)
        return ", ".join(parts)


class Refused(DomainError):
    """A request GitLab refuses with a 400 and one sentence, e.g. ``Transfer failed: Group is already a root
    group.`` (rather than field messages)."""


class NotFound(DomainError):
    """The thing does not exist, or the actor may not know that it exists."""

    def __init__(self, what: str) -> None:
        self.what = what
        super().__init__(f"{what} Not Found")


class PermissionDenied(DomainError):
    """The actor is known and the thing is visible, but the action is not allowed."""

    def __init__(self, reason: str = "Forbidden") -> None:
        self.reason = reason
        super().__init__(reason)


class Unauthenticated(DomainError):
    """No valid credential was presented."""


class Conflict(DomainError):
    """The command lost a race or names something already taken."""


class TokenDeleted(DomainError):
    """A command was sent to a deleted token: nothing may happen to it any more."""

    def __init__(self, token_id: int) -> None:
        self.token_id = token_id
        super().__init__(f"Deploy token {token_id} was deleted")


class ErrorCollector:
    """Runs several field checks and reports every failure at once, as GitLab's model validation does."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def check(self, validate: Callable[[Any], T], value: Any) -> T | None:
        try:
            return validate(value)
        except ValidationError as error:
            for field, messages in error.errors.items():
                self.errors.setdefault(field, []).extend(messages)
            return None

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def raise_if_any(self) -> None:
        if self.errors:
            raise ValidationError(self.errors)
