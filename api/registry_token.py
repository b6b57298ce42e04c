"""Docker distribution token authentication: the signing key, scope parsing and the JWT for ``/jwt/auth``.

Pure functions only (no Flask, no database) so the rules that the registry enforces can be tested on
their own. The rules follow distribution v2.8.2 (``registry/auth/token``), which is what Debian ships
and what the service is verified against:

* the registry trusts the PEM certificate(s) in ``rootcertbundle`` and finds the signing key through
  the JWT header: ``x5c`` first, then ``jwk``, then ``kid``. We send ``x5c`` because it works on both
  v2.8.2 and v3.x (v3 changed ``kid`` from the libtrust fingerprint to the RFC 7638 thumbprint), and add
  the libtrust ``kid`` as a harmless extra;
* ``aud`` must be a JSON string (an array is rejected) and ``exp``/``nbf`` must be integers (a float is
  rejected), which is why the claims are built by hand here instead of from ``datetime`` values.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

__all__ = [
    "MAX_SCOPES",
    "MAX_SCOPE_LENGTH",
    "InvalidScope",
    "RegistrySigningKey",
    "RequestedScope",
    "decode_token",
    "derive_signing_key",
    "issue_token",
    "parse_scopes",
    "registry_error",
]

ALGORITHM = "ES256"

# Order of the P-256 group (SEC 2, secp256r1 "n"): a private scalar must lie in [1, n-1].
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_HKDF_INFO = b"registry-token-signing-key"
# 64 bits more than the order, so reducing modulo n-1 leaves a bias of about 2**-64 (FIPS 186-4 B.4.1).
_SCALAR_BYTES = 40
# A shorter secret would make the signing key, and therefore push access to every repository, guessable.
_MIN_SECRET_BYTES = 16

# Fixed so that every process derives byte-identical certificates; the registry checks the validity
# period, and a century means the bundle never needs rotating merely because time passed.
_NOT_BEFORE = datetime(2020, 1, 1, tzinfo=UTC)
_NOT_AFTER = datetime(2120, 1, 1, tzinfo=UTC)

# Claims that issue_token owns: letting extra_claims replace one would silently change who the token is
# for, what it grants or when it expires.
_REGISTERED_CLAIMS = frozenset({"iss", "aud", "sub", "exp", "nbf", "iat", "jti", "access"})
# GitLab backdates nbf by a few seconds so a registry whose clock is slightly behind still accepts a
# token that was just issued.
_NOT_BEFORE_SKEW_SECONDS = 5


@dataclass(frozen=True)
class RegistrySigningKey:
    """The token signer, plus the two header values the registry uses to find it."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate
    kid: str
    x5c: list[str]

    def certificate_pem(self) -> bytes:
        """The ``rootcertbundle`` contents the registry must be configured with."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key id distribution v2.x matches ``kid`` against (docker/libtrust ``keyIDFromCryptoKey``)."""
    der = _spki_der(public_key)
    # 30 bytes = 240 bits = exactly 48 base32 characters, so there is never padding to strip.
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


def derive_signing_key(secret: bytes, *, common_name: str = "deploy-token-service") -> RegistrySigningKey:
    """Derive the registry signing key and its self-signed certificate from the shared server secret.

    Deterministic by design: every API process in a cluster derives the same key and the same
    certificate bytes, so nothing has to be stored or distributed, and the PEM written into the
    registry's ``rootcertbundle`` stays valid as long as the secret does.

    ``secret`` may be the server secret itself or a sub-key of it; the HKDF ``info`` separates this key
    from every other key derived from the same secret.
    """
    if len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"the registry signing secret must be at least {_MIN_SECRET_BYTES} bytes")
    okm = HKDF(algorithm=hashes.SHA256(), length=_SCALAR_BYTES, salt=None, info=_HKDF_INFO).derive(secret)
    scalar = int.from_bytes(okm, "big") % (_P256_ORDER - 1) + 1
    private_key = ec.derive_private_key(scalar, ec.SECP256R1())
    public_key = private_key.public_key()

    # A random serial would make the certificate differ between processes; "| 1" keeps it positive.
    digest = hashlib.sha256(b"registry-token-certificate-serial\0" + _spki_der(public_key)).digest()
    serial = int.from_bytes(digest[:16], "big") | 1
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        # The certificate is its own trust anchor in the registry's bundle; marking it a CA (as
        # `openssl req -x509`, and so GitLab's Omnibus, does) keeps strict chain verifiers happy too.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    # RFC 6979 nonces: without them the certificate's signature, and so its bytes, would differ on
    # every derivation even though the key is the same.
    certificate = builder.sign(private_key, hashes.SHA256(), ecdsa_deterministic=True)
    der = certificate.public_bytes(serialization.Encoding.DER)
    return RegistrySigningKey(
        private_key=private_key,
        certificate=certificate,
        kid=libtrust_key_id(public_key),
        x5c=[base64.b64encode(der).decode("ascii")],
    )


