"""The CI token vault (behaviour [ci-token]): the one recoverable secret, AES-GCM encrypted, outside the
immutable event log.

GitLab hands ``CI_DEPLOY_PASSWORD`` to CI jobs, so the value of a token named ``gitlab-deploy-token`` must be
recoverable. It is kept here, encrypted with a key derived from the server secret and bound to the token id
(associated data), and destroyed when the token is revoked, deleted or expires: the event log keeps only
the digest, forever.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from infrastructure.db import Cursor, Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS ci_token_vault (
    token_id BIGINT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
)
"""


class CiTokenVault:
    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._aead = AESGCM(key)

    def create_table(self, cursor: Cursor) -> None:
        cursor.execute(SCHEMA)

    @staticmethod
    def _associated_data(token_id: int) -> bytes:
        return f"ci-token:{token_id}".encode()

    def put(self, token_id: int, value: str) -> None:
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, value.encode(), self._associated_data(token_id))
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO ci_token_vault (token_id, nonce, ciphertext) VALUES (?, ?, ?) "
                "ON CONFLICT (token_id) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext",
                (token_id, nonce, ciphertext),
            )

    def get(self, token_id: int) -> str | None:
        with self._db.read() as cursor:
            row = cursor.execute(
                "SELECT nonce, ciphertext FROM ci_token_vault WHERE token_id = ?", (token_id,)
            ).fetchone()
        if row is None:
            return None
        try:
            return self._aead.decrypt(bytes(row[0]), bytes(row[1]), self._associated_data(token_id)).decode()
        except InvalidTag:
            # A row that does not decrypt under this server's key is not ours to hand out.
            return None

    def destroy(self, token_id: int) -> None:
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM ci_token_vault WHERE token_id = ?", (token_id,))


# Audit streaming destinations' verification tokens (behaviour [audit-streaming]) ---------------------------

DESTINATION_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_destination_tokens (
    secret_ref TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
)
"""


class DestinationTokenVault:
    """A streaming destination's verification token, which every delivery must carry: recoverable, so kept here
    AES-GCM encrypted (the vault's key; the entry's reference as associated data, so a row moved to another
    reference does not decrypt) outside the event log, and destroyed with its destination. Events name the
    entry by its reference, a random id chosen before the destination is saved."""

    def __init__(self, db: Database, key: bytes) -> None:
        self._db = db
        self._aead = AESGCM(key)

    def create_table(self, cursor: Cursor) -> None:
        cursor.execute(DESTINATION_TOKENS_SCHEMA)

    @staticmethod
    def _associated_data(secret_ref: str) -> bytes:
        return f"audit-destination-token:{secret_ref}".encode()

    def put(self, secret_ref: str, value: str) -> None:
        nonce = os.urandom(12)
        ciphertext = self._aead.encrypt(nonce, value.encode(), self._associated_data(secret_ref))
        with self._db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO audit_destination_tokens (secret_ref, nonce, ciphertext) VALUES (?, ?, ?)",
                (secret_ref, nonce, ciphertext),
            )

    def get(self, secret_ref: str) -> str | None:
        with self._db.read() as cursor:
            row = cursor.execute(
                "SELECT nonce, ciphertext FROM audit_destination_tokens WHERE secret_ref = ?", (secret_ref,)
            ).fetchone()
        if row is None:
            return None
        try:
            return self._aead.decrypt(
                bytes(row[0]), bytes(row[1]), self._associated_data(secret_ref)
            ).decode()
        except InvalidTag:
            return None

    def destroy(self, secret_ref: str) -> None:
        with self._db.transaction() as cursor:
            cursor.execute("DELETE FROM audit_destination_tokens WHERE secret_ref = ?", (secret_ref,))
