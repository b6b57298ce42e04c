"""Hostile requests on every endpoint: bounded input, a clear 4xx, never a 5xx.

Two fuzzes and a sweep, all on SQLite and PostgreSQL (PostgreSQL refuses a NUL in a text column, SQLite
does not):

* every rule and method of ``app.url_map`` (the internal auth checks, health, metrics and the UI included),
  with hostile path variables (encoded lone surrogates, invalid UTF-8, ``%00``, ``..``, encoded slashes,
  huge numbers), query strings, headers (huge, control characters, broken Basic auth, forged
  ``X-Original-*``) and bodies (JSON with surrogates, NUL, deep nesting, huge arrays and wrong types; forms;
  bytes that are not UTF-8), anonymously and with real credentials;
* every write and query with real ids in the path and a body the endpoint would accept but for one or two
  hostile values, so the values reach the service, the event store and the projections;
* every parameter every view reads, in every encoding it can arrive in, with a NUL and a lone surrogate.

Requests are built as WSGI environs the way gunicorn builds them (``PATH_INFO`` is the percent-decoded path read
as Latin-1, ``RAW_URI`` the bytes as sent), so they reach the app exactly as they would in production.
The regression tests at the end pin each finding of the security review.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_from_bytes, unquote_to_bytes

import marshmallow
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

import api.app  # noqa: F401  (imports every blueprint, and so defines every schema, before _field_names)
from api.input_limits import MAX_BODY_BYTES, MAX_JSON_DEPTH
from api.registry_token import MAX_SCOPES
from api.ui.sessions import COOKIE_NAME, CSRF_FIELD, sessions
from deploy_tokens.tokens import IssuedToken

from ..conftest import BOTH_BACKENDS, World
from .conftest import Credentials

# Where hostile text reaches storage it meets each database (PostgreSQL refuses NUL that SQLite stores); what the
# request edge refuses never gets that far, so those tests run on the API's one backend.

AUTH_REQUEST = b"/internal/auth_request"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=x"
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same requests on every run: a CI failure reproduces locally
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What no database column should get: PostgreSQL refuses a NUL, and a lone surrogate cannot be encoded.
UNSTORABLE: tuple[str, ...] = ("\x00", "a\x00b", "\ud800", "x\udc80y")
# Atoms a hostile client reaches for first; hypothesis mixes them with generated text.
HOSTILE_ATOMS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x\udc80y",
    "\ufffd",
    "\u202e",
    "\u2028",
    "\r\n",
    "\t",
    "\x7f",
    "..",
    "../..",
    "/",
    "%00",
    "%2F",
    "0",
    "-1",
    "1",
    "1.5",
    "1e999",
    "NaN",
    "Infinity",
    "9223372036854775807",
    "9223372036854775808",
    "99999999999999999999999999999999",
    "true",
    "null",
    "[]",
    "{}",
    "2026-13-45",
    "9999-12-31",
    "9999-12-31T23:59:59Z",
    "0001-01-01",
    "acme",
    "acme/api",
    "acme:api",
    "read_repository",
    "api",
    "repository:acme/api:pull,push",
    "container_registry",
    "gldt-" + "A" * 30,
    "glpat-" + "A" * 30,
    "x" * 5000,
)

# Path segments as raw bytes: percent-encoded invalid UTF-8 and encoded lone surrogates, raw non-ASCII bytes,
# dot segments and encoded slashes (which EncodedPathMiddleware treats specially).
HOSTILE_SEGMENTS: tuple[bytes, ...] = (
    b"%ED%A0%80",
    b"%ED%BF%BF",
    b"%FF%FE",
    b"%C0%AE%C0%AE",
    b"\xff\xfe",
    b"\xed\xa0\x80",
    b"%00",
    b"a%00b",
    b"%0D%0A",
    b"%09",
    b"..",
    b"%2E%2E",
    b"%2F",
    b"acme%2F%2E%2E%2Fapi",
    b"acme%2Fapi",
    b"acme%2F%00",
    b"acme%2F%ED%A0%80",
    b"acme%2F%FF",
    b"acme%2F%E2%82%AC",
    b"acme%2Fapi%2F",
    b"%2F%2F",
    b"0",
    b"-1",
    b"9223372036854775807",
    b"9223372036854775808",
    b"99999999999999999999999999999999",
    b"acme/backend",
    b"%E2%80%AE",
    b"x" * 3000,
)

HOSTILE_HEADER_VALUES: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\x01\x02\x7f",
    "\xff\xfe",
    "é",
    "Basic",
    "Basic ",
    "Basic !!!!",
    "Basic " + base64.b64encode(b"no-colon").decode(),
    "Basic " + base64.b64encode(b"\xff\xfe:\xed\xa0\x80").decode(),
    "Basic " + base64.b64encode(b"user:\x00").decode(),
    "Basic " + base64.b64encode(b"gitlab+deploy-token-1:gldt-" + b"A" * 30).decode(),
    "Basic " + "A" * 9000,
    "Bearer",
    "Bearer \x00",
    "Bearer gldt-" + "A" * 30,
    "Negotiate abc",
    "203.0.113.1, 10.0.0.1",
    "x" * 9000,
)

HOSTILE_URIS: tuple[str, ...] = (
    "",
    "/",
    "/acme/api.git/info/refs?service=git-upload-pack",
    "/acme/api.git/git-receive-pack",
    "/acme/api/info/refs",
    "/acme/%00.git/info/refs",
    "/acme/\x00/info/refs",
    "/api/v4/projects/acme%2Fapi/packages/npm/x",
    "/api/v4/projects/a%00b/packages/npm/x",
    "/api/v4/projects/%ED%A0%80/packages/pypi/simple",
    "/api/v4/projects/%FF/packages/pypi/simple",
    "/api/v4/groups/%00/-/packages/maven/x",
    "/api/v4/packages/npm/%00",
    "/api/v4/projects/99999999999999999999999/packages/generic/x",
    "/api/v4/projects/1/packages/generic/x",
    "/api/v4/projects/1/packages/generic/x?%FF=%00",
    "/../../etc/passwd",
    "//evil.example/x",
    "\r\n",
    "/x" * 3000,
)

CONTENT_TYPES: tuple[str, ...] = (
    JSON,
    "application/json; charset=utf-16",
    "application/json; charset=\x00",
    FORM,
    "multipart/form-data",
    MULTIPART,
    "text/plain",
    "application/octet-stream",
    "\x00",
)


def _field_names() -> tuple[str, ...]:
    """Every parameter name some schema reads, so hostile values reach real fields, not only unknown keys."""
    names: set[str] = set()
    pending: list[type[marshmallow.Schema]] = [marshmallow.Schema]
    while pending:
        schema = pending.pop()
        pending.extend(schema.__subclasses__())
        names.update(schema._declared_fields)
    names.update({"scopes[]", "scope", "grant_type", "personal_access_token", "next", CSRF_FIELD})
    return tuple(sorted(names))


FIELD_NAMES = _field_names()

# Values that let a write go through, so that a hostile value in one field reaches the service and the database
# instead of stopping at a missing neighbour.
PLAUSIBLE: dict[str, Any] = {
    "name": "Fuzz",
    "path": "fuzz",
    "scopes": ["read_repository", "read_registry"],
    "expires_at": "2030-01-01",
    "username": "fuzzer",
    "email": "fuzz@example.com",
    "namespace_id": 1,
    "namespace_kind": "group",
    "parent_id": 1,
    "user_id": 2,
    "access_level": 30,
    "token": "gldt-" + "A" * 30,
    "action": "git_read",
    "project": "acme/api",
    "group": "acme",
    "value": True,
    "grace_period_seconds": 60,
    "dependency_proxy_enabled": True,
    "repository_access_level": "enabled",
    "container_registry_enabled": True,
    "external_authorization_service_enabled": False,
    "service": "container_registry",
    "scope": "repository:acme/api:pull",
    "grant_type": "password",
    "at": "2026-01-10T12:00:00Z",
    "token_id": 1,
    "per_page": 5,
    # Trust policies and the token exchange (behaviour [federation])
    "issuer": "https://ci.example.com",
    "audience": "https://deploy-tokens.example",
    "claims": {"project_path": "acme/api", "ref": "main"},
    "claim_patterns": {"environment": "prod-*"},
    "ttl_seconds": 900,
    "deploy_token_oidc_issuers": ["https://ci.example.com"],
    # An ID token of an issuer the instance does not trust: refused before any request leaves the machine.
    "subject_token": (
        "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJodHRwczovL3VudHJ1c3RlZC5leGFtcGxlIiwic3ViIjoieCIsImF1"
        "ZCI6ImEiLCJleHAiOjEsImlhdCI6MSwianRpIjoiaiJ9.c2ln"
    ),
    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
    "resource": "acme/api",
}

hostile_text = st.one_of(
    st.sampled_from(HOSTILE_ATOMS),
    st.text(st.characters(codec=None, exclude_categories=()), max_size=12),  # surrogates included
    st.text(st.characters(max_codepoint=0x7F), max_size=12),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([10**30, -(10**30), 2**63, 2**64]),
    st.floats(),  # NaN and the infinities included: Python's json writes them (as non-standard JSON)
    hostile_text,
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | hostile_text, children, max_size=4)
    ),
    max_leaves=10,
)


@st.composite
def plausible_objects(draw: st.DrawFn, fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """A body that would be accepted, with one or two of its values made hostile (preferably ``fields``)."""
    value = dict(PLAUSIBLE)
    keys = st.sampled_from(sorted(PLAUSIBLE)) | st.sampled_from(FIELD_NAMES)
    if fields:
        keys = st.sampled_from(fields) | keys
    for key in draw(st.lists(keys, min_size=1, max_size=2, unique=True)):
        value[key] = draw(st.sampled_from(UNSTORABLE) | st.sampled_from(HOSTILE_ATOMS) | json_values)
    return value


def _json_text(draw: st.DrawFn, value: Any) -> bytes:
    encoding = draw(st.sampled_from(["escaped", "raw", "utf-16"]))
    if encoding == "escaped":
        return json.dumps(value).encode("ascii")
    # Written raw, a lone surrogate is invalid UTF-8 (ED A0 80), which Python's json would read back as one.
    return json.dumps(value, ensure_ascii=False).encode(
        "utf-16" if encoding == "utf-16" else "utf-8", "surrogatepass"
    )


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["plausible", "object", "any", "deep", "wide"]))
    if shape == "deep":
        depth = draw(st.sampled_from([MAX_JSON_DEPTH + 1, 1000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        return (opener * depth + "1" + closer * depth).encode()
    if shape == "wide":
        return b"[" + b",".join([b'"a"'] * draw(st.sampled_from([10_000, 200_000]))) + b"]"
    if shape == "plausible":
        return _json_text(draw, draw(plausible_objects()))
    if shape == "object":
        return _json_text(
            draw, draw(st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, min_size=1, max_size=6))
        )
    return _json_text(draw, draw(json_values))


def _encode(text: str) -> bytes:
    return quote_from_bytes(text.encode("utf-8", "surrogatepass"), safe="").encode("ascii")


def _form_pairs(value: Mapping[str, Any]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        if isinstance(item, list):
            pairs.extend((f"{key}[]", str(element)) for element in item)
        else:
            pairs.append((key, str(item).lower() if isinstance(item, bool) else str(item)))
    return pairs


def _form(pairs: list[tuple[str, str]]) -> bytes:
    return b"&".join(_encode(key) + b"=" + _encode(value) for key, value in pairs)


def _multipart(pairs: list[tuple[str, str]]) -> bytes:
    """The pairs as ``multipart/form-data`` with the boundary ``x``, every value written raw."""
    parts = [
        b'--x\r\nContent-Disposition: form-data; name="%s"\r\n\r\n%s\r\n'
        % (key.encode("utf-8", "surrogatepass"), value.encode("utf-8", "surrogatepass"))
        for key, value in pairs
    ]
    return b"".join(parts) + b"--x--\r\n"


@st.composite
def form_pairs(draw: st.DrawFn) -> list[tuple[str, str]]:
    if draw(st.booleans()):
        return _form_pairs(draw(plausible_objects()))
    pairs = st.tuples(st.sampled_from(FIELD_NAMES) | hostile_text, hostile_text)
    return draw(st.lists(pairs, min_size=1, max_size=6))


# A body with the content type that makes the app read it as such (sometimes changed to a mismatched one).
bodies = st.one_of(
    st.tuples(json_bodies(), st.just(JSON)),
    st.tuples(form_pairs().map(_form), st.just(FORM)),
    st.tuples(form_pairs().map(_multipart), st.just(MULTIPART)),
    st.tuples(
        st.binary(max_size=64)
        | st.sampled_from([b"\xff\xfe\x00", b'{"token": "\xed\xa0\x80"}', b"--x\r\n\r\n", b"\x00" * 100]),
        st.sampled_from(CONTENT_TYPES),
    ),
)

query_strings = st.one_of(
    st.just(b""),
    st.builds(lambda value: _form(_form_pairs(value)), plausible_objects()),
    st.lists(
        st.tuples(st.sampled_from(FIELD_NAMES) | hostile_text, hostile_text).map(lambda pair: _form([pair]))
        | st.binary(max_size=24).map(lambda raw: raw.replace(b"#", b"")),
        max_size=6,
    ).map(b"&".join),
)


@dataclass(frozen=True)
class Route:
    rule: str
    method: str
    fields: tuple[str, ...] = ()  # the parameters its view reads, as far as its OpenAPI operation says


# The UI's views declare no operation; these are the form fields they read.
UI_FIELDS = ("name", "expires_at", "username", "scopes", "personal_access_token", "next")


def _fields(app: Flask, endpoint: str) -> tuple[str, ...]:
    operation = getattr(app.view_functions.get(endpoint), "openapi_operation", None)
    if operation is None:
        return UI_FIELDS if endpoint.startswith("ui.") else ()
    schemas = [schema for schema in (operation.query, operation.body) if schema is not None]
    return tuple(sorted({name for schema in schemas for name in schema._declared_fields}))


def routes_of(app: Flask) -> list[Route]:
    return sorted(
        {
            Route(rule.rule, method, _fields(app, rule.endpoint))
            for rule in app.url_map.iter_rules()
            for method in rule.methods or ()
        },
        key=lambda route: (route.rule, route.method),
    )


_VARIABLE = re.compile(r"<(?:(?P<converter>\w+)(?:\((?P<arguments>[^)]*)\))?:)?(?P<name>\w+)>")


@dataclass(frozen=True)
class Caller:
    """Who sends a request. Only ``valid_deploy_token`` callers may ever pass ``/internal/auth_request``."""

    name: str
    headers: tuple[tuple[str, str], ...] = ()
    cookie: str | None = None
    csrf: str | None = None
    valid_deploy_token: bool = False


@dataclass
class Fuzz:
    app: Flask
    client: FlaskClient
    world: World
    token: IssuedToken
    admin: Caller
    ui: Caller
    callers: list[Caller]

    def plausible_segments(self, rule: str, name: str) -> list[bytes]:
        """Path values that name something that exists, for the variable ``name`` of ``rule``."""
        world = self.world
        groups = rule.startswith(("/api/v4/groups/", "/groups/"))
        values: dict[str, list[str]] = {
            "reference": (
                [str(world.top), "acme", "acme%2Fbackend"] if groups else [str(world.project), "acme%2Fapi"]
            ),
            "full_path": ["acme", "acme/backend"] if groups else ["acme/api", "acme/backend/services/db"],
            "token_id": [str(self.token.token.token_id), "1"],
            "user_id": [str(user.user_id) for user in list(world.users.values())[:2]],
            "name": ["fuzz_feature"],
            "filename": ["ui.css", "ui.js"],
        }
        return [value.encode() for value in values.get(name, ["1"])]


@dataclass
class HostileRequest:
    method: str
    path: bytes
    query: bytes
    headers: dict[str, str]
    body: bytes
    content_type: str | None
    chunked: bool
    caller: Caller
    content_length: str | None = None  # a Content-Length that lies about the body

    def describe(self) -> str:
        headers = {key: value[:80] for key, value in self.headers.items()}
        return (
            f"{self.method} {self.path[:300]!r} ? {self.query[:300]!r} as {self.caller.name}, "
            f"content type {self.content_type!r}{' (chunked)' if self.chunked else ''}, "
            f"{'' if self.content_length is None else f'Content-Length {self.content_length!r}, '}"
            f"headers {headers}, body {self.body[:300]!r}"
        )

    def send(self, client: FlaskClient) -> TestResponse:
        return send(
            client,
            self.method,
            self.path,
            query=self.query,
            headers=self.headers,
            body=self.body,
            content_type=self.content_type,
            chunked=self.chunked,
            content_length=self.content_length,
        )


def send(
    client: FlaskClient,
    method: str,
    path: bytes,
    *,
    query: bytes = b"",
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    chunked: bool = False,
    content_length: str | None = None,
) -> TestResponse:
    """One request as gunicorn hands it to the app (PEP 3333: every environ string is bytes read as Latin-1).

    A chunked body has no ``Content-Length``; the server says it ends the stream (``wsgi.input_terminated``).
    """
    raw_uri = (path + (b"?" + query if query else b"")).decode("latin-1")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query.decode("latin-1"),
        "RAW_URI": raw_uri,
        "REQUEST_URI": raw_uri,
        "REMOTE_ADDR": "203.0.113.9",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if chunked:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    response = client.open(
        "/",
        method=method,
        input_stream=io.BytesIO(body),
        content_length=None if chunked else len(body),
        environ_overrides=environ,
    )
    response.get_data()  # a streamed body fails while it is read: that is part of the answer
    return response


def _latin1(text: str) -> str:
    """A header value as a WSGI server passes it on: its bytes read as Latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


