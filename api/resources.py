"""Projects and groups in URLs: a numeric id or a URL-encoded full path (``acme%2Fweb``)."""

from __future__ import annotations

from api.context import runtime
from domain.errors import NotFound


def _numeric(reference: str) -> bool:
    """An id is ASCII digits only (``"²".isdigit()`` is true, but it is no id)."""
    return reference.isascii() and reference.isdigit()


def _printable(reference: str) -> bool:
    return reference.isprintable() and not any(0xD800 <= ord(character) <= 0xDFFF for character in reference)


def project_id(reference: str) -> int:
    if not _printable(reference):
        raise NotFound("404 Project")
    if _numeric(reference):
        return int(reference)
    project = runtime().read.project_by_path(reference)
    if project is None:
        raise NotFound("404 Project")
    return project.project_id


def group_id(reference: str) -> int:
    if not _printable(reference):
        raise NotFound("404 Group")
    if _numeric(reference):
        return int(reference)
    namespace = runtime().read.namespace_by_path(reference)
    if namespace is None or namespace.kind != "group":
        raise NotFound("404 Group")
    return namespace.namespace_id


def holder_id(kind: str, reference: str) -> int:
    return project_id(reference) if kind == "project" else group_id(reference)
