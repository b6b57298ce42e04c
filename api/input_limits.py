"""The request edge: the bounds and encodings a request must meet before any view reads it.

Installed once for the whole app (``install``), so no view has to remember them:

* a body is at most ``MAX_BODY_BYTES``, with or without ``Content-Length`` (a chunked body is read up to the
  cap and refused beyond it): 413;
* a JSON body is nested at most ``MAX_JSON_DEPTH`` levels (checked before the parser recurses) and none of its
  strings, keys included, holds a NUL or a lone surrogate: 400 naming the problem. A NUL cannot be stored in a
  PostgreSQL text column and a lone surrogate cannot be encoded as UTF-8, so either would otherwise fail deep
  inside a write or a digest, as a 500;
* a raw query string is UTF-8 (werkzeug decodes it strictly wherever it is read): 400; on the management API
  and the web UI, query-string and form parameters also decode to UTF-8 and hold no NUL: 400.

``/internal/auth_request`` is exempt from all of it: nginx turns any answer of an ``auth_request`` sub-request
other than 2xx, 401 and 403 into a 500 for the client, and the check reads neither a body nor parameters.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from flask import Flask, Request, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest, HTTPException, RequestEntityTooLarge
from werkzeug.sansio.utils import get_host

__all__ = [
    "AUTH_REQUEST_PATH",
    "EXEMPT_ENDPOINTS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "BodyTooLarge",
    "BoundedJSONProvider",
    "RejectedInput",
    "RoutableEnviron",
    "check_json_strings",
    "install",
    "is_rejection",
    "json_nesting_exceeds",
    "unfit_character",
]

# Every request body the service understands is a few hundred bytes; a megabyte leaves room for any client.
MAX_BODY_BYTES: Final = 1024 * 1024
# The deepest body a schema reads is an object of lists (two levels); 32 is generous and keeps every walk
# over the parsed value, ours and marshmallow's, far from the interpreter's recursion limit.
MAX_JSON_DEPTH: Final = 32
# nginx's auth_request: only 200, 401 and 403 are answers it understands (see the module docstring).
EXEMPT_ENDPOINTS: Final = frozenset({"auth_checks.auth_request"})
AUTH_REQUEST_PATH: Final = "/internal/auth_request"

# Paths whose parameters are checked for NUL and UTF-8: the management API (the UI is found by blueprint).
_CHECKED_PATH_PREFIX: Final = "/api/v4/"
_UI_BLUEPRINT: Final = "ui"
_FORM_MIMETYPE: Final = "application/x-www-form-urlencoded"
_FORM_MIMETYPES: Final = frozenset({_FORM_MIMETYPE, "multipart/form-data"})
# Names in error messages come from the client: only ones shaped like the API's parameter names are repeated
# back. No hyphen, so a token value (``gldt-...``) sent as a name never ends up in a message.
_PLAIN_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}(?:\[\])?")


class RejectedInput(BadRequest):
    """A request the edge refuses: answered as ``{"error": description}`` (see ``api.errors``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


class BodyTooLarge(RequestEntityTooLarge):
    """A body over ``MAX_BODY_BYTES``: answered as ``{"error": description}``."""

    def __init__(self) -> None:
        super().__init__(f"the request body is larger than {MAX_BODY_BYTES} bytes")


def unfit_character(value: str) -> str | None:
    """What makes ``value`` unfit to keep or hash (a NUL, a lone surrogate), or None when it is fine."""
    if "\x00" in value:
        return "a NUL character"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "a lone surrogate, which is not valid Unicode"
    return None


def _name(path: Iterable[str | int], fallback: str) -> str:
    parts: list[str] = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif _PLAIN_NAME.fullmatch(part):
            parts.append(f".{part}" if parts else part)
        else:
            break  # a hostile key is not repeated back; the name stops at its parent
    return "".join(parts) or fallback


def check_json_strings(value: Any) -> None:
    """Raise ``RejectedInput`` when a string or key anywhere in ``value`` holds a NUL or a lone surrogate.

    Iterative: the value may come from anywhere, and a walk must not be the thing that recurses too deep.
    """
    pending: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while pending:
        item, path = pending.pop()
        if isinstance(item, str):
            problem = unfit_character(item)
            if problem is not None:
                raise RejectedInput(f"{_name(path, 'body')} contains {problem}")
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = unfit_character(key)
                if problem is not None:
                    raise RejectedInput(f"a key in {_name(path, 'the body')} contains {problem}")
                pending.append((child, (*path, key)))
        elif isinstance(item, list):
            pending.extend((child, (*path, index)) for index, child in enumerate(item))


# One left-to-right pass over the text: a string (an unterminated one runs to the end) or a bracket. Possessive
# quantifiers keep the engine from backtracking, so hostile text costs linear time.
_JSON_TOKEN: Final = re.compile(r'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]', re.DOTALL)
_OPENERS: Final = frozenset("[{")


def json_nesting_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether JSON ``text`` nests arrays and objects more than ``limit`` deep (brackets in strings ignored).

    Meant to run before the parser, whose C scanner recurses once per level. Invalid JSON gets some answer
    here too; the parser then reports what is wrong with it.
    """
    if text.count("[") + text.count("{") <= limit:  # most bodies: too few brackets to nest that deep
        return False
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif token in ("]", "}"):
            depth -= 1
    return False


# A JSON text can only produce a NUL or a lone surrogate from an escape; raw surrogates come from decoding.
_SUSPECT: Final = re.compile(r"\\u|[\x00\ud800-\udfff]")


class BoundedJSONProvider(DefaultJSONProvider):
    """Flask's JSON, refusing what the edge refuses before a view sees the value (``RejectedInput``).

    Invalid JSON still raises ``ValueError``, so ``request.get_json(silent=True)`` keeps meaning "not JSON".
    """

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if isinstance(s, bytes | bytearray):
            try:
                # What json.loads would pick (UTF-8, -16 or -32), but strict: its own decoding passes
                # surrogates through, which is how a raw ED A0 80 would become a lone surrogate.
                text = s.decode(json.detect_encoding(s))
            except UnicodeDecodeError:
                raise RejectedInput("the body is not valid UTF-8") from None
        else:
            text = s
        if json_nesting_exceeds(text):
            raise RejectedInput(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
        value = json.loads(text, **kwargs)
        if _SUSPECT.search(text):
            check_json_strings(value)
        return value


def _check_parameters(pairs: Iterable[tuple[str | None, str]], source: str) -> None:
    for key, value in pairs:
        if key is None:  # a multipart part whose Content-Disposition has no name: views expect names
            raise RejectedInput(f"a {source} parameter has no name")
        if "\x00" in key:
            raise RejectedInput(f"a {source} parameter name contains a NUL character")
        if "\x00" in value:
            raise RejectedInput(f"{_name((key,), f'a {source} parameter')} contains a NUL character")


def _utf8(raw: bytes, source: str) -> None:
    # Werkzeug decodes parameters with replacement characters; a client that sends other bytes sent
    # something else than it thinks, so it is told rather than answered for a different value.
    try:
        unquote_to_bytes(raw.replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedInput(f"the {source} is not valid UTF-8") from None


def _buffer_unsized_body(environ: dict[str, Any]) -> None:
    """Read a body that came without ``Content-Length`` (chunked), refusing it past the cap.

    Werkzeug stops reading such a body at ``MAX_CONTENT_LENGTH`` *silently*, so a view would get the first
    megabyte as if it were all; reading one byte more tells a body that ends at the cap from one that goes on.
    """
    stream = environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        chunk = stream.read(MAX_BODY_BYTES + 1 - size)  # a server may return less than asked: loop
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > MAX_BODY_BYTES:
        raise BodyTooLarge()
    environ["wsgi.input"] = io.BytesIO(b"".join(chunks))


_BODILESS_METHODS: Final = frozenset({"GET", "HEAD"})


def _guard_request() -> None:
    current = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not one per read
    environ = current.environ
    # By path as well: a method the route does not take leaves the endpoint unknown, and the route's own answer
    # (not one of ours) is the one to give.
    if environ.get("PATH_INFO") == AUTH_REQUEST_PATH or current.endpoint in EXEMPT_ENDPOINTS:
        return
    if (
        not environ.get("QUERY_STRING")
        and not environ.get("CONTENT_LENGTH")
        and "HTTP_TRANSFER_ENCODING" not in environ
        and (environ.get("REQUEST_METHOD") in _BODILESS_METHODS or not environ.get("wsgi.input_terminated"))
    ):
        return  # no parameters and no body that werkzeug would read: nothing to bound or check
    _guard_parameters_and_body(current, environ)


def _guard_parameters_and_body(current: Request, environ: dict[str, Any]) -> None:
    # Without the server's word that it ends the stream, werkzeug reads no unsized body at all (safe already).
    if current.content_length is None and environ.get("wsgi.input_terminated"):
        _buffer_unsized_body(environ)
    try:
        # Read the body now, whatever the view does with it later: werkzeug checks Content-Length against the
        # cap before a byte is read. (Left to the form parser, the error would be swallowed.)
        body = current.get_data(cache=True)
    except RequestEntityTooLarge:
        raise BodyTooLarge() from None
    try:
        # Werkzeug decodes the raw query string strictly wherever it is read (``current.args``,
        # ``current.full_path``): bytes that are not UTF-8 would fail there, as a 500.
        current.query_string.decode("utf-8")
    except UnicodeDecodeError:
        raise RejectedInput("the query string is not valid UTF-8") from None
    if current.path.startswith(_CHECKED_PATH_PREFIX) or current.blueprint == _UI_BLUEPRINT:
        _utf8(current.query_string, "query string")
        _check_parameters(current.args.items(multi=True), "query")
        if current.mimetype == _FORM_MIMETYPE:
            _utf8(body, "form body")
        if current.mimetype in _FORM_MIMETYPES:
            _check_parameters(current.form.items(multi=True), "form")


class RoutableEnviron:
    """WSGI middleware: for ``/internal/auth_request`` only, drops a ``Host`` that routing refuses.

    werkzeug answers 400 for a host label over 63 characters before any view runs, and nginx turns that 400
    into a 500 for the client; the check never reads ``Host`` (nginx sends the original URI in
    ``X-Original-URI``).
    """

    def __init__(self, app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == AUTH_REQUEST_PATH:
            host = environ.get("HTTP_HOST")
            if host is not None and not _routable_host(host):
                del environ["HTTP_HOST"]
        return self.app(environ, start_response)


# A proxy sends the same Host on every check: the answer is remembered, not recomputed (1.4 microseconds).
@lru_cache(maxsize=64)
def _routable_host(host_header: str) -> bool:
    # What werkzeug's Map.bind_to_environ does with the host; a UnicodeError there becomes BadHost (400).
    try:
        get_host("http", host_header).lower().partition(":")[0].encode("idna")
    except UnicodeError:
        return False
    return True


def install(app: Flask) -> None:
    """The edge for ``app``: body cap, JSON bounds and the parameter checks (before every other hook)."""
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    provider = BoundedJSONProvider(app)
    provider.sort_keys = app.json.sort_keys  # type: ignore[attr-defined]  # the app's output settings stay
    app.json = provider
    app.before_request_funcs.setdefault(None, []).insert(0, _guard_request)


def is_rejection(error: HTTPException) -> bool:
    """Whether ``error`` carries a message meant for the client as it is."""
    return isinstance(error, RejectedInput | BodyTooLarge)
