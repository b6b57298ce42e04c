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
from projections.projection import Decode, Projection

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

    def schema(self) -> Sequence[str]:
        return (
            """CREATE TABLE IF NOT EXISTS event_chain (
                position BIGINT PRIMARY KEY, sequence BIGINT NOT NULL, event_hash TEXT NOT NULL,
                chain_hash TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS chain_checkpoints (
                position BIGINT PRIMARY KEY, chain_hash TEXT NOT NULL, signature TEXT NOT NULL)""",
        )

    def apply_stored(self, cursor: Cursor, notification: Notification, decode: Decode) -> None:
        self.apply_batch(cursor, (notification,), decode)

    def apply_batch(self, cursor: Cursor, notifications: Sequence[Notification], decode: Decode) -> None:
        """Every event is linked (none is decoded): one read of the link before the batch, one bulk insert."""
        if not notifications:
            return
        row = cursor.execute(
            "SELECT chain_hash, sequence FROM event_chain WHERE position < ? ORDER BY position DESC LIMIT 1",
            (notifications[0].id,),
        ).fetchone()
        previous, sequence = (str(row[0]), int(row[1])) if row else (GENESIS, 0)
        links: list[tuple[int, int, str, str]] = []
        checkpoints: list[tuple[int, str, str]] = []
        for notification in notifications:
            this_event = event_hash(notification)
            previous = link(previous, this_event)
            sequence += 1
            links.append((notification.id, sequence, this_event, previous))
            if sequence % CHECKPOINT_EVERY == 0:
                checkpoints.append(
                    (notification.id, previous, sign_checkpoint(self._key, notification.id, previous))
                )
        cursor.insert_many("event_chain", ("position", "sequence", "event_hash", "chain_hash"), links)
        cursor.executemany(
            "INSERT INTO chain_checkpoints (position, chain_hash, signature) VALUES (?, ?, ?) "
            "ON CONFLICT (position) DO NOTHING",
            checkpoints,
        )
