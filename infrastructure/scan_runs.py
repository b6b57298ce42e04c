"""The expiry scan's own record: when each scan ran and how it went, for ``deploy-tokens schedule`` and ``/metrics``.

One row per scan in ``expiry_scan_runs``, keyed by the scan's id: the UTC day for the scan the scheduler
triggers (``20261201``: one a day, retries included), a unique id for a scan run in-process (the embedded
server, ``deploy-tokens expiry-scan``). The scan fills in what it did (tokens examined and expired, mails
due); each mail job adds its outcome afterwards (sent, no one to mail, another outcome, or a failed attempt),
so the row tells how the day's mails went while they are still being retried.

Operational bookkeeping, not history: what happened to each token is in the event log. The table is created
on first use (``CREATE TABLE IF NOT EXISTS``, tolerating a concurrent creator).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg

from infrastructure.db import Database, to_datetime

RunStatus = Literal["running", "succeeded", "failed"]
MailOutcome = Literal["sent", "no_recipients", "other", "failed"]

SCHEMA: Final = """CREATE TABLE IF NOT EXISTS expiry_scan_runs (
    scan_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    examined INTEGER NOT NULL DEFAULT 0,
    expired INTEGER NOT NULL DEFAULT 0,
    mails_due INTEGER NOT NULL DEFAULT 0,
    mails_sent INTEGER NOT NULL DEFAULT 0,
    mails_no_recipients INTEGER NOT NULL DEFAULT 0,
    mails_other INTEGER NOT NULL DEFAULT 0,
    mail_failures INTEGER NOT NULL DEFAULT 0,
    error TEXT
)"""
_COLUMNS: Final = (
    "scan_id, source, started_at, finished_at, status, attempts, examined, expired, mails_due, mails_sent, "
    "mails_no_recipients, mails_other, mail_failures, error"
)
_MAIL_COLUMN: Final[dict[str, str]] = {
    "sent": "mails_sent",
    "no_recipients": "mails_no_recipients",
    "other": "mails_other",
    "failed": "mail_failures",
}
# A creator racing another on PostgreSQL's catalog fails with a unique violation although the table exists.
_RACED: Final = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable, sqlite3.OperationalError)


@dataclass(frozen=True)
class ScanRun:
    scan_id: str
    source: str  # "scheduler" (RQ), "embedded" (deploy-tokens serve) or "cli" (deploy-tokens expiry-scan)
    started_at: datetime
    finished_at: datetime | None
    status: RunStatus
    attempts: int
    examined: int
    expired: int
    mails_due: int
    mails_sent: int
    mails_no_recipients: int
    mails_other: (
        int  # already sent, no longer due, revoked meanwhile, claimed by another sender, switched off
    )
    mail_failures: int  # failed attempts (each retry counts)
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _run(row: tuple[Any, ...]) -> ScanRun:
    started, finished = to_datetime(row[2]), to_datetime(row[3])
    assert started is not None
    attempts, examined, expired, due, sent, no_recipients, other, failures = (
        int(value) for value in row[5:13]
    )
    return ScanRun(
        scan_id=str(row[0]),
        source=str(row[1]),
        started_at=started,
        finished_at=finished,
        status=row[4],
        attempts=attempts,
        examined=examined,
        expired=expired,
        mails_due=due,
        mails_sent=sent,
        mails_no_recipients=no_recipients,
        mails_other=other,
        mail_failures=failures,
        error=row[13],
    )


class ScanRuns:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._ready = False

    def ensure_table(self) -> None:
        if self._ready:
            return
        try:
            with self.db.transaction() as cursor:
                cursor.execute(SCHEMA)
        except _RACED:
            with self.db.read() as cursor:  # raises if the table is really missing
                cursor.execute("SELECT 1 FROM expiry_scan_runs LIMIT 1")
        self._ready = True

    def started(self, scan_id: str, source: str, now: datetime) -> None:
        """A scan (or a retry of the same day's scan) begins: its figures start again from zero."""
        self.ensure_table()
        with self.db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO expiry_scan_runs (scan_id, source, started_at, status, attempts) "
                "VALUES (?, ?, ?, 'running', 1) ON CONFLICT (scan_id) DO UPDATE SET started_at = excluded.started_at, "
                "finished_at = NULL, status = 'running', attempts = expiry_scan_runs.attempts + 1, examined = 0, "
                "expired = 0, mails_due = 0, error = NULL",
                (scan_id, source, now),
            )

    def finished(self, scan_id: str, now: datetime, *, examined: int, expired: int, mails_due: int) -> None:
        self.ensure_table()
        with self.db.transaction() as cursor:
            cursor.execute(
                "UPDATE expiry_scan_runs SET finished_at = ?, status = 'succeeded', examined = ?, expired = ?, "
                "mails_due = ? WHERE scan_id = ?",
                (now, examined, expired, mails_due, scan_id),
            )

    def failed(self, scan_id: str, now: datetime, error: str) -> None:
        self.ensure_table()
        with self.db.transaction() as cursor:
            cursor.execute(
                "UPDATE expiry_scan_runs SET finished_at = ?, status = 'failed', error = ? WHERE scan_id = ?",
                (now, error[:1000], scan_id),
            )

    def mail(self, scan_id: str, outcome: MailOutcome, count: int = 1) -> None:
        """Count ``count`` mails of the scan with this outcome (a failed attempt counts each time)."""
        if count <= 0:
            return
        column = _MAIL_COLUMN[outcome]
        self.ensure_table()
        with self.db.transaction() as cursor:
            cursor.execute(
                f"UPDATE expiry_scan_runs SET {column} = {column} + ? WHERE scan_id = ?", (count, scan_id)
            )

    def mails(self, scan_id: str, counts: Mapping[MailOutcome, int]) -> None:
        """Count a batch's mails, each outcome ``counts[outcome]`` times, in one statement."""
        counted = {outcome: count for outcome, count in counts.items() if count > 0}
        if not counted:
            return
        assignments = ", ".join(
            f"{_MAIL_COLUMN[outcome]} = {_MAIL_COLUMN[outcome]} + ?" for outcome in counted
        )
        self.ensure_table()
        with self.db.transaction() as cursor:
            cursor.execute(
                f"UPDATE expiry_scan_runs SET {assignments} WHERE scan_id = ?", (*counted.values(), scan_id)
            )

    def latest(self) -> ScanRun | None:
        return self._one("ORDER BY started_at DESC, scan_id DESC")

    def last_success(self) -> ScanRun | None:
        return self._one("WHERE status = 'succeeded' ORDER BY finished_at DESC, scan_id DESC")

    def get(self, scan_id: str) -> ScanRun | None:
        self.ensure_table()
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {_COLUMNS} FROM expiry_scan_runs WHERE scan_id = ?", (scan_id,)
            ).fetchone()
        return None if row is None else _run(row)

    def _one(self, clause: str) -> ScanRun | None:
        self.ensure_table()
        with self.db.read() as cursor:
            row = cursor.execute(f"SELECT {_COLUMNS} FROM expiry_scan_runs {clause} LIMIT 1").fetchone()
        return None if row is None else _run(row)