ODD_METHODS = ("OPTIONS", "PROPFIND", "TRACE", "CONNECT", "BREW", "get")

HEADER_NAMES = (
    "Authorization",
    "Private-Token",
    "Deploy-Token",
    "X-Original-URI",
    "X-Original-Method",
    "X-Original-Remote-Addr",
    "X-Forwarded-For",
    "User-Agent",
    "Cookie",
    "Host",
    "Referer",
)


@st.composite
def hostile_headers(draw: st.DrawFn, caller: Caller) -> dict[str, str]:
    headers = dict(caller.headers)
    for name in draw(st.lists(st.sampled_from(HEADER_NAMES), max_size=4, unique=True)):
        if name == "X-Original-URI":
            headers[name] = draw(st.sampled_from(HOSTILE_URIS) | hostile_text.map(_latin1))
        elif name == "X-Original-Method":
            headers[name] = draw(st.sampled_from(["GET", "PUT", "", "get", "\x00", "X" * 5000]))
        else:
            headers[name] = draw(st.sampled_from(HOSTILE_HEADER_VALUES) | hostile_text.map(_latin1))
    if caller.cookie is not None and "Cookie" not in headers:
        headers["Cookie"] = f"{COOKIE_NAME}={caller.cookie}"
    return headers


@st.composite
def hostile_bodies(draw: st.DrawFn, caller: Caller) -> tuple[bytes, str | None, bool]:
    """A body, its content type, and whether it is sent chunked."""
    if not draw(st.booleans()):
        return b"", None, False
    body, content_type = draw(bodies)
    if draw(st.integers(0, 4)) == 0:
        content_type = draw(st.sampled_from(CONTENT_TYPES))
    if caller.csrf is not None and content_type == FORM:
        body = f"{CSRF_FIELD}={caller.csrf}&".encode() + body
    return body, content_type, draw(st.integers(0, 3)) == 0


