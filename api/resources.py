"""Projects and groups in URLs: a numeric id or a URL-encoded full path (``acme%2Fweb``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from api.context import runtime
from domain.errors import NotFound

_BIGINT_MAX = 2**63 - 1


def _numeric(reference: str) -> bool:
    """An id is ASCII digits only (``"²".isdigit()`` is true, but it is no id)."""
    return reference.isascii() and reference.isdigit()


def _id(reference: str, missing: str) -> int:
    """A numeric reference as an id; beyond BIGINT it names nothing (404), never an overflow in the driver."""
    number = int(reference)
    if number > _BIGINT_MAX:
        raise NotFound(missing)
    return number


def _printable(reference: str) -> bool:
    return reference.isprintable() and not any(0xD800 <= ord(character) <= 0xDFFF for character in reference)


def project_id(reference: str) -> int:
    if not _printable(reference):
        raise NotFound("404 Project")
    if _numeric(reference):
        return _id(reference, "404 Project")
    project = runtime().read.project_by_path(reference.replace(":", "/"))
    if project is None:
        raise NotFound("404 Project")
    return project.project_id


def group_id(reference: str) -> int:
    if not _printable(reference):
        raise NotFound("404 Group")
    if _numeric(reference):
        return _id(reference, "404 Group")
    namespace = runtime().read.namespace_by_path(reference.replace(":", "/"))
    if namespace is None or namespace.kind != "group":
        raise NotFound("404 Group")
    return namespace.namespace_id


def one_segment(reference: str) -> str:
    """A reference for a destructive route: an id or a URL-encoded full path, never bare slashes (they would
    let ``DELETE /projects/5/<a route that does not exist>`` name project ``5/...``)."""
    if "/" in reference:
        raise NotFound("404")
    return reference


def past_reference(reference: str, missing: str) -> int | str:
    """A reference to a project or group as it was: an id, or a full path resolved later against the past
    (point-in-time answers), never against the holder that has the path now."""
    if not _printable(reference):
        raise NotFound(missing)
    if _numeric(reference):
        return _id(reference, missing)
    return reference.replace(":", "/")


def holder_id(kind: str, reference: str) -> int:
    return project_id(reference) if kind == "project" else group_id(reference)


class EncodedPathMiddleware:
    """Keeps a URL-encoded full path (``acme%2Fdeploy_tokens``) one segment, as GitLab does.

    The server decodes ``%2F`` before routing, so ``/projects/acme%2Fdeploy_tokens`` would otherwise be read
    as the deploy-token list of project ``acme``. For the ``projects`` and ``groups`` trees the id segment is
    taken from the raw request URI and its slashes are written as ``:`` (never part of a GitLab path), which
    ``project_id``/``group_id`` turn back into slashes.
    """

    _PREFIXES = ("/api/v4/projects/", "/api/v4/groups/")

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
        path = raw.split("?", 1)[0]
        for prefix in self._PREFIXES:
            if path.startswith(prefix):
                segment, slash, rest = path[len(prefix) :].partition("/")
                if "%2f" in segment.lower():
                    # PATH_INFO holds bytes read as Latin-1 (PEP 3333), which werkzeug decodes as UTF-8.
                    decoded = unquote_to_bytes(segment).decode("latin-1").replace("/", ":")
                    environ["PATH_INFO"] = prefix + decoded + slash + unquote_to_bytes(rest).decode("latin-1")
                break
        return self.app(environ, start_response)