class InvalidScope(ValueError):
    """A ``scope`` value that does not follow the distribution token-scope grammar (answer 400)."""


@dataclass(frozen=True)
class RequestedScope:
    """One ``type:name:actions`` resource scope as a client asked for it (nothing is granted yet)."""

    type: str
    name: str
    actions: tuple[str, ...]


# The grammar from the distribution token-scope spec, rewritten so Python's backtracking engine stays
# linear on hostile input: the spec's separator `[-]*` may match nothing, which turns
# `alnum+ (sep alnum+)*` into the exponential `(a+)+` shape. Requiring at least one separator character
# matches the same language, because two adjacent alphanumeric runs are already one run.
_TYPE_RE = re.compile(r"[a-z0-9]+(?:\([a-z0-9]+\))?")
_ACTION_RE = re.compile(r"[a-z]+|\*")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_COMPONENT = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_HOSTNAME = rf"{_HOST_COMPONENT}(?:\.{_HOST_COMPONENT})*(?::[0-9]+)?"
_NAME_RE = re.compile(rf"(?:{_HOSTNAME}/)?{_COMPONENT}(?:/{_COMPONENT})*")
# distribution's reference.NameTotalLengthMax: the registry refuses longer names anyway, and the cap
# bounds the work a single scope can cost before any regular expression runs.
_NAME_MAX_LENGTH = 255
# Error messages echo the client's value; a cap keeps a huge query string out of the response and logs.
_ECHO_MAX_LENGTH = 200
# Scopes in one request: Docker asks for one or two (``skopeo delete`` two), so 32 is generous. Every scope
# costs a decision, an activity row and an entry in the signed JWT; the cap bounds all three per request.
MAX_SCOPES = 32
# One ``type:name:actions`` entry: a name of at most 255 characters leaves ample room for type and actions.
MAX_SCOPE_LENGTH = 512


def _echo(value: str) -> str:
    return repr(value if len(value) <= _ECHO_MAX_LENGTH else value[:_ECHO_MAX_LENGTH] + "...")


def _parse_one(raw: str) -> RequestedScope:
    # The name may carry a registry host with a port ("localhost:5000/app"), so the type is everything
    # before the first colon and the actions everything after the last one.
    type_, sep1, rest = raw.partition(":")
    name, sep2, actions_part = rest.rpartition(":")
    if not sep1 or not sep2:
        raise InvalidScope(f"scope {_echo(raw)} must have the form type:name:actions")
    if not _TYPE_RE.fullmatch(type_):
        raise InvalidScope(f"scope {_echo(raw)} has an invalid resource type")
    if not name or len(name) > _NAME_MAX_LENGTH or not _NAME_RE.fullmatch(name):
        raise InvalidScope(
            f"scope {_echo(raw)} has an invalid resource name "
            f"(lower-case path components, at most {_NAME_MAX_LENGTH} characters)"
        )
    actions = actions_part.split(",")
    if not all(_ACTION_RE.fullmatch(action) for action in actions):
        raise InvalidScope(f"scope {_echo(raw)} has an invalid action list (comma-separated, e.g. pull,push)")
    # Clients repeat actions harmlessly; the granted access list should not.
    return RequestedScope(type=type_, name=name, actions=tuple(dict.fromkeys(actions)))


def parse_scopes(values: Iterable[str]) -> list[RequestedScope]:
    """Parse every ``scope`` query parameter, in request order, each distinct scope once.

    Docker clients repeat the parameter (``scope=a&scope=b``) while OAuth-style clients put several
    scopes in one space-separated value (RFC 6749 section 3.3); GitLab accepts both, and so does this.
    Empty values yield nothing, as GitLab treats ``scope=`` like an absent scope (``skopeo login``).
    More than ``MAX_SCOPES`` entries, or one longer than ``MAX_SCOPE_LENGTH``, is refused before any entry
    is parsed, so a hostile request costs no more than a well-behaved one.
    """
    if isinstance(values, str | bytes):
        # A bare string is an Iterable[str] of characters, which would report every letter as malformed.
        raise TypeError("parse_scopes expects the list of scope values, not a single string")
    entries: list[str] = []
    for value in values:
        # Longer than the most a well-formed request can send (every entry at the longest, one space apart):
        # refused before it is split, whatever it holds.
        if len(value) > MAX_SCOPES * (MAX_SCOPE_LENGTH + 1):
            raise InvalidScope(f"too many or too long scopes (at most {MAX_SCOPES} per request)")
        entries.extend(value.split())
        if len(entries) > MAX_SCOPES:
            raise InvalidScope(f"too many scopes: at most {MAX_SCOPES} per request")
    for raw in entries:
        if len(raw) > MAX_SCOPE_LENGTH:
            raise InvalidScope(f"scope {_echo(raw)} is longer than {MAX_SCOPE_LENGTH} characters")
    # A repeated scope would be decided, recorded and granted twice; asking twice means asking once.
    return list(dict.fromkeys(_parse_one(raw) for raw in entries))