def real_path(fuzz: Fuzz, rule: str, choose: Callable[[list[bytes]], bytes]) -> bytes:
    """The rule with every variable filled by ``choose``, from values that name something that exists."""
    path = b""
    position = 0
    for match in _VARIABLE.finditer(rule):
        path += rule[position : match.start()].encode()
        position = match.end()
        options = fuzz.plausible_segments(rule, match.group("name"))
        if match.group("converter") == "any":
            options = [option.strip().encode() for option in (match.group("arguments") or "").split(",")]
        path += choose(options)
    return path + rule[position:].encode()


@st.composite
def anything_anywhere(draw: st.DrawFn, fuzz: Fuzz, routes: list[Route]) -> HostileRequest:
    """Any route and method, any caller, hostile everything."""
    route = draw(st.sampled_from(routes))
    # The administrator may do everything, so reaches the most code: drawn as often as all others together.
    caller = draw(st.sampled_from(fuzz.callers) | st.just(fuzz.admin))
    path = real_path(
        fuzz,
        route.rule,
        lambda options: draw(
            st.sampled_from(options)
            | st.sampled_from(HOSTILE_SEGMENTS)
            | st.binary(min_size=1, max_size=12).map(lambda raw: quote_from_bytes(raw, safe="").encode())
        ),
    )
    body, content_type, chunked = draw(hostile_bodies(caller))
    return HostileRequest(
        # Sometimes a method the route does not take: a reverse proxy may pass any method on to auth_request.
        method=draw(st.just(route.method) | st.sampled_from(ODD_METHODS)),
        path=path,
        query=draw(query_strings),
        headers=draw(hostile_headers(caller)),
        body=body,
        content_type=content_type,
        chunked=chunked,
        caller=caller,
        content_length=draw(st.none() | st.sampled_from(["", "-1", "abc", "0", "1", "99999", "9" * 30])),
    )


