"""Secret token values: generation and the public checksum.

A value is ``<prefix><body><checksum>``: the body is 24 URL-safe characters from ``secrets`` (144 bits) and
the checksum is CRC32 of prefix+body written as 6 base62 characters, as GitHub's token format does. The
checksum is not a secret; it lets the auth path and secret scanners reject mistyped or forged values before
any lookup, and makes a leaked ``gldt-`` value recognisable with no database at hand (R20).
"""

from __future__ import annotations

import re
import secrets
import zlib
from typing import Final

DEPLOY_TOKEN_PREFIX: Final = "gldt-"
PERSONAL_ACCESS_TOKEN_PREFIX: Final = "glpat-"

_BODY_BYTES: Final = 18  # 24 URL-safe characters
_BODY_LENGTH: Final = 24
_CHECKSUM_LENGTH: Final = 6
_BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHAPE: Final = re.compile(rf"[A-Za-z0-9_-]{{{_BODY_LENGTH}}}[0-9A-Za-z]{{{_CHECKSUM_LENGTH}}}")


def _checksum(text: str) -> str:
    number = zlib.crc32(text.encode("ascii"))
    digits = []
    for _ in range(_CHECKSUM_LENGTH):
        number, remainder = divmod(number, 62)
        digits.append(_BASE62[remainder])
    return "".join(reversed(digits))


def generate_token(prefix: str = DEPLOY_TOKEN_PREFIX) -> str:
    body = secrets.token_urlsafe(_BODY_BYTES)
    return f"{prefix}{body}{_checksum(prefix + body)}"


def is_well_formed(value: str, prefix: str = DEPLOY_TOKEN_PREFIX) -> bool:
    """True when the value has the prefix, the shape and a matching checksum. Costs about a microsecond."""
    if not value.startswith(prefix):
        return False
    rest = value[len(prefix) :]
    if not _SHAPE.fullmatch(rest):
        return False
    body, checksum = rest[:_BODY_LENGTH], rest[_BODY_LENGTH:]
    return secrets.compare_digest(_checksum(prefix + body), checksum)
