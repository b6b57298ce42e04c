"""A real OpenID Connect issuer on loopback, for the tests of federation (behaviour [federation]): what GitLab
CI's ``id_tokens:`` and GitHub Actions are to the service, over real HTTP.

``LocalIssuer`` serves a discovery document and a JWKS from a ``ThreadingHTTPServer`` on a free port of
127.0.0.1 (plain HTTP, or HTTPS with a self-signed certificate: ``tls=True`` and ``client_tls()``), signs ID
tokens with its keys (an RSA 2048 key for RS256 and a P-256 key for ES256), rotates them, counts the requests
it gets by path and misbehaves on demand::

    with LocalIssuer(path="/gitlab") as issuer:
        token = issuer.mint(gitlab_ci_claims(project_path="group/project"), audience="deploy-tokens")
        ...  # trust issuer.issuer (http: DEPLOY_TOKENS_OIDC_ALLOW_INSECURE=true) and exchange the token
        issuer.rotate()  # a new key signs from now on; the old one leaves the JWKS
        issuer.fail_with(500)  # every request answers 500 until heal()
        assert issuer.requests[issuer.jwks_path] == 2

``gitlab_ci_claims`` and ``github_actions_claims`` are the claim sets those CI systems put into their ID
tokens, for policies and tests that read them.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .tls import LocalCertificate

ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "ES256")
DEFAULT_AUDIENCE: Final = "deploy-tokens"
JWKS_PATH: Final = "/oauth/discovery/keys"  # where GitLab publishes its keys
_CURRENT: Final = object()  # mint's default kid: that of the issuer's current key for the algorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SigningKey:
    """A private key, its algorithm and its ``kid``."""

    kid: str
    alg: str
    private: PrivateKey

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        """The public key as the JWKS publishes it."""
        public = self.private.public_key()
        encoded = (
            RSAAlgorithm.to_jwk(public, as_dict=True)
            if isinstance(public, rsa.RSAPublicKey)
            else ECAlgorithm.to_jwk(public, as_dict=True)
        )
        return {**encoded, "kid": self.kid, "alg": self.alg, "use": "sig"}


def new_key(alg: str = "RS256", kid: str | None = None) -> SigningKey:
    """A fresh key for ``alg`` (RS256: RSA 2048; ES256: P-256)."""
    if alg == "RS256":
        private: PrivateKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"the local issuer signs with {' or '.join(ALGORITHMS)}, not {alg}")
    return SigningKey(kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}", alg, private)


def segment(data: bytes | Mapping[str, Any] | list[Any]) -> str:
    """One base64url segment of a compact JWT (JSON for a mapping or list), for tests that forge tokens."""
    raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


@dataclass
class _Faults:
    status: int | None = None
    stall: float = 0.0


class LocalIssuer:
    """An OIDC issuer at ``http://127.0.0.1:<port><path>`` (``https`` with ``tls``), serving its discovery
    document and JWKS until the ``with`` block ends.

    ``algorithms`` says which keys it has and publishes (one per algorithm). The fault modes apply to every
    request until ``heal()``: ``fail_with(status)`` answers that status, ``stall(seconds)`` waits that long
    before answering, ``advertise(**fields)`` changes fields of the discovery document, ``serve_raw(path,
    body)`` answers ``path`` with those bytes."""

    def __init__(self, *, path: str = "", algorithms: Iterable[str] = ALGORITHMS, tls: bool = False) -> None:
        if path and (not path.startswith("/") or path.endswith("/")):
            raise ValueError("path is empty or starts with '/' and does not end with one, as in '/gitlab'")
        self.path = path
        self.algorithms = tuple(algorithms)
        self.tls = tls
        self._current = {alg: new_key(alg) for alg in self.algorithms}
        self._published = list(self._current.values())
        self._requests: Counter[str] = Counter()
        self._faults = _Faults()
        self._advertised: dict[str, Any] = {}
        self._raw: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._certificate: LocalCertificate | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    # Serving ----------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalIssuer:
        server = _Server(("127.0.0.1", 0), _handler_for(self))
        if self.tls:
            server.socket = self._tls_context().wrap_socket(server.socket, server_side=True)
        self._server = server
        # A short poll: stopping waits for the serving loop to notice, at every test's end.
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.05,), name="local-oidc-issuer", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop answering: connections are refused from now on (an issuer that is down)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the issuer serves only inside its with block"
        return int(self._server.server_address[1])

    @property
    def issuer(self) -> str:
        """The ``iss`` of its tokens, and what a trusted-issuer list names."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{self.path}"

    @property
    def discovery_path(self) -> str:
        return f"{self.path}/.well-known/openid-configuration"

    @property
    def jwks_path(self) -> str:
        return f"{self.path}{JWKS_PATH}"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer.removesuffix(self.path)}{self.jwks_path}"

    @property
    def requests(self) -> Counter[str]:
        """How many requests each path got so far (a copy)."""
        with self._lock:
            return Counter(self._requests)

    def discovery_document(self) -> dict[str, Any]:
        document = {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": list(self.algorithms),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"],
        }
        with self._lock:
            return {**document, **self._advertised}

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [key.jwk() for key in self._published]}

    # Keys and tokens -------------------------------------------------------------------------------------

    def current_key(self, alg: str = "RS256") -> SigningKey:
        with self._lock:
            return self._current[alg]

    def rotate(self, *, keep_old: bool = False, to: Iterable[SigningKey] = ()) -> None:
        """A new current key for every algorithm (``to``'s, made beforehand when a test times what follows,
        else fresh ones); the old ones leave the JWKS unless ``keep_old``."""
        given = {key.alg: key for key in to}
        fresh = {alg: given.get(alg) or new_key(alg) for alg in self.algorithms}
        with self._lock:
            self._published = [*(self._published if keep_old else []), *fresh.values()]
            self._current = fresh

    @staticmethod
    def foreign_key(alg: str = "RS256") -> SigningKey:
        """A key this issuer never publishes (its tokens must fail their signature check)."""
        return new_key(alg, kid="foreign")

    def payload(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        now: dt.datetime | None = None,
        drop: Iterable[str] = (),
        audience: str | list[str] = DEFAULT_AUDIENCE,
    ) -> dict[str, Any]:
        """The claims ``mint`` signs: ``iss``, ``sub``, ``aud``, ``exp``, ``iat``, ``nbf`` and a fresh ``jti``
        by default, then ``claims`` over them, then the names in ``drop`` taken out."""
        issued = int((now or dt.datetime.now(dt.UTC)).timestamp())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": "local-issuer-subject",
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(lifetime.total_seconds()),
            "jti": str(uuid.uuid4()),
            **(claims or {}),
        }
        for name in drop:
            payload.pop(name, None)
        return payload

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        alg: str = "RS256",
        kid: str | object | None = _CURRENT,
        key: SigningKey | None = None,
        lifetime: dt.timedelta = dt.timedelta(minutes=5),
        now: dt.datetime | None = None,
        drop: Iterable[str] = (),
        audience: str | list[str] = DEFAULT_AUDIENCE,
    ) -> str:
        """An ID token of this issuer (see ``payload``), signed with its current ``alg`` key, or with ``key``
        (``foreign_key()``, say) while still naming the current key's ``kid`` unless told otherwise; ``kid``
        None leaves the header without one."""
        signer = key or self.current_key(alg)
        named = self.current_key(signer.alg).kid if kid is _CURRENT else kid
        headers: dict[str, Any] = {"typ": "JWT"}
        if named is not None:
            headers["kid"] = named
        payload = self.payload(claims, lifetime=lifetime, now=now, drop=drop, audience=audience)
        # Signed as bytes (PyJWS, not PyJWT): any JSON goes, an ``iss`` that is a list or an ``exp`` of NaN too.
        body = json.dumps(payload, separators=(",", ":")).encode()
        return jwt.api_jws.encode(body, signer.private, algorithm=signer.alg, headers=headers)

    # Faults ----------------------------------------------------------------------------------------------

    def fail_with(self, status: int) -> None:
        with self._lock:
            self._faults.status = status

    def stall(self, seconds: float) -> None:
        with self._lock:
            self._faults.stall = seconds

    def advertise(self, **fields: Any) -> None:
        """Discovery says this instead (``issuer="https://elsewhere"``, ``jwks_uri=...``)."""
        with self._lock:
            self._advertised.update(fields)

    def serve_raw(self, path: str, body: bytes, status: int = 200) -> None:
        with self._lock:
            self._raw[path] = (status, body)

    def heal(self) -> None:
        with self._lock:
            self._faults = _Faults()
            self._advertised.clear()
            self._raw.clear()

    def _answer(self, path: str) -> tuple[int, bytes]:
        with self._lock:
            self._requests[path] += 1
            faults = _Faults(self._faults.status, self._faults.stall)
            raw = self._raw.get(path)
        if faults.stall:
            time.sleep(faults.stall)
        if faults.status is not None:
            return faults.status, b'{"error": "the local issuer was told to fail"}'
        if raw is not None:
            return raw
        if path == self.discovery_path:
            return 200, json.dumps(self.discovery_document()).encode()
        if path == self.jwks_path:
            return 200, json.dumps(self.jwks()).encode()
        return 404, b'{"error": "not found"}'

    # TLS -------------------------------------------------------------------------------------------------

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts this issuer's self-signed certificate (and only it)."""
        assert self._certificate is not None, "only an issuer started with tls=True has a certificate"
        return self._certificate.client_context()

    def _tls_context(self) -> ssl.SSLContext:
        self._folder = tempfile.TemporaryDirectory(prefix="local-oidc-issuer-")
        self._certificate = LocalCertificate.create(Path(self._folder.name))
        return self._certificate.server_context()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a stalled answer must not hold up the end of a test