def is_ui(rule: str) -> bool:
    return not rule.startswith(("/api/", "/jwt/", "/internal/", "/-/", "/metrics"))


def _encodings(route: Route) -> tuple[str, ...]:
    """How parameters can reach this route: the query string of a read, the body of a write (a read takes a
    body too: GitLab reads parameters from anywhere)."""
    if route.method in ("GET", "DELETE"):
        return ("query", FORM, MULTIPART)
    return (JSON, FORM, MULTIPART)


def real_request(
    fuzz: Fuzz, route: Route, path: bytes, value: dict[str, Any], encoding: str, json_text: bytes = b""
) -> HostileRequest:
    """``value`` sent to ``route`` the way ``encoding`` says, by someone allowed to use it."""
    ui = is_ui(route.rule)
    caller = fuzz.ui if ui else fuzz.admin
    pairs = _form_pairs(value)
    body, content_type, query = b"", None, b""
    if ui and encoding != "query":  # the UI's forms, with the session's CSRF token to get past its check
        body, content_type = _form([(CSRF_FIELD, caller.csrf or ""), *pairs]), FORM
    elif encoding == "query":
        query = _form(pairs)
    elif encoding == JSON:
        body, content_type = json_text or json.dumps(value).encode(), JSON
    else:
        body, content_type = (_form if encoding == FORM else _multipart)(pairs), encoding
    headers = dict(caller.headers)
    if caller.cookie is not None:
        headers["Cookie"] = f"{COOKIE_NAME}={caller.cookie}"
    return HostileRequest(
        route.method, path, query, headers, body, content_type, chunked=False, caller=caller
    )


