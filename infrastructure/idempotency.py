"""Idempotency-Key records: one row per (caller, key), written in the transaction of the command it answers.

A client that lost the answer to a creating request retries with the same ``Idempotency-Key`` and gets the
original answer back instead of a second token. The row is inserted by the event store's recorder inside the
transaction that saves the command's events (``infrastructure.store``), so no crash can leave the events
committed without the record: both are kept or neither is. Its primary key (caller, key digest) stops a
concurrent duplicate: the second insert waits for the first transaction and, once that has committed, finds
the key taken and rolls its own transaction back, events and all.

What that transaction keeps is the command's *result* (the new ids and, for tokens, the value); the full HTTP
answer is added to the same row by a second, ordinary write once the view has built it. Both are AES-GCM
encrypted with a key derived from the server secret and bound to their row (associated data). The key and
the request are kept only as keyed digests. A row lives 24 hours: no lookup reads an older one, and older
ones are deleted whenever a new key arrives and by the daily expiry scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from psycopg import sql

from infrastructure.db import Cursor, Database, as_utc_text
from infrastructure.keys import Keyring

RETENTION: Final = timedelta(hours=24)
TABLE: Final = "idempotency_keys"

SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS idempotency_keys (
        user_id BIGINT NOT NULL,
        key_digest TEXT NOT NULL,
        request_digest TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        result_nonce BLOB NOT NULL,
        result BLOB NOT NULL,
        response_nonce BLOB,
        response BLOB,
        PRIMARY KEY (user_id, key_digest)
    )
    """,
    "CREATE INDEX IF NOT EXISTS idempotency_keys_expires_at ON idempotency_keys (expires_at)",
)

# An expired row of the same key is replaced in the same statement, so a key is free again after 24 hours
# even before any purge has run; a live one is left alone and nothing is returned.
_CLAIM_COLUMNS = "(user_id, key_digest, request_digest, created_at, expires_at, result_nonce, result)"
_CLAIM_CONFLICT = (
    " ON CONFLICT (user_id, key_digest) DO UPDATE SET request_digest = excluded.request_digest,"
    " created_at = excluded.created_at, expires_at = excluded.expires_at,"
    " result_nonce = excluded.result_nonce, result = excluded.result, response_nonce = NULL, response = NULL"
)
_SQLITE_CLAIM = (
    f"INSERT INTO {TABLE} {_CLAIM_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?){_CLAIM_CONFLICT}"
    f" WHERE {TABLE}.expires_at <= excluded.created_at RETURNING user_id"
)
_POSTGRES_CLAIM = (
    f"INSERT INTO {{table}} AS existing {_CLAIM_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s, %s){_CLAIM_CONFLICT}"
    " WHERE existing.expires_at <= excluded.created_at RETURNING user_id"
)


class IdempotencyKeyTaken(Exception):
    """Another request recorded this key first. Raised inside the command's transaction, which rolls back.

    Deliberately not an ``IntegrityError``: the id allocator and the retry loop take those for an id or a
    version race and would run the command again under the same key.
    """


class IdempotencyKeyBusy(Exception):
    """The request that holds this key has not finished: its answer cannot be given yet."""


@dataclass(frozen=True)
class KeptResponse:
    """The HTTP answer as first given: replayed byte for byte."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __repr__(self) -> str:
        return f"KeptResponse(status={self.status}, body=<hidden>)"


@dataclass(frozen=True)
class Recorded:
    """A live record of a key: the request it answered, the command's result, the answer when kept."""

    request_digest: str
    result: dict[str, Any] | None  # None: it does not decrypt under this server's key
    response: KeptResponse | None

    def __repr__(self) -> str:
        return f"Recorded(kept_response={self.response is not None}, result=<hidden>)"


class IdempotencySlot:
    """One keyed request's claim on its record, carried into the transaction of the command it runs.

    The command sets ``result`` (what it creates: ids, a token value) before each save; the recorder writes
    it with the events and sets ``written``.
    """

    def __init__(
        self, records: IdempotencyRecords, user_id: int, key_digest: str, request_digest: str, now: datetime
    ) -> None:
        self.records = records
        self.user_id = user_id
        self.key_digest = key_digest
        self.request_digest = request_digest
        self.created_at = now
        self.expires_at = now + RETENTION
        self.result: dict[str, Any] | None = None
        self.written = False

    def claim_row(self, *, times_as_text: bool) -> tuple[Any, ...]:
        if self.result is None:
            # A programming error: the command saved without saying what it created. Failing here rolls the
            # command back instead of recording a key whose replay could not give the answer.
            raise RuntimeError("an idempotent command saved without its result")
        nonce, sealed = self.records.seal(self, "result", json.dumps(self.result).encode())
        created: Any = as_utc_text(self.created_at) if times_as_text else self.created_at
        expires: Any = as_utc_text(self.expires_at) if times_as_text else self.expires_at
        return (self.user_id, self.key_digest, self.request_digest, created, expires, nonce, sealed)

    def __repr__(self) -> str:
        return f"IdempotencySlot(user_id={self.user_id}, key=<digest>, result=<hidden>)"


_pending: ContextVar[IdempotencySlot | None] = ContextVar("idempotency_slot", default=None)


@contextmanager
def saving_with(slot: IdempotencySlot | None) -> Iterator[None]:
    """Every event-store save of this thread inside the block carries ``slot`` into its transaction.

    A context variable rather than a keyword argument of ``save``: the id allocator and the retry loop
    save on the command's behalf, once per attempt, and each attempt's transaction must carry the record.
    The block must hold one command: of its saves exactly one commits (the others lost a race and rolled
    back), so the key is recorded once.
    """
    if slot is None:
        yield
        return
    token = _pending.set(slot)
    try:
        yield
    finally:
        _pending.reset(token)


