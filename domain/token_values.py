"""Secret token values: generation and the public checksum.

A value is ``<prefix><body><checksum>``: the body is 24 URL-safe characters from ``secrets`` (144 bits) and
the checksum is CRC32 of prefix+body written as 6 URL-safe base64 characters (GitHub's format does the same
with base62; base64 keeps the check in C and the whole value in one URL-safe alphabet). The
checksum is not a secret; it tells a mistyped value from an unknown one (the auth path checks it when a
lookup found nothing: a value whose digest matched is one we issued) and makes a leaked ``gldt-`` value
recognisable to secret scanners with no database at hand (behaviour [value]).
"""

from __future__ import annotations

import base64
import re
import secrets
import zlib
from typing import Final

DEPLOY_TOKEN_PREFIX: Final = "gldt-"
PERSONAL_ACCESS_TOKEN_PREFIX: Final = "glpat-"

_BODY_BYTES: Final = 18  # 24 URL-safe characters
_BODY_LENGTH: Final = 24
_CHECKSUM_LENGTH: Final = 6
_SHAPE: Final = re.compile(rf"[A-Za-z0-9_-]{{{_BODY_LENGTH + _CHECKSUM_LENGTH}}}")


def _checksum(text: str) -> str:
    crc = zlib.crc32(text.encode("ascii")).to_bytes(4, "big")
    return base64.urlsafe_b64encode(crc)[:_CHECKSUM_LENGTH].decode("ascii")


def generate_token(prefix: str = DEPLOY_TOKEN_PREFIX) -> str:
    body = secrets.token_urlsafe(_BODY_BYTES)
    return f"{prefix}{body}{_checksum(prefix + body)}"


def has_token_length(value: str, prefix: str = DEPLOY_TOKEN_PREFIX) -> bool:
    """The prefix and the length of a value we issue: all the auth path checks before a lookup.

    The alphabet and the checksum (``is_well_formed``) are checked only when the lookup found nothing: a value
    whose digest matched is one we issued, and this bound is what keeps anything else from being hashed.
    """
    # isascii() is O(1) in CPython and keeps text that could not even be encoded away from the digest.
    return (
        len(value) == len(prefix) + _BODY_LENGTH + _CHECKSUM_LENGTH
        and value.isascii()
        and value.startswith(prefix)
    )


def is_well_formed(value: str, prefix: str = DEPLOY_TOKEN_PREFIX) -> bool:
    """True when the value has the prefix, the shape and a matching checksum. Costs about a microsecond."""
    if not value.startswith(prefix) or not _SHAPE.fullmatch(value, len(prefix)):
        return False
    return secrets.compare_digest(_checksum(value[:-_CHECKSUM_LENGTH]), value[-_CHECKSUM_LENGTH:])