@st.composite
def hostile_values_in_real_requests(draw: st.DrawFn, fuzz: Fuzz, routes: list[Route]) -> HostileRequest:
    """A route with real ids in its path, sent by someone allowed to use it, with hostile values in the body
    or the query string: the requests that get past authorization and validation into the database."""
    # Routes that read more parameters are drawn more often: each is a way in.
    route = draw(st.sampled_from([route for route in routes for _ in range(1 + len(route.fields))]))
    path = real_path(fuzz, route.rule, lambda options: draw(st.sampled_from(options)))
    value = draw(plausible_objects(route.fields))
    encoding = draw(st.sampled_from(_encodings(route)))
    request = real_request(fuzz, route, path, value, encoding, _json_text(draw, value))
    if encoding == "query":  # and bytes that are not UTF-8 after the parameters
        request.query += draw(st.just(b"") | st.binary(max_size=8).map(b"&".__add__))
    return request


@pytest.fixture
def fuzz(app: Flask, client: FlaskClient, world: World, creds: Credentials) -> Fuzz:
    token = world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="fuzz",
        scopes=["read_repository", "read_registry", "read_package_registry", "write_package_registry"],
        expires_at=None,
        username=None,
    )
    # An issuer the instance trusts, so fuzzed trust policies reach the rules beyond "issuer is not trusted".
    world.runtime.trust_policies.set_trusted_issuers(world.admin, [PLAUSIBLE["issuer"]])
    basic = base64.b64encode(f"{token.token.username}:{token.value}".encode()).decode()
    with app.app_context():
        store = sessions()
        session_id = store.create({"pat": world.admin_token, "user_id": world.admin.user_id})
    admin = Caller("admin", tuple(creds["admin"].items()))
    ui = Caller("admin signed in to the UI", cookie=session_id, csrf=store.keys.csrf_token(session_id))
    callers = [
        Caller("anonymous"),
        admin,
        ui,
        Caller("guest", tuple(creds["guest"].items())),
        Caller("deploy token (Basic)", (("Authorization", f"Basic {basic}"),), valid_deploy_token=True),
        Caller("deploy token (header)", (("Deploy-Token", token.value),), valid_deploy_token=True),
        Caller("broken Basic", (("Authorization", "Basic " + base64.b64encode(b"\xff:\x00").decode()),)),
    ]
    return Fuzz(app, client, world, token, admin, ui, callers)


