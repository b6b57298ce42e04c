"""The directory's blueprint, and what its routes share: who is asking, and the 201 and 202 answers."""

from __future__ import annotations

from typing import Any, Final

from flask import Blueprint, Response, jsonify

from api.auth import optional_principal
from domain.actors import Actor

directory = Blueprint("directory", __name__, url_prefix="/api/v4")

# The errors of a creating route whose target may exist already.
WITH_CONFLICT: Final = (400, 401, 403, 404, 409)


def viewer() -> Actor | None:
    """The caller as the services see them; None when no credential was sent (a bad one is a 401)."""
    principal = optional_principal()
    return None if principal is None else principal.actor


def created(body: Any) -> Response:
    response: Response = jsonify(body)
    response.status_code = 201
    return response


def accepted() -> Response:
    """GitLab's answer to a deletion it has accepted (here, already done): ``202 {"message": "202 Accepted"}``."""
    response: Response = jsonify(message="202 Accepted")
    response.status_code = 202
    return response
