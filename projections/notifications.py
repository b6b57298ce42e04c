"""The expiry-notification projection: one row per expiring token, indexed by when it next needs attention.

The daily scan (behaviour [notifications], [expiry-event]) must send each interval's email once (60, 30, 7 days before
expiry, no back-fill) and record ``Expired`` once the expiry has passed. Scanning every token every day
costs O(all tokens). Instead each row carries ``next_due_at``: the earliest instant at which the scan could
have anything to do for that token. It is a pure function of the row (``next_due_at()`` below):

* NULL once nothing can ever be due again: revoked, deleted, or expiry recorded;
* otherwise, with *pending* = the intervals I in (60, 30, 7) such that neither I nor any more urgent
  (smaller) interval has been notified, 00:00 UTC of (the expiry's UTC date - max(pending) days), i.e. the
  opening of the widest window still to come: a token first seen at 6 days gets only the 7-day mail,
  and once the 7-day mail went out the 30/60 ones never will;
* if nothing is pending, ``expires_at``: only recording ``Expired`` is left. Nothing is ever pending for a
  token whose row says it gets no mails (``mails`` false: one issued in exchange for an ID token, behaviour
  [federation], which lives minutes and which ``DeployToken.interval_due`` never mails about), so such a
  token is due at its expiry and only then.

Why the scan is O(due): ``due_tokens`` (``projections.notification_queries``) reads the range ``next_due_at <=
now`` of a partial B-tree index that holds only rows with a non-NULL ``next_due_at``. Tokens whose next window
opens later sit beyond ``now`` in that index and are never read; finished tokens (revoked, deleted, expired:
they pile up forever) are not in the index at all; tokens that never expire have no row. ``next_due_at`` is
exact both ways. It is never later than the first moment the domain has work for the token (today's window
lies at or below max(pending), so it opens no earlier than that window; the expiry comes after every window;
a token without mails has no window, only its expiry). And a row in the range always has work: today's
window interval J <= max(pending) cannot have been sent, or J would have removed max(pending) from
*pending*; or the token has expired and ``Expired`` is missing. So the
rows read are the tokens with work, plus those whose work was tried and failed (no recipients, SMTP error, a
lease held elsewhere), which stay due to be retried, just as GitLab leaves ``*_sent_at`` NULL. Tokens the scan
skips by policy (the feature flag off) also stay due, but only inside their last 60 days and
until ``Expired`` is recorded, so they too are bounded by the due set, not by the table. Every event moves
``next_due_at`` forward or to NULL, never back, and a page is one index range read plus a top-``limit`` sort
(see ``due_tokens``).

Claims (``NotificationClaimed``, released by ``NotificationFailed`` or ended by ``Notified``) do not move
``next_due_at``: a claimed token is still due, and the scanner sees the lease in ``DueToken.claims``. Nor
does the scan's recorded intent (``NotificationDue``): the token stays due until ``Notified``, so a later
scan dispatches again. ``Scoped`` and ``Rotated`` change nothing here. Whether a token gets mails is fixed by
its ``Created`` (who created it), so ``mails`` never changes after the row is written.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from eventsourcing.persistence import Notification

from domain.clock import as_utc, start_of_day
from domain.deploy_token import INTERVALS, DeployToken, is_federated
from infrastructure.db import Cursor, to_datetime
from projections.keyed_rows import KeyedRows
from projections.projection import BatchedEventProjection, EventHandlers, HandlerEntry, StreamEvent, on

TABLE: Final = "expiry_notifications"

# Per-interval columns, generated from the domain's INTERVALS. Changing INTERVALS needs the table dropped
# and rebuilt: ``CREATE TABLE IF NOT EXISTS`` and ``Projector.rebuild`` (DELETE) do not alter columns.
_PER_INTERVAL_SCHEMA: Final = ", ".join(
    f"notified_{i}_at TIMESTAMPTZ, notified_{i}_message_id TEXT, claim_{i}_until TIMESTAMPTZ, "
    f"claim_{i}_message_id TEXT"
    for i in INTERVALS
)
_NOTIFIED_COLUMNS: Final = ", ".join(f"notified_{i}_at" for i in INTERVALS)
_CLAIM_COLUMNS: Final = ", ".join(f"claim_{i}_until" for i in INTERVALS)

_ALL_COLUMNS: Final = (
    "token_id",
    "stream_id",
    "holder_kind",
    "holder_id",
    "name",
    "expires_at",
    "revoked",
    "deleted",
    "expiry_recorded",
    "mails",
    *(
        f"{prefix}_{i}_{suffix}"
        for i in INTERVALS
        for prefix, suffix in (
            ("notified", "at"),
            ("notified", "message_id"),
            ("claim", "until"),
            ("claim", "message_id"),
        )
    ),
    "next_due_at",
    "position",
)

DUE_TOKEN_COLUMNS: Final = (
    "token_id, holder_kind, holder_id, name, expires_at, expiry_recorded, revoked, deleted, next_due_at, "
    f"{_NOTIFIED_COLUMNS}, {_CLAIM_COLUMNS}, mails"
)


def next_due_at(
    expires_at: datetime,
    notified: Collection[int],
    *,
    revoked: bool = False,
    deleted: bool = False,
    expiry_recorded: bool = False,
    mails: bool = True,
) -> datetime | None:
    """When the expiry scan next has something to do for this token; None when it never will again."""
    if revoked or deleted or expiry_recorded:
        return None
    if not mails:  # behaviour [federation]: no interval is ever pending, only recording the expiry
        return as_utc(expires_at)
    pending = [interval for interval in INTERVALS if not any(sent <= interval for sent in notified)]
    if pending:
        return start_of_day(expires_at.astimezone(UTC).date() - timedelta(days=max(pending)))
    return as_utc(expires_at)


@dataclass(frozen=True)
class DueToken:
    """What the expiry scan needs to know about one token (never its value)."""

    token_id: int
    holder_kind: str
    holder_id: int
    name: str
    expires_at: datetime
    notified: frozenset[int]
    # interval -> lease_until of the current claim (it may have lapsed); kept out of the hash, dicts have none
    claims: dict[int, datetime] = field(hash=False)
    expiry_recorded: bool
    revoked: bool = False
    deleted: bool = False
    next_due_at: datetime | None = None
    mails: bool = True  # false: the token is never mailed about (behaviour [federation])


def due_token_from_row(row: Sequence[Any]) -> DueToken:
    expires_at = to_datetime(row[4])
    assert expires_at is not None
    count = len(INTERVALS)
    notified_at = row[9 : 9 + count]
    claim_until = row[9 + count : 9 + 2 * count]
    claims: dict[int, datetime] = {}
    for interval, value in zip(INTERVALS, claim_until, strict=True):
        lease_until = to_datetime(value)
        if lease_until is not None:
            claims[interval] = lease_until
    return DueToken(
        token_id=int(row[0]),
        holder_kind=str(row[1]),
        holder_id=int(row[2]),
        name=str(row[3]),
        expires_at=expires_at,
        expiry_recorded=bool(row[5]),
        revoked=bool(row[6]),
        deleted=bool(row[7]),
        next_due_at=to_datetime(row[8]),
        notified=frozenset(i for i, at in zip(INTERVALS, notified_at, strict=True) if at is not None),
        claims=claims,
        mails=bool(row[9 + 2 * count]),
    )


def _interval(
    event: DeployToken.NotificationClaimed | DeployToken.NotificationFailed | DeployToken.Notified,
) -> int:
    interval = int(event.interval)
    if interval not in INTERVALS:  # the aggregate refuses these; a stored one means the domain changed
        raise ValueError(f"unknown notification interval {interval} in {type(event).__name__}")
    return interval


def _token_created(rows: KeyedRows, event: DeployToken.Created, position: int) -> None:
    if event.expires_at is None:
        return
    expires_at = as_utc(event.expires_at)
    mails = not is_federated(event.actor)
    rows.insert(
        {
            "token_id": event.token_id,
            "stream_id": str(event.originator_id),
            "holder_kind": event.holder_kind,
            "holder_id": event.holder_id,
            "name": event.name,
            "expires_at": expires_at,
            "revoked": False,
            "deleted": False,
            "expiry_recorded": False,
            "mails": mails,
            "next_due_at": next_due_at(expires_at, (), mails=mails),
            "position": position,
        }
    )


def _finished(
    event_class: type[DeployToken.Revoked | DeployToken.Deleted | DeployToken.Expired], flag: str
) -> HandlerEntry[KeyedRows]:
    """Revoked, Deleted, Expired: nothing can be due any more."""

    def handler(rows: KeyedRows, event: StreamEvent, position: int) -> None:
        rows.update(str(event.originator_id), **{flag: True, "next_due_at": None, "position": position})

    return on(event_class, handler)


def _notification_claimed(rows: KeyedRows, event: DeployToken.NotificationClaimed, position: int) -> None:
    interval = _interval(event)
    rows.update(
        str(event.originator_id),
        **{
            f"claim_{interval}_until": event.lease_until,
            f"claim_{interval}_message_id": event.message_id,
            "position": position,
        },
    )


def _notification_failed(rows: KeyedRows, event: DeployToken.NotificationFailed, position: int) -> None:
    """The sender gave its claim back: a retry need not wait for the lease; the token stays due."""
    interval = _interval(event)
    rows.update(
        str(event.originator_id),
        **{f"claim_{interval}_until": None, f"claim_{interval}_message_id": None, "position": position},
    )


def _notified(rows: KeyedRows, event: DeployToken.Notified, position: int) -> None:
    interval = _interval(event)
    stream = str(event.originator_id)
    row = rows.get(stream)
    if row is None:  # a token without expiry
        return
    expires_at = to_datetime(row["expires_at"])
    assert expires_at is not None
    notified = {i for i in INTERVALS if row[f"notified_{i}_at"] is not None} | {interval}
    due = next_due_at(
        expires_at,
        notified,
        revoked=bool(row["revoked"]),
        deleted=bool(row["deleted"]),
        expiry_recorded=bool(row["expiry_recorded"]),
        mails=bool(row["mails"]),
    )
    # As the aggregate does, a recorded notification ends that interval's claim.
    rows.update(
        stream,
        **{
            f"notified_{interval}_at": event.timestamp,
            f"notified_{interval}_message_id": event.message_id,
            f"claim_{interval}_until": None,
            f"claim_{interval}_message_id": None,
            "next_due_at": due,
            "position": position,
        },
    )


class ExpiryNotifications(BatchedEventProjection[KeyedRows]):
    """Rows only for tokens with an expiry: a token without one can never be due (no event sets an expiry
    later), so giving it a row would only grow the table with rows no query wants.

    Every event changes the row of its own token: a batch reads those rows in one query and writes each
    once (``KeyedRows``), instead of a statement per event.
    """

    name = "expiry_notifications"
    tables = (TABLE,)
    version = 2  # 2: ``mails``, whether the token is ever mailed about (behaviour [federation])
    handlers = EventHandlers(
        on(DeployToken.Created, _token_created),
        _finished(DeployToken.Revoked, "revoked"),
        _finished(DeployToken.Deleted, "deleted"),
        _finished(DeployToken.Expired, "expiry_recorded"),
        on(DeployToken.NotificationClaimed, _notification_claimed),
        on(DeployToken.NotificationFailed, _notification_failed),
        on(DeployToken.Notified, _notified),
    )

    def open_batch(self, cursor: Cursor, notifications: Sequence[Notification]) -> KeyedRows:
        rows = KeyedRows(cursor, TABLE, "stream_id", _ALL_COLUMNS)
        first_versions: dict[str, int] = {}
        for notification in notifications:
            first_versions.setdefault(str(notification.originator_id), notification.originator_version)
        # A token whose stream begins in this batch has no row yet: a command creating one reads nothing.
        rows.none_stored(stream for stream, version in first_versions.items() if version == 1)
        rows.prefetch(stream for stream, version in first_versions.items() if version != 1)
        return rows

    def close_batch(self, context: KeyedRows) -> None:
        context.flush()

    def schema(self) -> Sequence[str]:
        return (
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                token_id BIGINT PRIMARY KEY, stream_id TEXT NOT NULL, holder_kind TEXT NOT NULL,
                holder_id BIGINT NOT NULL, name TEXT NOT NULL, expires_at TIMESTAMPTZ NOT NULL,
                revoked BOOLEAN NOT NULL, deleted BOOLEAN NOT NULL, expiry_recorded BOOLEAN NOT NULL,
                mails BOOLEAN NOT NULL DEFAULT TRUE, {_PER_INTERVAL_SCHEMA},
                next_due_at TIMESTAMPTZ, position BIGINT NOT NULL)""",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_stream ON {TABLE} (stream_id)",
            # Partial: finished tokens (NULL) accumulate forever and must not cost the scan anything.
            f"CREATE INDEX IF NOT EXISTS {TABLE}_next_due ON {TABLE} (next_due_at, token_id) "
            "WHERE next_due_at IS NOT NULL",
        )
