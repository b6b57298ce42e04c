"""Keys derived from the one server secret: the token digest key, the CI-token vault key, the signing seed.

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


_SHA256_BLOCK = 64


class Keyring:
    def __init__(self, secret: bytes) -> None:
        digest_key = _subkey(secret, b"token-digest")  # 32 bytes: shorter than a block, so used as is
        # HMAC-SHA256 (RFC 2104) with the states after the inner and outer padded key computed once, as
        # RFC 2104 section 4 suggests: a digest then copies two SHA-256 states, half the cost of copying an
        # OpenSSL HMAC context (which copies three), and this runs on every auth check.
        padded = digest_key.ljust(_SHA256_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))
        self.vault_key = _subkey(secret, b"ci-token-vault")
        self.registry_seed = _subkey(secret, b"registry-signing")
        self.chain_key = _subkey(secret, b"audit-chain-checkpoints")

    def digest(self, value: str) -> str:
        """HMAC-SHA256 of a token value: what events and read models hold instead of the value (R7).

        Tokens carry 144 random bits, so a fast keyed hash is enough; a slow KDF would only slow the hot path.
        """
        inner = self._inner.copy()
        inner.update(value.encode("utf-8"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return "Keyring(<derived keys hidden>)"


def digests_match(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
