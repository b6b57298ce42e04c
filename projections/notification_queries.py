"""Queries over the expiry-notification projection: the due tokens, a page at a time, and one token's row."""

from __future__ import annotations

from datetime import datetime

from domain.clock import as_utc
from infrastructure.db import Database
from projections.notifications import DUE_TOKEN_COLUMNS, TABLE, DueToken, due_token_from_row


def due_tokens(db: Database, now: datetime, *, limit: int = 500, after_token_id: int = 0) -> list[DueToken]:
    """Tokens with ``next_due_at <= now``, in ``token_id`` order, at most ``limit``, after ``after_token_id``.

    Page with ``after_token_id = page[-1].token_id`` and the SAME ``now`` until a page comes back empty.
    The key is ``token_id`` because it never changes: the scan's own writes move ``next_due_at`` (a
    notified token jumps to its next window, an expired one to NULL), so a cursor on ``next_due_at`` would
    point at a value that no longer exists, and a token created mid-pass with a window already open would
    sort behind it and be skipped. With an immutable key, every token that stays due during the pass is
    returned exactly once, and no token twice, however rows change underneath; new tokens (higher ids) are
    still reached. Each page is one range read of the partial index on ``next_due_at`` (the due rows only)
    plus a top-``limit`` sort; handled tokens leave the range, so later pages read less.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    # ``+token_id`` (same order) stops SQLite from walking the primary key in token order to skip the sort:
    # it would then read every row, due or not. Both backends then range-scan the next-due index.
    with db.read() as cursor:
        rows = cursor.execute(
            f"SELECT {DUE_TOKEN_COLUMNS} FROM {TABLE} "
            "WHERE next_due_at IS NOT NULL AND next_due_at <= ? AND token_id > ? ORDER BY +token_id LIMIT ?",
            (as_utc(now), after_token_id, limit),
        ).fetchall()
    return [due_token_from_row(row) for row in rows]


def notification_state(db: Database, token_id: int) -> DueToken | None:
    """The token's row whether due or not (revoked, deleted and finished included); None without expiry."""
    with db.read() as cursor:
        row = cursor.execute(
            f"SELECT {DUE_TOKEN_COLUMNS} FROM {TABLE} WHERE token_id = ?", (token_id,)
        ).fetchone()
    return None if row is None else due_token_from_row(row)