def _check(request: HostileRequest, response: TestResponse) -> None:
    assert response.status_code < 500, (
        f"{response.status_code} for {request.describe()}: {response.data[:500]!r}"
    )
    if unquote_to_bytes(request.path) == AUTH_REQUEST:
        # nginx turns any other status of an auth_request sub-request into a 500 for the client.
        assert response.status_code in (200, 401, 403), f"{response.status_code} for {request.describe()}"
        if not request.caller.valid_deploy_token:
            assert response.status_code != 200, f"allowed without a deploy token: {request.describe()}"


@pytest.mark.slow
@BOTH_BACKENDS
def test_no_hostile_request_to_any_endpoint_gets_a_server_error(fuzz: Fuzz) -> None:
    routes = routes_of(fuzz.app)
    assert {b"/internal/auth_request", b"/jwt/auth", b"/internal/auth/check", b"/metrics"} <= {
        route.rule.encode() for route in routes
    }

    @settings(FUZZ_SETTINGS, max_examples=700)
    @given(anything_anywhere(fuzz, routes))
    def run(request: HostileRequest) -> None:
        _check(request, request.send(fuzz.client))

    run()


@pytest.mark.slow
@BOTH_BACKENDS
def test_hostile_values_that_reach_the_database_get_no_server_error(fuzz: Fuzz) -> None:
    routes = [route for route in routes_of(fuzz.app) if route.method not in ("OPTIONS", "HEAD")]

    @settings(FUZZ_SETTINGS, max_examples=500)
    @given(hostile_values_in_real_requests(fuzz, routes))
    def run(request: HostileRequest) -> None:
        _check(request, request.send(fuzz.client))

    run()
    # Whatever was accepted was stored in a form every projection can apply: none is stuck behind an event.
    projector = fuzz.world.runtime.projector
    projector.catch_up()
    assert [status.name for status in projector.status() if status.lag] == []


