"""The registry signing key checked by tools outside Python: another process derives the same certificate, and
openssl accepts it as a trust anchor and computes the same libtrust key id."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api.registry_token import RegistrySigningKey, derive_signing_key

from ..registry_signing import SECRET

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def key() -> RegistrySigningKey:
    return derive_signing_key(SECRET)


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed")
    return path


def test_same_secret_gives_byte_identical_certificate_in_another_process(key: RegistrySigningKey) -> None:
    script = (
        "import sys; from api.registry_token import derive_signing_key; "
        f"sys.stdout.buffer.write(derive_signing_key({SECRET!r}).certificate_pem())"
    )
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, check=True)
    assert other.stdout == key.certificate_pem()


def test_certificate_is_its_own_trust_anchor_for_openssl(key: RegistrySigningKey, tmp_path: Path) -> None:
    pem = tmp_path / "token.crt"
    pem.write_bytes(key.certificate_pem())
    result = subprocess.run(
        [require_tool("openssl"), "verify", "-CAfile", str(pem), str(pem)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kid_matches_openssl_libtrust_pipeline(key: RegistrySigningKey) -> None:
    openssl = require_tool("openssl")
    require_tool("base32")
    pipeline = (
        f"{openssl} x509 -pubkey -noout | {openssl} pkey -pubin -outform DER"
        f" | {openssl} dgst -sha256 -binary | head -c 30 | base32"
    )
    result = subprocess.run(
        ["sh", "-c", pipeline], input=key.certificate_pem(), capture_output=True, check=True
    )
    encoded = result.stdout.decode("ascii").strip()
    assert ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4)) == key.kid
