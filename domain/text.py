"""Free text that may enter an event: printable characters only.

Events are forever, so what cannot be stored and projected everywhere must never get in: a NUL cannot be
stored in a PostgreSQL text column, a lone surrogate cannot be encoded as UTF-8, and control characters
have no place in names. Such an event would stop every projection at its position.
"""

from __future__ import annotations

from domain.errors import ValidationError


def check_text(value: str, field: str) -> str:
    for character in value:
        code = ord(character)
        if code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF:
            raise ValidationError.single(
                field, "contains characters that are not allowed (control characters)"
            )
    return value
