"""Reading the hash chain: its signed head, and verifying the stored log against it, online or offline.

``verify`` recomputes the chain from the stored events and compares it with the links ``EventChain``
recorded; ``log_lines`` exports the log as stored and ``verify_log_lines`` checks such an export against a
head kept earlier, with nothing but the file.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Notification

from infrastructure.db import Database
from projections.chain import GENESIS, event_hash, link, sign_checkpoint


@dataclass(frozen=True)
class ChainHead:
    """What an auditor keeps to verify a copy of the log later: a position and the chain hash there."""

    position: int
    chain_hash: str
    signature: str

    def as_dict(self) -> dict[str, Any]:
        return {"position": self.position, "chain_hash": self.chain_hash, "signature": self.signature}


def chain_head(db: Database, key: bytes, *, at: int | None = None) -> ChainHead:
    """The chain's head (or its link at position ``at``), signed with the checkpoint key."""
    with db.read() as cursor:
        if at is None:
            row = cursor.execute(
                "SELECT position, chain_hash FROM event_chain ORDER BY position DESC LIMIT 1"
            ).fetchone()
        else:
            row = cursor.execute(
                "SELECT position, chain_hash FROM event_chain WHERE position <= ? ORDER BY position DESC LIMIT 1",
                (at,),
            ).fetchone()
    position, chain_hash = (int(row[0]), str(row[1])) if row else (0, GENESIS)
    return ChainHead(position, chain_hash, sign_checkpoint(key, position, chain_hash))


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head: ChainHead | None
    first_bad_position: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head": self.head.as_dict() if self.head else None,
            "first_bad_position": self.first_bad_position,
            "problem": self.problem,
        }


def _recorded_links(db: Database, batch: int = 5000) -> Iterator[tuple[int, str, str]]:
    after = 0
    while True:
        with db.read() as cursor:
            rows = cursor.execute(
                "SELECT position, event_hash, chain_hash FROM event_chain WHERE position > ? ORDER BY position LIMIT ?",
                (after, batch),
            ).fetchall()
        if not rows:
            return
        for position, this_event, chain_hash in rows:
            yield int(position), str(this_event), str(chain_hash)
        after = int(rows[-1][0])


def _stored_events(select: Callable[..., Sequence[Notification]], batch: int = 500) -> Iterator[Notification]:
    position = 0
    while True:
        notifications = select(start=position, limit=batch, inclusive_of_start=False)
        if not notifications:
            return
        yield from notifications
        position = notifications[-1].id


def verify(
    db: Database,
    select_notifications: Callable[..., Sequence[Notification]],
    key: bytes,
    *,
    expected_head: ChainHead | None = None,
) -> VerifyResult:
    """Recompute the chain from the stored log and compare it, link by link, with the recorded chain.

    Reports the first position that was modified (hash differs), deleted (a recorded link with no event),
    inserted (an event with no recorded link, below the chain's head) or reordered (positions out of
    step). Checkpoint signatures are checked too, and an exported head if one is given.
    """
    with db.read() as cursor:
        checkpoints = {
            int(position): (str(chain_hash), str(signature))
            for position, chain_hash, signature in cursor.execute(
                "SELECT position, chain_hash, signature FROM chain_checkpoints"
            ).fetchall()
        }
    for position, (chain_hash, signature) in sorted(checkpoints.items()):
        if not hmac.compare_digest(signature, sign_checkpoint(key, position, chain_hash)):
            return VerifyResult(False, 0, None, position, "checkpoint signature does not match")
    events = _stored_events(select_notifications)
    previous = GENESIS
    checked = 0
    last: ChainHead | None = None
    for position, recorded_event_hash, recorded_chain_hash in _recorded_links(db):
        notification = next(events, None)
        if notification is not None and notification.id < position:
            return VerifyResult(False, checked, last, notification.id, "event not in the chain (inserted)")
        if notification is None or notification.id > position:
            return VerifyResult(False, checked, last, position, "event missing from the log (deleted)")
        actual = event_hash(notification)
        chain_hash = link(previous, actual)
        if actual != recorded_event_hash or chain_hash != recorded_chain_hash:
            return VerifyResult(
                False, checked, last, position, "event differs from when it was recorded (modified)"
            )
        if position in checkpoints and checkpoints[position][0] != chain_hash:
            return VerifyResult(False, checked, last, position, "chain differs from its signed checkpoint")
        previous = chain_hash
        checked += 1
        last = ChainHead(position, chain_hash, sign_checkpoint(key, position, chain_hash))
    if expected_head is not None:
        if last is None or last.position < expected_head.position:
            return VerifyResult(
                False, checked, last, expected_head.position, "log is shorter than the exported head"
            )
        at = chain_head(db, key, at=expected_head.position)
        if at.chain_hash != expected_head.chain_hash:
            return VerifyResult(
                False, checked, last, expected_head.position, "chain differs from the exported head"
            )
    return VerifyResult(True, checked, last)


def export_head(head: ChainHead) -> str:
    return json.dumps(head.as_dict(), sort_keys=True)


def parse_head(text: str) -> ChainHead:
    data = json.loads(text)
    return ChainHead(int(data["position"]), str(data["chain_hash"]), str(data.get("signature", "")))


def log_lines(
    select_notifications: Callable[..., Sequence[Notification]], *, upto: int | None = None
) -> Iterator[str]:
    """The stored event log as JSON Lines, exactly as stored (state in base64), for offline verification."""
    import base64

    for notification in _stored_events(select_notifications):
        if upto is not None and notification.id > upto:
            return
        yield json.dumps(
            {
                "position": notification.id,
                "originator_id": str(notification.originator_id),
                "originator_version": notification.originator_version,
                "topic": notification.topic,
                "state": base64.b64encode(bytes(notification.state)).decode("ascii"),
            },
            sort_keys=True,
        )


def verify_log_lines(lines: Iterator[str], expected: ChainHead) -> VerifyResult:
    """Offline: recompute the chain over an exported log and compare it with a head kept earlier.

    Needs nothing but the file and the head: no database, no server, no key.
    """
    import base64

    previous = GENESIS
    checked = 0
    last_position = 0
    for line in lines:
        if not line.strip():
            continue
        data = json.loads(line)
        notification = Notification(
            originator_id=data["originator_id"],
            originator_version=int(data["originator_version"]),
            topic=data["topic"],
            state=base64.b64decode(data["state"]),
            id=int(data["position"]),
        )
        if notification.id <= last_position:
            return VerifyResult(False, checked, None, notification.id, "positions out of order (reordered)")
        previous = link(previous, event_hash(notification))
        last_position = notification.id
        checked += 1
        if notification.id == expected.position:
            head = ChainHead(notification.id, previous, expected.signature)
            if previous != expected.chain_hash:
                return VerifyResult(
                    False, checked, head, notification.id, "chain differs from the exported head"
                )
            return VerifyResult(True, checked, head)
    return VerifyResult(False, checked, None, expected.position, "the log ends before the exported head")
