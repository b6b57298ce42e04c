"""Web UI sessions, server-side: one encrypted row per signed-in session, keyed by an HMAC of its id.

* **Server side.** One row of ``ui_sessions`` per signed-in session, in the service's own database, so
  every web worker process sees the same sessions. The row is keyed by an HMAC of the id (a database reader
  learns no usable cookie) and its data (the personal access token that signed in, a pending notice, and
  for one request the value of a just-created deploy token) is AES-GCM encrypted under a key derived from
  the server secret **and the session id**: neither a copy of the database nor the secret alone decrypts it
  (no plaintext secret at rest).
* **Ids.** A random 256-bit id (``secrets.token_urlsafe(32)``), which the web UI keeps in a cookie. The
  server side ends after ``SESSION_LIFETIME`` at the latest.
* **Keys.** One root key, an HMAC of ``settings.secret_key`` with a label of its own, and from it one
  sub-key per purpose (row id, CSRF, encryption): nothing is shared with ``infrastructure.keys``.
* **CSRF.** The token of a session is ``HMAC(csrf_key, session id)``: per session, nothing to store, and it
  changes when the id does. Tokens are compared with ``hmac.compare_digest``.
* **Exactly once.** :meth:`SessionStore.take` removes one entry inside a write transaction (``FOR UPDATE``
  on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so two concurrent requests never both read it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infrastructure.db import Cursor, Database, to_datetime

SESSION_LIFETIME: Final = timedelta(hours=8)


class Clock(Protocol):
    """Anything that tells the time (the runtime's clock, which tests control)."""

    def now(self) -> datetime: ...


_SESSION_ID: Final = re.compile(r"\A[A-Za-z0-9_-]{43}\Z")

SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS ui_sessions (
        session_digest TEXT PRIMARY KEY,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS ui_sessions_expires ON ui_sessions (expires_at)",
)


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def well_formed_session_id(value: str | None) -> bool:
    return value is not None and _SESSION_ID.match(value) is not None


class SessionKeys:
    """The UI's keys, derived from the server secret with HMAC-SHA256 and labels of their own."""

    def __init__(self, secret: bytes) -> None:
        root = _hmac(secret, b"deploy-tokens/web-ui-session/v1")
        self._id_key = _hmac(root, b"session-row-id")
        self._csrf_key = _hmac(root, b"csrf")
        self._data_key = _hmac(root, b"session-data")

    def row_id(self, session_id: str) -> str:
        return hmac.new(self._id_key, session_id.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session_id: str) -> str:
        return hmac.new(self._csrf_key, session_id.encode(), hashlib.sha256).hexdigest()

    def csrf_valid(self, session_id: str | None, presented: str | None) -> bool:
        if not well_formed_session_id(session_id) or not presented:
            return False
        assert session_id is not None
        return hmac.compare_digest(self.csrf_token(session_id).encode(), presented.encode())

    def data_cipher(self, session_id: str) -> AESGCM:
        return AESGCM(_hmac(self._data_key, session_id.encode()))

    def __repr__(self) -> str:
        return "SessionKeys(<derived keys hidden>)"


class SessionStore:
    """Encrypted session rows in the service database (both backends, through ``infrastructure.db``)."""

    def __init__(self, db: Database, keys: SessionKeys, clock: Clock) -> None:
        self._db = db
        self.keys = keys
        self._clock = clock

    @staticmethod
    def create_table(cursor: Cursor) -> None:
        for statement in SCHEMA:
            cursor.execute(statement)

    # Encryption ---------------------------------------------------------------------------------------

    def _seal(self, session_id: str, row_id: str, data: dict[str, Any]) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        plaintext = json.dumps(data, separators=(",", ":")).encode()
        return nonce, self.keys.data_cipher(session_id).encrypt(nonce, plaintext, row_id.encode())

    def _open(self, session_id: str, row_id: str, nonce: Any, ciphertext: Any) -> dict[str, Any] | None:
        try:
            plaintext = self.keys.data_cipher(session_id).decrypt(
                bytes(nonce), bytes(ciphertext), row_id.encode()
            )
        except InvalidTag:
            return None  # not sealed for this id under this server's secret: no session
        loaded = json.loads(plaintext)
        return loaded if isinstance(loaded, dict) else None

    # Rows ---------------------------------------------------------------------------------------------

    def create(self, data: dict[str, Any]) -> str:
        """A new session with ``data``; returns its id (the cookie value). Expired rows are purged here."""
        session_id = new_session_id()
        row_id = self.keys.row_id(session_id)
        nonce, ciphertext = self._seal(session_id, row_id, data)
        now = self._clock.now()
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM ui_sessions WHERE expires_at <= ?", (now,))
            cursor.execute(
                "INSERT INTO ui_sessions (session_digest, nonce, ciphertext, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (row_id, nonce, ciphertext, now, now + SESSION_LIFETIME),
            )
        return session_id

    def _row(self, cursor: Cursor, row_id: str, *, lock: bool) -> tuple[Any, ...] | None:
        return cursor.execute(
            "SELECT nonce, ciphertext, expires_at FROM ui_sessions WHERE session_digest = ?"
            + (" FOR UPDATE" if lock else ""),
            (row_id,),
        ).fetchone()

    def _live(self, session_id: str, row: tuple[Any, ...] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        expires_at = to_datetime(row[2])
        if expires_at is None or expires_at <= self._clock.now():
            return None
        return self._open(session_id, self.keys.row_id(session_id), row[0], row[1])

    def load(self, session_id: str | None) -> dict[str, Any] | None:
        if not well_formed_session_id(session_id):
            return None
        assert session_id is not None
        with self._db.read() as cursor:
            row = self._row(cursor, self.keys.row_id(session_id), lock=False)
        return self._live(session_id, row)

    def update(self, session_id: str, **changes: Any) -> None:
        """Set (or, with ``None``, remove) entries of a live session."""
        row_id = self.keys.row_id(session_id)
        with self._db.transaction() as cursor:
            data = self._live(session_id, self._row(cursor, row_id, lock=True))
            if data is None:
                return
            for key, value in changes.items():
                if value is None:
                    data.pop(key, None)
                else:
                    data[key] = value
            self._write(cursor, session_id, row_id, data)

    def take(self, session_id: str, *keys: str) -> dict[str, Any]:
        """Remove and return entries; under concurrency exactly one caller gets each of them."""
        row_id = self.keys.row_id(session_id)
        with self._db.transaction() as cursor:
            data = self._live(session_id, self._row(cursor, row_id, lock=True))
            if data is None:
                return {}
            taken = {key: data.pop(key) for key in keys if key in data}
            if taken:
                self._write(cursor, session_id, row_id, data)
        return taken

    def _write(self, cursor: Cursor, session_id: str, row_id: str, data: dict[str, Any]) -> None:
        nonce, ciphertext = self._seal(session_id, row_id, data)
        cursor.execute(
            "UPDATE ui_sessions SET nonce = ?, ciphertext = ? WHERE session_digest = ?",
            (nonce, ciphertext, row_id),
        )

    def delete(self, session_id: str | None) -> None:
        if not well_formed_session_id(session_id):
            return
        assert session_id is not None
        with self._db.transaction() as cursor:
            cursor.execute(
                "DELETE FROM ui_sessions WHERE session_digest = ?", (self.keys.row_id(session_id),)
            )

    def count(self) -> int:
        with self._db.read() as cursor:
            row = cursor.execute("SELECT COUNT(*) FROM ui_sessions").fetchone()
        return int(row[0]) if row else 0
