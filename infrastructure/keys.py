"""Keys derived from the one server secret: the token digest key, the CI-token vault key, the signing seed,
and the keys of the idempotency records (their digests and their encrypted answers).

Separate HKDF sub-keys mean that no two purposes ever share key material, and every process that shares
``DEPLOY_TOKENS_SECRET_KEY`` derives the same keys with nothing to store.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _subkey(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"deploy-tokens/v1", info=purpose).derive(secret)


class Keyring:
    def __init__(self, secret: bytes) -> None:
        # Keyed once; each digest copies the keyed state instead of re-running the key schedule.
        self._digest_base = hmac.new(_subkey(secret, b"token-digest"), digestmod=hashlib.sha256)
        self.vault_key = _subkey(secret, b"ci-token-vault")
        self.registry_seed = _subkey(secret, b"registry-signing")
        self.chain_key = _subkey(secret, b"audit-chain-checkpoints")
        # Encrypts what an Idempotency-Key replay hands back (a token value among it); the digest key names
        # the client-chosen key and the request without storing either.
        self.idempotency_key = _subkey(secret, b"idempotency-answers")
        self._idempotency_digest_base = hmac.new(
            _subkey(secret, b"idempotency-digest"), digestmod=hashlib.sha256
        )

    def digest(self, value: str) -> str:
        """HMAC-SHA256 of a token value: what events and read models hold instead of the value (behaviour [value]).

        Tokens carry 144 random bits, so a fast keyed hash is enough; a slow KDF would only slow the hot path.
        """
        return self.digest_bytes(value).hex()

    def digest_bytes(self, value: str) -> bytes:
        """``digest`` as its 32 bytes: the in-memory credential index keys tokens by these (half the memory of
        the hex text, and no conversion on the auth path)."""
        keyed = self._digest_base.copy()
        # surrogatepass: any text a caller can send (a lone surrogate from JSON) has a digest, never an error;
        # every value we issue is ASCII, so its digest is unchanged.
        keyed.update(value.encode("utf-8", "surrogatepass"))
        return keyed.digest()

    def idempotency_digest(self, text: str) -> str:
        """HMAC-SHA256 of an Idempotency-Key or of a canonical request: what the idempotency table holds.

        Keyed, so that a guessable key chosen by a client cannot be confirmed from a copy of the table.
        """
        keyed = self._idempotency_digest_base.copy()
        keyed.update(text.encode("utf-8", "surrogatepass"))
        return keyed.hexdigest()

    def __repr__(self) -> str:
        return "Keyring(<derived keys hidden>)"


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
