"""The credential lookup's token rows (``cred_tokens``), written once per batch: see ``CredentialBatch``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from domain.deploy_token import DeployToken, default_username
from infrastructure.db import Cursor
from projections.projection import HandlerEntry, StreamEventT, on

# The columns of ``cred_tokens``, in the order its new rows are written (and the benchmarks seed them).
TOKEN_TABLE_COLUMNS: Final = (
    "token_id",
    "stream_id",
    "name",
    "username",
    "holder_kind",
    "holder_id",
    "scopes",
    "expires_at",
    "revoked_at",
    "deleted_at",
    "digest",
    "previous_digest",
    "previous_valid_until",
    "created_at",
    "creator_id",
    "position",
)


class _CurrentDigest:
    """In a token's changes: ``previous_digest`` takes the digest the row holds before the change."""


CURRENT_DIGEST: Final = _CurrentDigest()
# The columns a token event sets on its token's row (besides ``position``), by column.
TokenChanges = dict[str, Any]


class CredentialBatch:
    """What the credential lookup's handlers write to, for one batch.

    A token created in the batch is a row in memory until the batch ends, its later events in the batch
    changing it there, and the new rows are then written in one bulk insert (COPY on PostgreSQL): a rebuild
    writes each token once instead of an INSERT and an UPDATE per later event, and a command creating a token
    (``Created`` and ``Scoped``) writes one row. Events of tokens stored before the batch are UPDATEs of their
    rows as they come. The two touch different rows, so their order does not matter; every other table is
    written through the cursor as events come.
    """

    def __init__(self, cursor: Cursor) -> None:
        self.cursor = cursor
        self._new_tokens: dict[str, dict[str, Any]] = {}

    def create_token(self, stream: str, row: dict[str, Any]) -> None:
        self._new_tokens[stream] = row

    def change_token(self, stream: str, changes: TokenChanges, position: int) -> None:
        row = self._new_tokens.get(stream)
        if row is not None:
            if changes.get("previous_digest") is CURRENT_DIGEST:
                changes = {**changes, "previous_digest": row["digest"]}
            row.update(changes, position=position)
            return
        assignments = ", ".join(
            f"{column} = digest" if value is CURRENT_DIGEST else f"{column} = ?"
            for column, value in changes.items()
        )
        values = [value for value in changes.values() if value is not CURRENT_DIGEST]
        self.cursor.execute(
            f"UPDATE cred_tokens SET {assignments}, position = ? WHERE stream_id = ?",
            (*values, position, stream),
        )

    def write(self) -> None:
        self.cursor.insert_many(
            "cred_tokens",
            TOKEN_TABLE_COLUMNS,
            [[row[column] for column in TOKEN_TABLE_COLUMNS] for row in self._new_tokens.values()],
        )
        self._new_tokens = {}


def _token_created(batch: CredentialBatch, event: DeployToken.Created, position: int) -> None:
    stream = str(event.originator_id)
    batch.create_token(
        stream,
        {
            "token_id": event.token_id,
            "stream_id": stream,
            "name": event.name,
            "username": event.username or default_username(event.token_id),
            "holder_kind": event.holder_kind,
            "holder_id": event.holder_id,
            "scopes": "",
            "expires_at": event.expires_at,
            "revoked_at": None,
            "deleted_at": None,
            "digest": event.digest,
            "previous_digest": None,
            "previous_valid_until": None,
            "created_at": event.timestamp,
            "creator_id": event.actor.get("id"),
            "position": position,
        },
    )


def _token_change(
    event_class: type[StreamEventT], changes: Callable[[StreamEventT], TokenChanges]
) -> HandlerEntry[CredentialBatch]:
    """The handler of ``event_class``, which sets ``changes(event)`` on its token's row."""

    def handler(batch: CredentialBatch, event: StreamEventT, position: int) -> None:
        batch.change_token(str(event.originator_id), changes(event), position)

    return on(event_class, handler)


def _rotated(event: DeployToken.Rotated) -> TokenChanges:
    # Without a grace period the old digest stops working at once, so it is not kept.
    return {
        "previous_digest": CURRENT_DIGEST if event.previous_valid_until is not None else None,
        "previous_valid_until": event.previous_valid_until,
        "digest": event.digest,
    }


# The handlers of the token events, for the credential lookup's handler table.
TOKEN_HANDLERS: Final = (
    on(DeployToken.Created, _token_created),
    _token_change(DeployToken.Scoped, lambda e: {"scopes": ",".join(e.scopes)}),
    _token_change(
        DeployToken.Revoked,
        lambda e: {"revoked_at": e.timestamp, "previous_digest": None, "previous_valid_until": None},
    ),
    _token_change(DeployToken.Rotated, _rotated),
    _token_change(DeployToken.Deleted, lambda e: {"deleted_at": e.timestamp}),
)