def test_unstorable_text_in_any_parameter_of_the_management_api_and_ui_is_a_400(fuzz: Fuzz) -> None:
    """Every parameter every view reads, in every way a parameter can arrive, once with a NUL (PostgreSQL
    refuses it in a text column) and, in JSON (the one encoding that can carry one), a lone surrogate.

    The management API and the UI refuse it (400); the registry token server may answer as it sees fit, short
    of a 5xx."""
    failures: list[str] = []
    for route in routes_of(fuzz.app):
        if route.method in ("OPTIONS", "HEAD"):
            continue
        path = real_path(fuzz, route.rule, lambda options: options[0])
        for name in route.fields:
            for encoding in _encodings(route):
                for bad in ("a\x00b", "a\ud800b") if encoding == JSON else ("a\x00b",):
                    # A read filters by what it is given: only the one parameter, so no other one is refused
                    # first. A write needs its other parameters to get as far as the database.
                    value = {name: bad} if route.method in ("GET", "DELETE") else {**PLAUSIBLE, name: bad}
                    request = real_request(fuzz, route, path, value, encoding)
                    response = request.send(fuzz.client)
                    try:
                        _check(request, response)
                        if route.rule.startswith("/api/v4/") or is_ui(route.rule):
                            assert response.status_code == 400, (
                                f"{response.status_code} for {request.describe()}"
                            )
                    except AssertionError as failure:
                        failures.append(str(failure).splitlines()[0])
    assert failures == []


# Regressions: the findings of the security review, one test each ---------------------------------------


def _token_with_lone_surrogate() -> str:
    # The length of a real deploy token, so the value gets past the cheap shape checks to the digest.
    return "gldt-" + "A" * 29 + "\\ud800"


def test_lone_surrogate_token_on_the_json_auth_check_is_a_400(client: FlaskClient) -> None:
    body = f'{{"token": "{_token_with_lone_surrogate()}", "action": "git_read"}}'
    response = client.post("/internal/auth/check", data=body, content_type=JSON)
    assert response.status_code == 400
    assert response.get_json() == {"error": "token contains a lone surrogate, which is not valid Unicode"}


