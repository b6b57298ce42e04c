"""Verifying OIDC ID tokens of trusted CI issuers (behaviour [federation]): GitLab CI ``id_tokens:``, GitHub
Actions, any issuer that publishes OpenID Connect discovery.

An ID token is a JWT its issuer signed with a key it publishes in a JWKS, found through the discovery document
``{iss}/.well-known/openid-configuration``. Anyone may present one (every job of gitlab.com or GitHub gets
them), so everything in it is hostile until its signature is checked, and the checks run cheapest first:
size and shape, the algorithm (RS256 or ES256 only: ``none`` and HS256 signed with a public key are refused
before any key is looked at), then the issuer against the caller's trusted list, *before* any request, so an
ID token of an issuer nobody trusts never makes this service fetch anything from anywhere.

Keys rotate: an issuer publishes a new key and starts signing with it, so a token naming a key the cached JWKS
does not hold makes it fetch the JWKS again. That refresh is rate limited per issuer (``min_refresh_interval``
since the last fetch), and so is asking again after a failed fetch: otherwise a flood of tokens with random
``kid`` values, or with the ``iss`` of an issuer that is down, would turn into a flood of outbound requests
and gunicorn threads waiting on them. Discovery and JWKS are cached for ``cache_lifespan``; one lock per
issuer makes concurrent requests wait for one fetch instead of starting their own, and one deadline
(``http_timeout``) bounds a verification's waiting, fetches and that lock included, whatever the issuer does
(refused connections, a 500, an answer that never comes or trickles in). The JWKS is fetched and parsed by
PyJWT's ``PyJWKClient`` (its cache and key parsing), over the fetch of this module, which caps answers at
1 MiB, never follows redirects and wants ``https`` unless ``allow_insecure``.

Times are checked against the injected clock, not PyJWT's wall clock, with ``leeway`` either side. Audiences
are returned, not matched: each trust policy names its own.
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import ssl
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlsplit

import jwt
from jwt import PyJWK, PyJWKClient, PyJWKSet
from jwt.exceptions import InvalidAlgorithmError, InvalidKeyError, PyJWTError
from jwt.types import Options

from infrastructure.outbound_http import PinnedConnection, connect_within, deadline_watchdog, resolve_within

ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "ES256")
MAX_TOKEN_CHARS: Final = 16 * 1024
MAX_RESPONSE_BYTES: Final = 1024 * 1024
REQUIRED_CLAIMS: Final[tuple[str, ...]] = ("iss", "sub", "aud", "exp", "iat", "jti")
DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
USER_AGENT: Final = "deploy-tokens-oidc"
_SHOWN_CHARS: Final = 100
_COMPACT_CHARACTERS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
# The signature and nothing else: PyJWT would check exp, nbf and iat against the wall clock, and the claims
# are checked below against the injected clock. Keys shorter than PyJWT's minimum (RSA under 2048 bits) fail.
_SIGNATURE_ONLY: Final[Options] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
    "enforce_minimum_key_length": True,
}

RefusalReason = Literal[
    "malformed",
    "issuer_not_allowed",
    "algorithm_not_allowed",
    "unknown_key",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issued_in_future",
    "missing_claim",
]


class Clock(Protocol):
    """Anything that tells the time (the runtime's clock, which tests control)."""

    def now(self) -> datetime: ...


class IdTokenRefused(Exception):
    """The ID token is not acceptable: ``reason`` is a code for metrics and the OAuth answer, ``detail`` a
    sentence for the audit record (never the token; echoed values are capped and printable)."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RefusalReason = reason
        self.detail = detail


class IssuerUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be had: the token may be fine, try again later."""

    def __init__(self, issuer: str, detail: str) -> None:
        super().__init__(f"{shown(issuer)}: {detail}")
        self.issuer = issuer
        self.detail = detail


@dataclass(frozen=True)
class VerifiedIdToken:
    issuer: str
    subject: str
    audiences: tuple[str, ...]
    token_id: str  # the ``jti``
    expires_at: datetime
    issued_at: datetime
    claims: Mapping[str, Any]  # every claim of the payload, read-only


def shown(value: object) -> str:
    """``value`` quoted for a log line or an audit record: printable characters only, at most ~100 of them
    (an issuer, a ``kid`` or an algorithm comes from the token, which anyone writes)."""
    text = value if isinstance(value, str) else repr(value)
    printable = "".join(character for character in text[: 4 * _SHOWN_CHARS] if character.isprintable())
    if len(printable) > _SHOWN_CHARS or len(text) > 4 * _SHOWN_CHARS:
        printable = printable[:_SHOWN_CHARS] + "…"
    return f"'{printable}'"


# Fetching ---------------------------------------------------------------------------------------------------


class _Unreachable(Exception):
    """A fetch failed; the message says how, in words safe for logs."""


def _resolved(host: str, port: int, seconds: float) -> str:
    """The first address ``host`` resolves to, within ``seconds``."""
    try:
        return resolve_within(host, port, seconds, thread_name="oidc-resolve")
    except TimeoutError:
        raise _Unreachable("timed out resolving the host name") from None
    except OSError:
        raise _Unreachable("the host name does not resolve") from None


def _fetch_json(url: str, *, deadline: float, allow_insecure: bool, tls: ssl.SSLContext | None = None) -> Any:
    """GET ``url`` and parse its JSON answer, all of it before ``deadline`` (``time.monotonic()``): name
    resolution, connecting, TLS, the answer however slowly it comes. Only a 200 of at most 1 MiB counts;
    redirects are failures (an issuer's documents do not move, and a redirect could lead from https to http).
    Raises ``_Unreachable``."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _Unreachable("not a URL") from None
    if parts.scheme != "https" and not (allow_insecure and parts.scheme == "http"):
        raise _Unreachable("not an https URL")
    if not parts.hostname:
        raise _Unreachable("no host in the URL")
    secure = parts.scheme == "https"
    port = port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: PinnedConnection | None = None
    try:
        address = _resolved(parts.hostname, port, deadline - time.monotonic())
        connection = connect_within(parts.hostname, address, port, secure=secure, deadline=deadline, tls=tls)
        with deadline_watchdog(connection.sock, deadline):
            connection.request(
                "GET",
                target,
                headers={"Accept": "application/json", "User-Agent": USER_AGENT, "Connection": "close"},
            )
            response = connection.getresponse()
            if response.status != 200:
                raise _Unreachable(f"HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared is not None and declared.strip().isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise _Unreachable(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
            body = response.read(MAX_RESPONSE_BYTES + 1)
            if time.monotonic() >= deadline:
                raise TimeoutError
        if len(body) > MAX_RESPONSE_BYTES:
            raise _Unreachable(f"the answer is larger than {MAX_RESPONSE_BYTES} bytes")
    except _Unreachable:
        raise
    except (OSError, http.client.HTTPException, ValueError) as error:
        if time.monotonic() >= deadline or isinstance(error, TimeoutError):
            raise _Unreachable("timed out") from None
        raise _Unreachable(_described(error)) from None
    finally:
        if connection is not None:
            connection.close()
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _Unreachable("the answer is not JSON") from None


def _described(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLError):
        return f"TLS error ({error.reason or type(error).__name__})"
    return type(error).__name__


class _JwksClient(PyJWKClient):
    """PyJWT's JWKS client (its cache and key parsing) over this module's fetch; remembers when it last
    fetched, which is what the refresh on an unknown ``kid`` is rate limited by."""

    def __init__(self, uri: str, *, fetch: Callable[[str], Any], lifespan: timedelta) -> None:
        super().__init__(uri, cache_jwk_set=True, lifespan=lifespan.total_seconds(), cooldown_duration=0)
        self._fetch = fetch
        self.fetched_at = -math.inf

    def fetch_data(self) -> Any:
        data = self._fetch(self.uri)
        self.fetched_at = time.monotonic()
        return data


@dataclass
class _IssuerState:
    """What is known about one issuer; every field is read and written under ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    jwks: _JwksClient | None = None
    discovered_at: float = -math.inf
    failed_at: float = -math.inf
    failure: str = ""
    deadline: float = 0.0  # of the verification holding the lock


# Verifying --------------------------------------------------------------------------------------------------


class IdTokenVerifier:
    """Verifies ID tokens for the exchange; one per process, shared by its threads."""

    def __init__(
        self,
        *,
        clock: Clock,
        leeway: timedelta = timedelta(seconds=60),
        http_timeout: float = 5.0,
        cache_lifespan: timedelta = timedelta(minutes=10),
        min_refresh_interval: timedelta = timedelta(seconds=10),
        allow_insecure: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if cache_lifespan <= timedelta(0):
            raise ValueError("cache_lifespan must be positive")
        self.clock = clock
        self.leeway = leeway
        self.http_timeout = http_timeout
        self.cache_lifespan = cache_lifespan
        self.min_refresh_interval = min_refresh_interval
        self.allow_insecure = allow_insecure
        self.tls = tls  # None: the system's trusted certificates
        self._issuers: dict[str, _IssuerState] = {}
        self._issuers_lock = threading.Lock()

    def verify(self, token: str, *, allowed_issuers: Collection[str]) -> VerifiedIdToken:
        """The verified token, or ``IdTokenRefused`` (the token is not acceptable) or ``IssuerUnavailable``
        (its issuer's keys could not be had). No other exception, whatever ``token`` holds."""
        header, unverified = _unverified(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
            raise IdTokenRefused(
                "algorithm_not_allowed",
                f"the algorithm {shown(algorithm)} is not accepted (RS256 or ES256 only)",
            )
        issuer = unverified.get("iss")
        if not isinstance(issuer, str):
            raise IdTokenRefused("issuer_not_allowed", "the token names no issuer")
        if issuer not in allowed_issuers:
            raise IdTokenRefused("issuer_not_allowed", f"the issuer {shown(issuer)} is not trusted")
        kid = header.get("kid")  # PyJWT has checked it is a string when present
        key = self._signing_key(issuer, kid if isinstance(kid, str) else None)
        try:
            claims = jwt.decode(token, key=key, algorithms=[algorithm], options=_SIGNATURE_ONLY)
        except InvalidAlgorithmError:
            raise IdTokenRefused(
                "bad_signature", f"the key {shown(key.key_id)} is not an {algorithm} key"
            ) from None
        except InvalidKeyError:
            raise IdTokenRefused("bad_signature", f"the key {shown(key.key_id)} is too weak") from None
        except Exception:  # PyJWT's InvalidSignatureError, or whatever a hostile signature makes it raise
            raise IdTokenRefused("bad_signature", "the signature does not verify") from None
        return self._checked(claims)

    # Keys -----------------------------------------------------------------------------------------------

    def _signing_key(self, issuer: str, kid: str | None) -> PyJWK:
        state = self._state(issuer)
        deadline = time.monotonic() + self.http_timeout
        if not state.lock.acquire(timeout=self.http_timeout):
            raise IssuerUnavailable(issuer, f"its keys were not fetched within {self.http_timeout:g} s")
        try:
            state.deadline = deadline
            client = self._jwks_client(state, issuer)
            key = _key_for(self._key_set(state, issuer, client, refresh=False), kid)
            # A new kid is how a rotation shows: fetch again, but not more often than the interval allows.
            if key is None and kid is not None and self._may_fetch(client.fetched_at):
                key = _key_for(self._key_set(state, issuer, client, refresh=True), kid)
        finally:
            state.lock.release()
        if key is not None:
            return key
        if kid is None:
            raise IdTokenRefused(
                "unknown_key", "the token names no key, and the issuer does not publish exactly one"
            )
        raise IdTokenRefused("unknown_key", f"the issuer publishes no key {shown(kid)}")

    def _state(self, issuer: str) -> _IssuerState:
        with self._issuers_lock:
            return self._issuers.setdefault(issuer, _IssuerState())

    def _may_fetch(self, last: float) -> bool:
        return time.monotonic() - last >= self.min_refresh_interval.total_seconds()

    def _jwks_client(self, state: _IssuerState, issuer: str) -> _JwksClient:
        """The issuer's JWKS client, after its discovery document when the cached one is too old."""
        if (
            state.jwks is not None
            and time.monotonic() - state.discovered_at < self.cache_lifespan.total_seconds()
        ):
            return state.jwks
        document = self._fetch(state, issuer, issuer.rstrip("/") + DISCOVERY_PATH, "discovery")
        if not isinstance(document, dict):
            raise self._failed(state, issuer, "discovery: the document is not a JSON object")
        if document.get("issuer") != issuer:
            advertised = shown(document.get("issuer"))
            raise self._failed(state, issuer, f"discovery: the document names the issuer {advertised}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise self._failed(state, issuer, "discovery: the document names no jwks_uri")
        if state.jwks is None or state.jwks.uri != jwks_uri:
            fetch = functools.partial(self._fetch, state, issuer, what="JWKS")
            try:
                state.jwks = _JwksClient(jwks_uri, fetch=fetch, lifespan=self.cache_lifespan)
            except PyJWTError:  # a scheme other than http and https
                raise self._failed(state, issuer, "discovery: the jwks_uri is not an https URL") from None
        state.discovered_at = time.monotonic()
        return state.jwks

    def _key_set(self, state: _IssuerState, issuer: str, client: _JwksClient, *, refresh: bool) -> PyJWKSet:
        try:
            return client.get_jwk_set(refresh=refresh)
        except IssuerUnavailable:
            raise
        except Exception:  # PyJWKSetError and whatever else a hostile JWKS makes PyJWT raise
            raise self._failed(state, issuer, "JWKS: no usable signing key in it") from None

    def _fetch(self, state: _IssuerState, issuer: str, url: str, what: str) -> Any:
        """One fetch for ``issuer``, unless one failed moments ago (then its failure, without asking again)."""
        if not self._may_fetch(state.failed_at):
            raise IssuerUnavailable(issuer, f"{state.failure} (moments ago, not asked again yet)")
        try:
            return _fetch_json(url, deadline=state.deadline, allow_insecure=self.allow_insecure, tls=self.tls)
        except _Unreachable as error:
            raise self._failed(state, issuer, f"{what}: {error}") from None

    def _failed(self, state: _IssuerState, issuer: str, detail: str) -> IssuerUnavailable:
        state.failed_at = time.monotonic()
        state.failure = detail
        return IssuerUnavailable(issuer, detail)

    # Claims -----------------------------------------------------------------------------------------------

    def _checked(self, claims: dict[str, Any]) -> VerifiedIdToken:
        for name in REQUIRED_CLAIMS:
            if claims.get(name) is None:
                raise IdTokenRefused("missing_claim", f"the {name} claim is missing")
        subject, token_id = _text(claims, "sub"), _text(claims, "jti")
        audiences = _audiences(claims["aud"])
        expires_at, issued_at = _instant(claims, "exp"), _instant(claims, "iat")
        not_before = _instant(claims, "nbf") if claims.get("nbf") is not None else None
        now = self.clock.now()
        if expires_at <= now - self.leeway:
            raise IdTokenRefused("expired", f"the token expired at {_iso(expires_at)}")
        if not_before is not None and not_before > now + self.leeway:
            raise IdTokenRefused("not_yet_valid", f"the token is not valid before {_iso(not_before)}")
        if issued_at > now + self.leeway:
            raise IdTokenRefused("issued_in_future", f"the token claims to be issued at {_iso(issued_at)}")
        return VerifiedIdToken(
            issuer=str(claims["iss"]),
            subject=subject,
            audiences=audiences,
            token_id=token_id,
            expires_at=expires_at,
            issued_at=issued_at,
            claims=MappingProxyType(claims),
        )


def _unverified(token: object) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and payload, read without any key: only to choose the checks and the key."""
    if not isinstance(token, str):
        raise IdTokenRefused("malformed", "the token is not text")
    if len(token) > MAX_TOKEN_CHARS:
        raise IdTokenRefused("malformed", f"the token is longer than {MAX_TOKEN_CHARS} characters")
    segments = token.split(".")
    # Compact serialisation: three base64url segments without padding; only an unsigned token has no third.
    if len(segments) != 3 or not segments[0] or not segments[1] or not set(token) <= _COMPACT_CHARACTERS:
        raise IdTokenRefused("malformed", "the token is not three base64url segments joined by dots")
    try:
        decoded = jwt.decode_complete(token, options={"verify_signature": False})
        header, payload = decoded["header"], decoded["payload"]
    except Exception:  # PyJWT's DecodeError mostly; whatever else hostile input finds, it is not a crash
        raise IdTokenRefused("malformed", "the token's header or payload is not a JSON object") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise IdTokenRefused("malformed", "the token's header or payload is not a JSON object")
    return header, payload


def _key_for(key_set: PyJWKSet, kid: str | None) -> PyJWK | None:
    """The signing key named ``kid``; a token naming none may use the issuer's only key."""
    signing = [key for key in key_set.keys if key.public_key_use in ("sig", None)]
    if kid is None:
        return signing[0] if len(signing) == 1 else None
    return next((key for key in signing if key.key_id == kid), None)


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise IdTokenRefused("missing_claim", f"the {name} claim is not a non-empty string")
    if not value.isprintable():  # it names a stream and lands in audit records (behaviour [federation])
        raise IdTokenRefused("malformed", f"the {name} claim holds control characters")
    return value


def _audiences(value: object) -> tuple[str, ...]:
    """``aud`` is one string or a list of them (RFC 7519, 4.1.3)."""
    if isinstance(value, str) and value:
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) and item for item in value):
        return tuple(value)
    raise IdTokenRefused("missing_claim", "the aud claim is not a string or a list of strings")


def _instant(claims: Mapping[str, Any], name: str) -> datetime:
    """A NumericDate claim as a UTC datetime. ``true`` is an int to Python, not a time to anyone."""
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IdTokenRefused("missing_claim", f"the {name} claim is not a number")
    try:
        if not math.isfinite(value):
            raise ValueError
        return datetime.fromtimestamp(value, UTC)
    except (ValueError, OverflowError, OSError):
        raise IdTokenRefused("malformed", f"the {name} claim is not a time") from None


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