def pending_slot() -> IdempotencySlot | None:
    """For the recorders: the slot the current save must record, if any."""
    return _pending.get()


def _claimed(slot: IdempotencySlot, row: object) -> None:
    if row is None:
        raise IdempotencyKeyTaken("the Idempotency-Key was recorded by another request")
    slot.written = True


def claim_in_sqlite(cursor: Any, slot: IdempotencySlot) -> None:
    """Inside the event store's SQLite transaction (its own connection, ``?`` placeholders)."""
    cursor.execute(_SQLITE_CLAIM, slot.claim_row(times_as_text=True))
    _claimed(slot, cursor.fetchone())


def claim_in_postgres(cursor: Any, slot: IdempotencySlot, *, schema: str, lock_timeout: int) -> None:
    """Inside the event store's PostgreSQL transaction, before it locks the events table.

    Waiting for another transaction that holds the same key is bounded like the store's own table lock; past
    the bound the other request is still running, which is a 409, not an unavailable database.
    """
    statement = sql.SQL(_POSTGRES_CLAIM).format(table=sql.Identifier(schema, TABLE))
    try:
        if lock_timeout > 0:
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", (f"{lock_timeout}s",))
        cursor.execute(statement, slot.claim_row(times_as_text=False))
        row = cursor.fetchone()
    except psycopg.errors.LockNotAvailable as error:
        raise IdempotencyKeyBusy("a request with this Idempotency-Key is still running") from error
    _claimed(slot, row)


class IdempotencyRecords:
    """The table's reads and ordinary writes (through the read-model connections) and its encryption."""

    def __init__(self, db: Database, keys: Keyring) -> None:
        self._db = db
        self._keys = keys
        self._aead = AESGCM(keys.idempotency_key)

    def create_table(self, cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)

    def slot(self, user_id: int, key: str, request: str, now: datetime) -> IdempotencySlot:
        """``request`` is the canonical request (method, path, parameters); only digests of it and of the key
        are kept."""
        return IdempotencySlot(
            self,
            user_id,
            self._keys.idempotency_digest(f"key\n{key}"),
            self._keys.idempotency_digest(f"request\n{request}"),
            now,
        )

    @staticmethod
    def _associated_data(slot: IdempotencySlot, part: str) -> bytes:
        # Binds a ciphertext to its row and column: a blob moved to another row or column does not decrypt.
        return f"idempotency:{part}:{slot.user_id}:{slot.key_digest}".encode()

    def seal(self, slot: IdempotencySlot, part: str, plaintext: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._aead.encrypt(nonce, plaintext, self._associated_data(slot, part))

    def _open(self, slot: IdempotencySlot, part: str, nonce: Any, sealed: Any) -> bytes | None:
        try:
            return self._aead.decrypt(bytes(nonce), bytes(sealed), self._associated_data(slot, part))
        except InvalidTag:
            return None

    def find(self, slot: IdempotencySlot) -> Recorded | None:
        """The live record of the slot's key, if any; a row past its 24 hours is never read."""
        with self._db.read() as cursor:
            row = cursor.execute(
                f"SELECT request_digest, result_nonce, result, response_nonce, response FROM {TABLE} "
                "WHERE user_id = ? AND key_digest = ? AND expires_at > ?",
                (slot.user_id, slot.key_digest, slot.created_at),
            ).fetchone()
        if row is None:
            return None
        request_digest, result_nonce, result, response_nonce, response = row
        opened_result = self._open(slot, "result", result_nonce, result)
        kept: KeptResponse | None = None
        if response is not None:
            opened = self._open(slot, "response", response_nonce, response)
            kept = None if opened is None else _decode_response(opened)
        return Recorded(
            str(request_digest), None if opened_result is None else json.loads(opened_result), kept
        )

    def keep_response(self, slot: IdempotencySlot, response: KeptResponse) -> None:
        """The second step: the full answer, on the row the command's transaction wrote."""
        nonce, sealed = self.seal(slot, "response", _encode_response(response))
        with self._db.transaction() as cursor:
            cursor.execute(
                f"UPDATE {TABLE} SET response_nonce = ?, response = ? "
                "WHERE user_id = ? AND key_digest = ? AND request_digest = ? AND expires_at > ?",
                (nonce, sealed, slot.user_id, slot.key_digest, slot.request_digest, slot.created_at),
            )

    def purge_expired(self, now: datetime) -> int:
        """Deletes every record past its 24 hours (the kept answers with them); returns how many."""
        with self._db.transaction() as cursor:
            return cursor.execute(f"DELETE FROM {TABLE} WHERE expires_at <= ?", (now,)).rowcount


def _encode_response(response: KeptResponse) -> bytes:
    return json.dumps(
        {
            "status": response.status,
            "headers": [list(pair) for pair in response.headers],
            "body": base64.b64encode(response.body).decode("ascii"),
        }
    ).encode()


def _decode_response(data: bytes) -> KeptResponse | None:
    try:
        decoded = json.loads(data)
        return KeptResponse(
            int(decoded["status"]),
            tuple((str(name), str(value)) for name, value in decoded["headers"]),
            base64.b64decode(decoded["body"], validate=True),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        # Authenticated by AES-GCM, so only a format this version does not read: rebuild from the result.
        return None
