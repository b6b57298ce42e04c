"""``Idempotency-Key`` on the creating POSTs: a client that lost an answer retries and gets the same answer.

Without the header a view runs exactly as it always did. With it, for an authenticated caller allowed to
write, the key names one request of that caller for 24 hours (``infrastructure.idempotency`` keeps the
records):

* a new key: the view runs and hands ``idempotency_slot()`` to its service command, whose transaction
  records the key with the command's result; the answer the view builds is then kept on the same record;
* a key already recorded for the same request (method, path, parameters): the original answer is replayed,
  status and body (a token value included), with ``Idempotent-Replayed: true``. When the answer was never
  kept (the process died between the commit and the answer) it is rebuilt from the recorded result and the
  current read models by the view's ``rebuild``;
* a key already recorded for another request: 422. A concurrent request with the same key waits for the
  first one's transaction, then replays it; 409 when that transaction holds the key past the lock bound;
* a malformed key (empty, longer than 255 characters, anything but printable ASCII): 400.

A replay checks who is asking (the same user, with a token that may write), not the view's other rules: it
hands back an answer that user was already given.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast

from flask import Response, current_app, g, request
from flask.typing import ResponseReturnValue

from api.auth import optional_principal
from api.context import runtime
from api.params import request_params
from infrastructure.idempotency import (
    IdempotencyKeyBusy,
    IdempotencyKeyTaken,
    IdempotencySlot,
    KeptResponse,
    Recorded,
)
from infrastructure.keys import digests_match

log = logging.getLogger(__name__)

HEADER: Final = "Idempotency-Key"
REPLAYED_HEADER: Final = "Idempotent-Replayed"
MAX_KEY_LENGTH: Final = 255
# Marks a view as honouring the header; the OpenAPI document reads it.
IDEMPOTENT_ATTRIBUTE: Final = "idempotent"

# Not part of an answer to replay: recomputed (length, date) or never to be handed out twice (cookies).
_UNKEPT_HEADERS: Final = frozenset({"content-length", "date", "set-cookie", "server"})

F = TypeVar("F", bound=Callable[..., ResponseReturnValue])
T = TypeVar("T")

# Builds the answer from a recorded result and the view's own arguments.
Rebuild = Callable[..., ResponseReturnValue]


class InvalidIdempotencyKey(Exception):
    """400: the header is not one key of 1 to 255 printable ASCII characters."""


class IdempotencyKeyReused(Exception):
    """422: the key was recorded for another request of this caller."""


def parse_key(raw: str) -> str:
    """The key, from the header's value: bare text, or the same text as a quoted Structured Field string.

    Both spellings of one key are the same key. A header sent twice reaches WSGI joined by ", ", as one value.
    """
    key = _sf_string(raw) if raw.startswith('"') else raw
    if key is None or not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
        )
    return key


def _sf_string(raw: str) -> str | None:
    """A quoted string in which only ``\\"`` and ``\\\\`` are escaped; None when it is not one."""
    if len(raw) < 2 or not raw.endswith('"'):
        return None
    characters: list[str] = []
    inner = iter(raw[1:-1])
    for character in inner:
        if character == "\\":
            escaped = next(inner, None)
            if escaped not in ('"', "\\"):
                return None
            characters.append(escaped)
        elif character == '"':
            return None
        else:
            characters.append(character)
    return "".join(characters)


def canonical_request(method: str, path: str, params: Mapping[str, Any]) -> str:
    """One text per request: the same parameters sent as JSON, form or query string are the same request."""
    return json.dumps([method.upper(), path, params], sort_keys=True, separators=(",", ":"))


def idempotency_slot() -> IdempotencySlot | None:
    """What a creating view hands its service command: the key's slot, or None without the header."""
    slot = g.get("idempotency_slot")
    return slot if isinstance(slot, IdempotencySlot) else None


def rebuilt(found: T | None) -> T:
    """For a ``rebuild``: the object its recorded result names, which the read models must show."""
    if found is None:
        raise IdempotencyKeyBusy("the request with this Idempotency-Key has not finished")
    return found


def idempotent(rebuild: Rebuild) -> Callable[[F], F]:
    """Honour ``Idempotency-Key`` on a creating view.

    ``rebuild(result, *args, **kwargs)`` answers from the command's recorded result (the mapping the service
    command stored: ids, a token value) and the view's own arguments, reading the current read models.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def keyed(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            raw = request.headers.get(HEADER)
            if raw is None:
                return view(*args, **kwargs)
            key = parse_key(raw)
            principal = optional_principal()
            if principal is None or not principal.can_write:
                return view(*args, **kwargs)  # refused there, as without the header; nothing is recorded
            records = runtime().idempotency
            request_text = canonical_request(request.method, request.path, request_params())
            slot = records.slot(principal.user.user_id, key, request_text, runtime().clock.now())
            found = records.find(slot)
            if found is not None:
                return _replay(found, slot, rebuild, args, kwargs)
            records.purge_expired(slot.created_at)
            g.idempotency_slot = slot
            try:
                response = current_app.make_response(view(*args, **kwargs))
            except IdempotencyKeyTaken:
                # A concurrent request with this key committed first; this one's transaction rolled back.
                found = records.find(slot)
                if found is None:
                    raise IdempotencyKeyBusy("a request with this Idempotency-Key is still running") from None
                return _replay(found, slot, rebuild, args, kwargs)
            finally:
                g.pop("idempotency_slot", None)
            if slot.written and 200 <= response.status_code < 300:
                _keep(slot, response)
            return response

        keyed.__dict__[IDEMPOTENT_ATTRIBUTE] = True
        return cast(F, keyed)

    return decorate


def _keep(slot: IdempotencySlot, response: Response) -> None:
    kept = KeptResponse(
        response.status_code,
        tuple(
            (name, value) for name, value in response.headers.items() if name.lower() not in _UNKEPT_HEADERS
        ),
        response.get_data(),
    )
    try:
        slot.records.keep_response(slot, kept)
    except Exception:
        # The command has committed and its answer is built: the client gets it. A replay rebuilds it from
        # the recorded result instead.
        log.warning(
            "the answer to an idempotent request was not kept; a replay will rebuild it", exc_info=True
        )


def _replay(
    found: Recorded, slot: IdempotencySlot, rebuild: Rebuild, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Response:
    if not digests_match(found.request_digest, slot.request_digest):
        raise IdempotencyKeyReused("Idempotency-Key was already used for a different request")
    if found.response is not None:
        kept = found.response
        response = Response(kept.body, status=kept.status, headers=list(kept.headers))
    elif found.result is not None:
        # The original answer was never kept: the result was committed with the events, so the read models
        # can show what it names once they include them.
        runtime().projector.catch_up()
        response = current_app.make_response(rebuild(found.result, *args, **kwargs))
    else:
        raise IdempotencyKeyBusy("the answer recorded for this Idempotency-Key cannot be read")
    response.headers[REPLAYED_HEADER] = "true"
    return response