def registry_error(code: str, message: str) -> dict[str, object]:
    """The error body the registry API uses, so clients print the message instead of a parse error."""
    return {"errors": [{"code": code, "message": message}]}


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC); a naive datetime has no defined instant")
    return now.astimezone(UTC)


def _access_entry(entry: Mapping[str, object]) -> dict[str, object]:
    # The registry unmarshals entries into typed Go structs and answers 401 on a mismatch; failing here
    # points at the bug instead of at the registry.
    type_, name, actions = entry.get("type"), entry.get("name"), entry.get("actions")
    if not isinstance(type_, str) or not type_ or not isinstance(name, str) or not name:
        raise ValueError(f"access entry needs non-empty string 'type' and 'name': {dict(entry)!r}")
    if isinstance(actions, str | bytes) or not isinstance(actions, Sequence):
        raise ValueError(f"access entry 'actions' must be a list of strings: {dict(entry)!r}")
    if not all(isinstance(action, str) for action in actions):
        raise ValueError(f"access entry 'actions' must be a list of strings: {dict(entry)!r}")
    return {**entry, "type": type_, "name": name, "actions": list(actions)}


def issue_token(
    key: RegistrySigningKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    access: Sequence[Mapping[str, object]],
    now: datetime,
    ttl_seconds: int = 300,
    extra_claims: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Sign a registry bearer token and wrap it in the token-server JSON response.

    ``access`` is what was *granted*, not what was asked for: the registry trusts it as is. ``token`` and
    ``access_token`` carry the same JWT because Docker clients read the first and OAuth clients the
    second.
    """
    if not issuer or not audience:
        raise ValueError("issuer and audience must be non-empty: the registry compares them exactly")
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be a positive integer")
    extra = dict(extra_claims or {})
    clashing = sorted(_REGISTERED_CLAIMS & extra.keys())
    if clashing:
        raise ValueError(f"extra_claims must not override registered claims: {', '.join(clashing)}")

    issued = _utc(now).replace(microsecond=0)
    iat = int(issued.timestamp())
    claims: dict[str, object] = {
        **extra,
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": iat,
        "nbf": iat - _NOT_BEFORE_SKEW_SECONDS,
        "exp": iat + ttl_seconds,
        "jti": str(uuid.uuid4()),
        "access": [_access_entry(entry) for entry in access],
    }
    token = jwt.encode(
        claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid, "x5c": list(key.x5c)}
    )
    return {
        "token": token,
        "access_token": token,
        "expires_in": ttl_seconds,
        "issued_at": issued.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _int_claim(claims: Mapping[str, object], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    # bool is an int subclass, and a float is what distribution 2.8.2 rejects: check like the registry.
    if isinstance(value, bool) or not isinstance(value, int):
        raise jwt.InvalidTokenError(f"claim {name!r} must be an integer")
    return value


def decode_token(
    key: RegistrySigningKey,
    token: str,
    *,
    audience: str,
    issuer: str,
    now: datetime,
    leeway_seconds: int = 0,
) -> dict[str, object]:
    """Verify a token the way the registry would, against this key's certificate, and return its claims.

    Time is checked against ``now`` rather than the wall clock so callers (and tests) control it.
    Raises a ``jwt.InvalidTokenError`` subclass when the token must not be trusted.
    """
    at = int(_utc(now).timestamp())
    public_key = key.certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise TypeError("the registry signing certificate must hold an EC key")
    claims: dict[str, object] = jwt.decode(
        token,
        public_key,
        algorithms=[ALGORITHM],
        audience=audience,
        issuer=issuer,
        options={
            "require": ["iss", "aud", "exp"],
            # The registry rejects an array "aud"; so must introspection, or it would vouch for tokens
            # the registry refuses.
            "strict_aud": True,
            "verify_exp": False,
            "verify_nbf": False,
            "verify_iat": False,
        },
    )
    exp = _int_claim(claims, "exp", required=True)
    nbf = _int_claim(claims, "nbf", required=False)
    _int_claim(claims, "iat", required=False)
    if exp is not None and at >= exp + leeway_seconds:
        raise jwt.ExpiredSignatureError("token has expired")
    if nbf is not None and at < nbf - leeway_seconds:
        raise jwt.ImmatureSignatureError("token is not yet valid")
    return claims
