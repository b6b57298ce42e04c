"""Errors in GitLab's shapes: every failure is a clear 4xx, never a 500 for bad input.

GitLab answers parameter errors as ``{"error": "name is missing"}`` and model validation errors as
``{"message": {"field": ["message"]}}``; not found, forbidden and unauthorized as
``{"message": "404 Project Not Found"}``, ``{"message": "403 Forbidden"}``, ``{"message": "401 Unauthorized"}``.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import marshmallow
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from api.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from api.input_limits import is_rejection
from domain.errors import (
    Conflict,
    NotFound,
    PermissionDenied,
    Refused,
    TokenDeleted,
    Unauthenticated,
    ValidationError,
)
from infrastructure.db import database_unavailable
from infrastructure.idempotency import IdempotencyKeyBusy, IdempotencyKeyTaken
from projections.credential_index import StaleIndex

log = logging.getLogger(__name__)


def _json(status: int, **body: object) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


def parameter_error_message(errors: dict[str, object]) -> str:
    """Grape's sentence: ``name is missing, scopes does not have a valid value``."""
    parts = []
    for field, messages in errors.items():
        if isinstance(messages, dict):  # nested (list items): flatten to the field
            messages = [message for value in messages.values() for message in value]
        for message in messages if isinstance(messages, list) else [messages]:
            parts.append(f"{field} {message}")
    return ", ".join(parts)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(marshmallow.ValidationError)
    def bad_parameters(error: marshmallow.ValidationError) -> Response:
        messages = error.messages if isinstance(error.messages, dict) else {"base": error.messages}
        return _json(400, error=parameter_error_message(messages))

    @app.errorhandler(ValidationError)
    def invalid(error: ValidationError) -> Response:
        return _json(400, message=error.errors)

    @app.errorhandler(Refused)
    def refused(error: Refused) -> Response:
        return _json(400, message=str(error))

    @app.errorhandler(NotFound)
    def not_found(error: NotFound) -> Response:
        return _json(404, message=str(error))

    @app.errorhandler(TokenDeleted)
    def deleted(error: TokenDeleted) -> Response:
        return _json(404, message="404 Token Not Found")

    @app.errorhandler(PermissionDenied)
    def forbidden(error: PermissionDenied) -> Response:
        return _json(403, message=error.reason)

    @app.errorhandler(Unauthenticated)
    def unauthorized(error: Unauthenticated) -> Response:
        return _json(401, message="401 Unauthorized")

    @app.errorhandler(Conflict)
    def conflict(error: Conflict) -> Response:
        return _json(409, message=str(error))

    @app.errorhandler(StaleIndex)
    def stale(error: StaleIndex) -> Response:
        response = _json(503, message="503 Service Unavailable - credential data is not current; try again")
        response.headers["Retry-After"] = "1"
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        if is_rejection(error):  # the edge's refusals say what was wrong with the request
            return _json(status, error=error.description)
        return _json(status, error=f"{status} {error.name}")

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        if database_unavailable(error):
            # The client can only wait and retry; the cause goes to the log, once per kind of cause.
            _log_outage(error)
            response = _json(
                503, message="503 Service Unavailable - the database is not available; try again"
            )
            response.headers["Retry-After"] = str(DATABASE_RETRY_AFTER)
            return response
        log.exception("unhandled error")
        return _json(500, message="500 Internal Server Error")

    @app.errorhandler(InvalidIdempotencyKey)
    def invalid_idempotency_key(error: InvalidIdempotencyKey) -> Response:
        return _json(400, error=str(error))

    @app.errorhandler(IdempotencyKeyReused)
    def idempotency_key_reused(error: IdempotencyKeyReused) -> Response:
        return _json(422, message=f"422 Unprocessable Entity - {error}")

    @app.errorhandler(IdempotencyKeyBusy)
    @app.errorhandler(IdempotencyKeyTaken)
    def idempotency_key_busy(error: IdempotencyKeyBusy | IdempotencyKeyTaken) -> Response:
        response = _json(409, message=f"409 Conflict - {error}")
        response.headers["Retry-After"] = "1"
        return response


DATABASE_RETRY_AFTER: Final = 5
_OUTAGE_LOG_INTERVAL: Final = 60.0
_outages_logged_at: dict[str, float] = {}


def _log_outage(error: BaseException) -> None:
    """Once a minute per kind of cause: a request a second during an outage is not a log line a second."""
    kind = type(error.__cause__ or error).__name__
    now = time.monotonic()
    if now - _outages_logged_at.get(kind, -_OUTAGE_LOG_INTERVAL) >= _OUTAGE_LOG_INTERVAL:
        _outages_logged_at[kind] = now
        log.warning("database unavailable (%s); answering 503 until it is back", kind, exc_info=error)
