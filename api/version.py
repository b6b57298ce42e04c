"""GitLab's ``GET /api/v4/metadata`` and ``GET /api/v4/version``, answered with this service's own version.

Clients ask these to learn what they talk to (python-gitlab's ``gl.version()``). Since GitLab 15.5 ``/version``
mirrors ``/metadata``; both answer authenticated callers only (401 otherwise). The version comes from the
installed package's metadata; the revision from the commit a VCS install recorded, else ``unknown``. There is no
agent server for Kubernetes (``kas``) and no Enterprise Edition here.
"""

from __future__ import annotations

import functools
import json
from importlib import metadata
from typing import Any

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue
from marshmallow import Schema, fields

from api.auth import require_principal
from api.openapi import operation

version_api = Blueprint("version", __name__, url_prefix="/api/v4")

DISTRIBUTION = "deploy-tokens"
UNKNOWN = "unknown"


class KasSchema(Schema):
    enabled = fields.Boolean()
    external_url = fields.String(data_key="externalUrl", allow_none=True)
    external_k8s_proxy_url = fields.String(data_key="externalK8sProxyUrl", allow_none=True)
    version = fields.String(allow_none=True)


class MetadataSchema(Schema):
    version = fields.String()
    revision = fields.String()
    kas = fields.Nested(KasSchema)
    enterprise = fields.Boolean()


@functools.cache
def service_version() -> tuple[str, str]:
    """(version, revision) of the installed package; read once per process."""
    try:
        distribution = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNKNOWN, UNKNOWN
    revision = UNKNOWN
    try:
        recorded = json.loads(distribution.read_text("direct_url.json") or "{}")
        commit = recorded.get("vcs_info", {}).get("commit_id")
        if isinstance(commit, str) and commit:
            revision = commit[:11]  # GitLab's revision is an 11-character abbreviated commit
    except (ValueError, AttributeError):
        pass
    return distribution.version, revision


def instance_metadata() -> dict[str, Any]:
    version, revision = service_version()
    return {
        "version": version,
        "revision": revision,
        "kas": {"enabled": False, "external_url": None, "external_k8s_proxy_url": None, "version": None},
        "enterprise": False,
    }


@version_api.get("/metadata")
@operation("This instance's version and metadata", tag="metadata", response=MetadataSchema, errors=(401,))
def show_metadata() -> ResponseReturnValue:
    require_principal()
    return jsonify(MetadataSchema().dump(instance_metadata()))


@version_api.get("/version")
@operation(
    "This instance's version (since GitLab 15.5 a mirror of /metadata)",
    tag="metadata",
    response=MetadataSchema,
    errors=(401,),
)
def show_version() -> ResponseReturnValue:
    require_principal()
    return jsonify(MetadataSchema().dump(instance_metadata()))