def test_lone_surrogate_token_on_revoke_by_value_is_a_400(client: FlaskClient, creds: Credentials) -> None:
    body = f'{{"token": "{_token_with_lone_surrogate()}"}}'
    response = client.delete("/api/v4/admin/token", data=body, content_type=JSON, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == {"error": "token contains a lone surrogate, which is not valid Unicode"}


def test_lone_surrogate_sent_as_raw_bytes_is_a_400(client: FlaskClient, creds: Credentials) -> None:
    body = b'{"token": "gldt-' + b"A" * 29 + b'\xed\xa0\x80"}'
    response = client.delete("/api/v4/admin/token", data=body, content_type=JSON, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == {"error": "the body is not valid UTF-8"}


@pytest.mark.parametrize("path", ["/internal/auth/check", "/api/v4/groups"])
def test_json_nested_100000_deep_is_a_400(client: FlaskClient, creds: Credentials, path: str) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = client.post(path, data=body, content_type=JSON, headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == {"error": f"the body is nested more than {MAX_JSON_DEPTH} levels deep"}


def test_nul_in_a_json_key_is_a_400_not_an_ignored_parameter(
    client: FlaskClient, world: World, creds: Credentials
) -> None:
    body = {"name": "fine", "scopes": ["read_repository"], "na\x00me": "x"}
    response = client.post(
        f"/api/v4/projects/{world.project}/deploy_tokens", json=body, headers=creds["admin"]
    )
    assert response.status_code == 400
    assert response.get_json() == {"error": "a key in the body contains a NUL character"}


def test_nul_in_a_management_api_query_value_is_a_400(client: FlaskClient, creds: Credentials) -> None:
    # PostgreSQL refuses the NUL in the query's parameter (a 500); SQLite looked for it.
    response = client.get("/api/v4/audit_events?actor_username=a%00b", headers=creds["admin"])
    assert response.status_code == 400
    assert response.get_json() == {"error": "actor_username contains a NUL character"}


def test_nul_in_a_multipart_form_value_is_a_400(client: FlaskClient, creds: Credentials) -> None:
    body = _multipart([("actor_username", "a\x00b")])
    response = send(
        client, "GET", b"/api/v4/audit_events", headers=creds["admin"], body=body, content_type=MULTIPART
    )
    assert response.status_code == 400
    assert response.get_json() == {"error": "actor_username contains a NUL character"}


def test_multipart_part_without_a_name_is_a_400(client: FlaskClient, creds: Credentials) -> None:
    # A line break in the quoted name leaves werkzeug a part named None, which no view expects.
    body = b'--x\r\nContent-Disposition: form-data; name="\r\n"\r\n\r\nvalue\r\n--x--\r\n'
    response = send(
        client, "GET", b"/api/v4/projects", headers=creds["admin"], body=body, content_type=MULTIPART
    )
    assert response.status_code == 400
    assert response.get_json() == {"error": "a form parameter has no name"}


def test_nul_in_a_ui_form_value_is_a_400(client: FlaskClient) -> None:
    response = client.post("/users/sign_in", data={"personal_access_token": "glpat-\x00"})
    assert response.status_code == 400
    assert b"personal_access_token contains a NUL character" in response.data


def test_query_string_that_is_not_utf8_is_a_400(client: FlaskClient) -> None:
    response = send(client, "GET", b"/jwt/auth", query=b"service=container_registry&account=\xff")
    assert response.status_code == 400
    assert response.get_json() == {"error": "the query string is not valid UTF-8"}


def test_auth_request_with_a_host_that_routing_refuses_is_still_a_401(client: FlaskClient) -> None:
    # A DNS label is at most 63 characters: werkzeug answers 400, which nginx would turn into a 500.
    response = send(
        client, "GET", AUTH_REQUEST, headers={"Host": "x" * 64, "X-Original-URI": "/acme/api.git"}
    )
    assert response.status_code == 401


def test_encoded_path_beyond_latin1_is_a_404(client: FlaskClient, creds: Credentials) -> None:
    response = send(client, "GET", b"/api/v4/projects/acme%2F%E2%82%AC/deploy_tokens", headers=creds["admin"])
    assert response.status_code == 404


def _big_body() -> bytes:
    return json.dumps({"name": "x" * (2 * MAX_BODY_BYTES), "scopes": ["read_repository"]}).encode()


def test_two_mib_body_is_a_413(client: FlaskClient, world: World, creds: Credentials) -> None:
    response = send(
        client,
        "POST",
        f"/api/v4/projects/{world.project}/deploy_tokens".encode(),
        headers=creds["admin"],
        body=_big_body(),
        content_type=JSON,
    )
    assert response.status_code == 413
    assert response.get_json() == {"error": f"the request body is larger than {MAX_BODY_BYTES} bytes"}
    listed = client.get(f"/api/v4/projects/{world.project}/deploy_tokens", headers=creds["admin"])
    assert listed.get_json() == []


def test_chunked_two_mib_body_without_content_length_is_a_413(
    client: FlaskClient, world: World, creds: Credentials
) -> None:
    response = send(
        client,
        "POST",
        f"/api/v4/projects/{world.project}/deploy_tokens".encode(),
        headers=creds["admin"],
        body=_big_body(),
        content_type=JSON,
        chunked=True,
    )
    assert response.status_code == 413
    assert response.get_json() == {"error": f"the request body is larger than {MAX_BODY_BYTES} bytes"}


def test_five_thousand_registry_scopes_are_a_fast_400(client: FlaskClient, world: World) -> None:
    issued = world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="r",
        scopes=["read_registry"],
        expires_at=None,
        username=None,
    )
    basic = base64.b64encode(f"{issued.token.username}:{issued.value}".encode()).decode()
    query = "service=container_registry&" + "&".join(["scope=repository:acme/api:pull"] * 5000)
    started = time.perf_counter()
    response = client.get(f"/jwt/auth?{query}", headers={"Authorization": f"Basic {basic}"})
    elapsed = time.perf_counter() - started
    assert response.status_code == 400
    assert f"at most {MAX_SCOPES} per request" in response.get_json()["errors"][0]["message"]
    assert elapsed < 1.0, f"{elapsed:.2f} s"  # the review measured 1.9 s, 20,000 activity rows, a 590 KB JWT
