"""Tamper evidence: a hash chain over the stored event log, with periodic signed checkpoints.

Each event's hash covers its stored form (position, stream id, version, topic and the exact stored bytes),
and each chain link covers the event hash and the previous link: ``link[n] = SHA-256(link[n-1] || hash[n])``.
Changing one byte of a stored event, deleting an event or swapping two changes every link from that
position on, so ``deploy-tokens audit verify`` recomputes the chain from the log and names the first
position that no longer matches. Every ``CHECKPOINT_EVERY`` events (and on demand) the head of the chain
is recorded with an HMAC from the server secret, so the chain table itself cannot be rewritten to match
a forged log without the key; an exported head lets an auditor verify a copy offline.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from eventsourcing.persistence import Notification

from infrastructure.db import Cursor
from projections.base import Decode, Projection

GENESIS: Final = "0" * 64
CHECKPOINT_EVERY: Final = 1000


def event_hash(notification: Notification) -> str:
    """SHA-256 over the canonical stored form of one event (framed, so fields cannot run together)."""
    digest = hashlib.sha256()
    for part in (
        str(notification.id).encode(),
        str(notification.originator_id).encode(),
        str(notification.originator_version).encode(),
        notification.topic.encode(),
        bytes(notification.state),
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def link(previous: str, this_event: str) -> str:
    return hashlib.sha256(bytes.fromhex(previous) + bytes.fromhex(this_event)).hexdigest()


def sign_checkpoint(key: bytes, position: int, chain_hash: str) -> str:
    return hmac.new(key, f"{position}:{chain_hash}".encode(), hashlib.sha256).hexdigest()


class EventChain(Projection):
    name = "event_chain"
    tables = ("event_chain", "chain_checkpoints")

    def __init__(self, checkpoint_key: bytes) -> None:
        self._key = checkpoint_key
        # The last link written through the current batch's cursor: within one batch transaction (the
        # projector holds the tracking row lock) it is the predecessor, so no query is needed per event.
        self._last: tuple[Cursor, str, int] | None = None

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS event_chain (
                position BIGINT PRIMARY KEY, sequence BIGINT NOT NULL, event_hash TEXT NOT NULL,
                chain_hash TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS chain_checkpoints (
                position BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL, signature TEXT NOT NULL)""",
        )

    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        if self._last is not None and self._last[0] is cursor:
            previous, sequence = self._last[1], self._last[2]
        else:
            row = cursor.execute(
                "SELECT chain_hash, sequence FROM event_chain WHERE position < ? ORDER BY position DESC LIMIT 1",
                (notification.id,),
            ).fetchone()
            previous, sequence = (str(row[0]), int(row[1])) if row else (GENESIS, 0)
        this_event = event_hash(notification)
        chain_hash = link(previous, this_event)
        sequence += 1
        cursor.execute(
            "INSERT INTO event_chain (position, sequence, event_hash, chain_hash) VALUES (?, ?, ?, ?)",
            (notification.id, sequence, this_event, chain_hash),
        )
        self._last = (cursor, chain_hash, sequence)
        if sequence % CHECKPOINT_EVERY == 0:
            self._checkpoint(cursor, notification.id, chain_hash)

    def _checkpoint(self, cursor: Cursor, position: int, chain_hash: str) -> None:
        cursor.execute(
            "INSERT INTO chain_checkpoints (position, chain_hash, signature) VALUES (?, ?, ?) "
            "ON CONFLICT (position) DO NOTHING",
            (position, chain_hash, sign_checkpoint(self._key, position, chain_hash)),
        )
