"""Stream ids of the directory's aggregates: integer ids and unique paths become stable UUIDs.

Integer ids are claimed by saving the first event of the stream ``uuid5(kind, n)``; unique names (usernames,
namespace paths) by saving a ``PathClaim`` stream in the same transaction as their owner.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID, uuid5

_ID_NAMESPACE: Final = UUID("0b7e58a2-44c8-4a5e-8d0f-6a3c9e1d2f47")


def stream_id(kind: str, number: int) -> UUID:
    """Stream id of directory object ``kind`` number ``number`` (kinds: user, namespace, project, pat)."""
    return uuid5(_ID_NAMESPACE, f"{kind}:{number}")


def path_claim_id(full_path: str) -> UUID:
    """Paths are unique case-insensitively, as in GitLab (``Acme`` and ``acme`` are the same namespace)."""
    return uuid5(_ID_NAMESPACE, f"path:{full_path.lower()}")


def email_claim_id(email: str) -> UUID:
    """Email addresses are unique case-insensitively, as in GitLab."""
    return uuid5(_ID_NAMESPACE, f"email:{email.lower()}")


SETTINGS_ID: Final = uuid5(_ID_NAMESPACE, "instance-settings")