def _handler_for(issuer: LocalIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = issuer._answer(self.path.split("?", 1)[0])
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (a verifier's deadline), as clients do

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the counters say what was asked

    return Handler


# Claim sets of real CI systems ---------------------------------------------------------------------------


def gitlab_ci_claims(
    project_path: str = "group/project",
    ref: str = "main",
    *,
    ref_type: str = "branch",
    ref_protected: bool = True,
    project_id: int = 20,
    namespace_id: int = 72,
    user_login: str = "maintainer",
    pipeline_source: str = "push",
    environment: str | None = None,
    environment_protected: bool = False,
    sha: str = "714a629c0b401fdce83e847fc9589983fc6f46bc",
    host: str = "gitlab.example.com",
    **extra: Any,
) -> dict[str, Any]:
    """The claims GitLab CI puts into a job's ID token (``id_tokens:``), without the registered ones that
    ``LocalIssuer.mint`` fills in; ``sub`` in GitLab's default form. Ids are strings and booleans the strings
    ``"true"``/``"false"``, as GitLab sends them (``runner_id`` is a number). ``extra`` overrides or adds."""
    full_ref = f"refs/{'tags' if ref_type == 'tag' else 'heads'}/{ref}"
    claims: dict[str, Any] = {
        "sub": f"project_path:{project_path}:ref_type:{ref_type}:ref:{ref}",
        "namespace_id": str(namespace_id),
        "namespace_path": project_path.rsplit("/", 1)[0],
        "project_id": str(project_id),
        "project_path": project_path,
        "project_visibility": "private",
        "user_id": "1",
        "user_login": user_login,
        "user_email": f"{user_login}@example.com",
        "user_access_level": "maintainer",
        "pipeline_id": "574",
        "pipeline_source": pipeline_source,
        "job_id": "302",
        "ref": ref,
        "ref_type": ref_type,
        "ref_path": full_ref,
        "ref_protected": "true" if ref_protected else "false",
        "runner_id": 1,
        "runner_environment": "self-hosted",
        "sha": sha,
        "ci_config_ref_uri": f"{host}/{project_path}//.gitlab-ci.yml@{full_ref}",
        "ci_config_sha": sha,
    }
    if environment is not None:
        claims |= {
            "environment": environment,
            "environment_protected": "true" if environment_protected else "false",
            "deployment_tier": "production" if environment.startswith("prod") else "other",
            "environment_action": "start",
        }
    return claims | extra


def github_actions_claims(
    repository: str = "octo/app",
    ref: str = "refs/heads/main",
    *,
    environment: str | None = None,
    event_name: str = "push",
    actor: str = "octocat",
    repository_id: int = 74,
    repository_owner_id: int = 65,
    workflow: str = "release.yml",
    run_id: int = 8_123_456_789,
    sha: str = "e8b5a1cd4b1b3a2e5f9ad3e3c0b5f1c2d4e6a7b8",
    **extra: Any,
) -> dict[str, Any]:
    """The claims GitHub Actions puts into a job's ID token (``id-token: write``), without the registered
    ones ``LocalIssuer.mint`` fills in. ``sub`` as GitHub forms it: ``repo:<repository>:environment:<name>``
    for a job with an environment, ``repo:<repository>:pull_request`` for a pull request, else
    ``repo:<repository>:ref:<ref>``. ``extra`` overrides or adds."""
    if environment is not None:
        subject = f"repo:{repository}:environment:{environment}"
    elif event_name == "pull_request":
        subject = f"repo:{repository}:pull_request"
    else:
        subject = f"repo:{repository}:ref:{ref}"
    workflow_ref = f"{repository}/.github/workflows/{workflow}@{ref}"
    claims: dict[str, Any] = {
        "sub": subject,
        "repository": repository,
        "repository_id": str(repository_id),
        "repository_owner": repository.split("/", 1)[0],
        "repository_owner_id": str(repository_owner_id),
        "repository_visibility": "private",
        "actor": actor,
        "actor_id": "583231",
        "ref": ref,
        "ref_type": "tag" if ref.startswith("refs/tags/") else "branch",
        "ref_protected": "true" if ref == "refs/heads/main" else "false",
        "sha": sha,
        "workflow": "Release",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "event_name": event_name,
        "head_ref": "",
        "base_ref": "",
        "run_id": str(run_id),
        "run_number": "42",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
    }
    if environment is not None:
        claims["environment"] = environment
    return claims | extra
