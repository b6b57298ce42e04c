r"""Activity text as every database stores it and an auditor reads it unambiguously.

Every text column is scrubbed of anything shaped like a token, then escaped: a backslash becomes ``\\``, and
every character Python does not count as printable (C0 and C1 controls, DEL, NUL, lone surrogates, format
characters such as bidi overrides and zero-width spaces, separators other than the ASCII space, private-use
and unassigned code points) becomes ``\xNN``, ``\uNNNN`` or ``\UNNNNNNNN``, the way Python spells it in a
string literal. Because the backslash itself is escaped, the mapping is one-to-one: an escaped NUL can never
be mistaken for a client that sent the four characters ``\x00``, and no invisible character can make one
resource look like another. The result is cut to ``ACTIVITY_TEXT_LIMIT`` characters, never in the middle of
an escape.

A row the database refuses even so is set aside as ASCII JSON (``rejected_json``): a representation no
database rejects, with the same redaction.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Final

from infrastructure.activity.table import ActivityEvent

__all__ = ["ACTIVITY_TEXT_LIMIT", "rejected_json", "storable_text"]

ACTIVITY_TEXT_LIMIT: Final = 512  # free-text columns (resource, client address, user agent) are cut to this
# Anything shaped like a deploy token or personal access token, e.g. pasted into a user agent or a URL.
_SECRET_SHAPE: Final = re.compile(r"(gldt-|glpat-)[A-Za-z0-9_-]+")


def _redacted(text: str) -> str:
    if "gl" in text:  # the regular expression only when a token prefix could be there
        return _SECRET_SHAPE.sub(r"\1[REDACTED]", text)
    return text


def storable_text(value: object) -> str | None:
    """``value`` as text every database stores and an auditor reads unambiguously (see the module docstring).

    Token-shaped text is redacted, a backslash doubled, every non-printable character escaped as in a Python
    literal, and the result cut to ``ACTIVITY_TEXT_LIMIT`` characters without splitting an escape.
    """
    if value is None:
        return None
    text = _redacted(
        value if type(value) is str else str(value)
    )  # plain str: the request thread queues StrEnums
    # Nearly every value is printable without a backslash (two C-speed scans): nothing to escape.
    if text.isprintable() and "\\" not in text:
        return text[:ACTIVITY_TEXT_LIMIT]
    return _escaped(text)


def _escaped(text: str) -> str:
    pieces: list[str] = []
    room = ACTIVITY_TEXT_LIMIT
    for char in text:  # at most ACTIVITY_TEXT_LIMIT rounds: each piece takes at least one character of room
        if char == "\\":
            piece = "\\\\"
        elif char.isprintable():
            piece = char
        else:
            code = ord(char)
            if code < 0x100:
                piece = f"\\x{code:02x}"
            elif code < 0x10000:
                piece = f"\\u{code:04x}"
            else:
                piece = f"\\U{code:08x}"
        room -= len(piece)
        if room < 0:
            break  # never half an escape: "\x0" would leave the reader guessing what was there
        pieces.append(piece)
    return "".join(pieces)


def _json_value(value: object) -> object:
    """A JSON-encodable stand-in for one queued field that cannot fail to encode."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        # Past sys.get_int_max_str_digits() (4,300 digits, some 14,000 bits) json.dumps raises.
        return int(value) if value.bit_length() < 10_000 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return _redacted(str(value))[:ACTIVITY_TEXT_LIMIT]
    return f"<{type(value).__name__}>"  # the class only: a repr could hold anything, a token value included


def rejected_json(event: object) -> str:
    """ASCII JSON: ``ensure_ascii`` escapes every character outside printable ASCII, lone surrogates too."""
    if isinstance(event, tuple) and len(event) == len(ActivityEvent._fields):
        fields: dict[str, object] = dict(zip(ActivityEvent._fields, event, strict=True))
    else:
        fields = {"event": event}
    return json.dumps({name: _json_value(value) for name, value in fields.items()}, allow_nan=False)
