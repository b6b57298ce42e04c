"""The token digest is standard HMAC-SHA256 under the digest sub-key: stored digests never change meaning."""

import hashlib
import hmac
import secrets

from domain.token_values import generate_token
from infrastructure.keys import Keyring, _subkey


def test_digest_is_hmac_sha256_under_the_digest_subkey():
    secret = secrets.token_bytes(32)
    keyring = Keyring(secret)
    key = _subkey(secret, b"token-digest")
    for value in [generate_token(), "", "gldt-short", "é" * 300, secrets.token_urlsafe(200)]:
        assert keyring.digest(value) == hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def test_digest_of_a_known_value_is_stable():
    # Digests are stored in events and read models: a change here would orphan every issued token.
    # (The value hmac.new(subkey, value, sha256) gives.)
    expected = "ee54779e11446cb642f053c0cc307a7dee6809cac33b0893ba2901d47bb0f253"
    assert Keyring(b"s" * 32).digest("gldt-example") == expected
