"""Free text that may enter an event: printable characters only.

Events are forever, so what cannot be stored and projected everywhere must never get in: a NUL cannot be
stored in a PostgreSQL text column, a lone surrogate cannot be encoded as UTF-8, and control characters
have no place in names. Such an event would stop every projection at its position.
"""

from __future__ import annotations

import re
from typing import Final

from domain.errors import ValidationError

_UNSTORABLE: Final = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def has_unstorable_characters(value: str) -> bool:
    """NUL and other control characters, or a lone surrogate."""
    return _UNSTORABLE.search(value) is not None


def check_text(value: str, field: str) -> str:
    if has_unstorable_characters(value):
        raise ValidationError.single(field, "contains characters that are not allowed (control characters)")
    return value
