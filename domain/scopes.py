"""The seven deploy-token scopes, in GitLab's canonical order (behaviour [scopes])."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from domain.errors import ValidationError

READ_REPOSITORY: Final = "read_repository"
READ_REGISTRY: Final = "read_registry"
WRITE_REGISTRY: Final = "write_registry"
READ_PACKAGE_REGISTRY: Final = "read_package_registry"
WRITE_PACKAGE_REGISTRY: Final = "write_package_registry"
READ_VIRTUAL_REGISTRY: Final = "read_virtual_registry"
WRITE_VIRTUAL_REGISTRY: Final = "write_virtual_registry"

SCOPES: Final[tuple[str, ...]] = (
    READ_REPOSITORY,
    READ_REGISTRY,
    WRITE_REGISTRY,
    READ_PACKAGE_REGISTRY,
    WRITE_PACKAGE_REGISTRY,
    READ_VIRTUAL_REGISTRY,
    WRITE_VIRTUAL_REGISTRY,
)

DESCRIPTIONS: Final[dict[str, str]] = {
    READ_REPOSITORY: "Allows read-only access to the repository (git clone; there is no push).",
    READ_REGISTRY: "Allows read-only access to registry images (pull).",
    WRITE_REGISTRY: "Allows write access to registry images (push needs read_registry too).",
    READ_PACKAGE_REGISTRY: "Allows read-only access to the package registry.",
    WRITE_PACKAGE_REGISTRY: "Allows write access to the package registry.",
    READ_VIRTUAL_REGISTRY: "Allows read-only access to images through the dependency proxy, while it is enabled.",
    WRITE_VIRTUAL_REGISTRY: "Allows read, write and delete through the dependency proxy, while it is enabled.",
}


def canonical_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validate and order scopes canonically; duplicates collapse. At least one is required."""
    given = [scope.strip() for scope in scopes]
    unknown = sorted({scope for scope in given if scope not in SCOPES})
    if unknown:
        raise ValidationError.single("scopes", f"does not have a valid value: {', '.join(unknown)}")
    if not given:
        raise ValidationError.single("scopes", "can't be blank")
    chosen = set(given)
    return tuple(scope for scope in SCOPES if scope in chosen)
