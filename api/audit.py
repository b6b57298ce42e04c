"""Auditors' API (behaviour [history], administrators): audit events, per-token activity, point-in-time
answers, exports."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, stream_with_context
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.auth import require_principal
from api.context import runtime
from api.openapi import operation
from api.params import load
from api.resources import group_id, past_reference, project_id
from api.schemas import GitLabDateTime, UtcInstant
from deploy_tokens.exports import Export, ExportRequest
from domain.errors import NotFound
from infrastructure.activity import activity_rows
from projections.access import Action
from projections.audit_directory import holder_by_past_path
from projections.audit_queries import AuditQuery, audit_events
from projections.point_in_time import token_state_at, who_could

audit = Blueprint("audit", __name__, url_prefix="/api/v4")


def require_audit_reader() -> None:
    """Administrators and auditors read every audit route (behaviour [auditors]); anonymous callers get 401."""
    runtime().access.require_audit_reader(require_principal().actor)


BIGINT_MAX = 2**63 - 1  # ids and positions are BIGINT: larger numbers name nothing

_ACTIONS = [action.value for action in Action if action is not Action.API]


class AuditEventsQuerySchema(Schema):
    token_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    namespace_kind = fields.String(validate=validate.OneOf(["project", "group", "user", "instance"]))
    namespace_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    actor_username = fields.String(validate=validate.Length(min=1, max=255))
    since = UtcInstant(load_default=None, allow_none=True)
    until = UtcInstant(load_default=None, allow_none=True)
    after_position = fields.Integer(load_default=0, validate=validate.Range(min=0, max=BIGINT_MAX))
    per_page = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))

    @validates_schema
    def _namespace_pair(self, data: dict[str, Any], **_: Any) -> None:
        if "namespace_id" in data and "namespace_kind" not in data:
            raise ValidationError("is missing", "namespace_kind")


class AuditEventSchema(Schema):
    position = fields.Integer()
    occurred_at = GitLabDateTime()
    event_type = fields.String()
    actor_kind = fields.String()
    actor_id = fields.Integer(allow_none=True)
    actor_username = fields.String()
    actor_address = fields.String(allow_none=True)
    target_type = fields.String()
    target_id = fields.Integer(allow_none=True)
    target_name = fields.String()
    namespace_kind = fields.String()
    namespace_id = fields.Integer(allow_none=True)
    message = fields.String()
    details = fields.Dict()


@audit.get("/audit_events")
@operation(
    "Audit events (one per lifecycle event), oldest first",
    tag="audit",
    query=AuditEventsQuerySchema,
    response=AuditEventSchema,
    many=True,
)
def list_audit_events() -> ResponseReturnValue:
    require_audit_reader()
    params = load(AuditEventsQuerySchema())
    query = AuditQuery(
        token_id=params.get("token_id"),
        namespace_kind=params.get("namespace_kind"),
        namespace_id=params.get("namespace_id"),
        actor_username=params.get("actor_username"),
        since=params["since"],
        until=params["until"],
        after_position=params["after_position"],
        limit=params["per_page"],
    )
    records = audit_events(runtime().db, query)
    return jsonify(AuditEventSchema(many=True).dump([record.__dict__ for record in records]))


class ActivityQuerySchema(Schema):
    since = UtcInstant(load_default=None, allow_none=True)
    until = UtcInstant(load_default=None, allow_none=True)
    after_id = fields.Integer(load_default=None, validate=validate.Range(min=0, max=BIGINT_MAX))
    per_page = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class ActivitySchema(Schema):
    id = fields.Integer()
    occurred_at = GitLabDateTime()
    token_id = fields.Integer(allow_none=True)
    token_ref = fields.String(allow_none=True)
    endpoint = fields.String()
    action = fields.String()
    resource_kind = fields.String(allow_none=True)
    resource_ref = fields.String(allow_none=True)
    allowed = fields.Boolean()
    reason = fields.String()
    status = fields.Integer()
    client_addr = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)


@audit.get("/deploy_tokens/<int:token_id>/activity")
@operation(
    "A deploy token's recorded uses (allowed and denied)",
    tag="audit",
    query=ActivityQuerySchema,
    response=ActivitySchema,
    many=True,
)
def token_activity(token_id: int) -> ResponseReturnValue:
    require_audit_reader()
    params = load(ActivityQuerySchema())
    rows = activity_rows(
        runtime().db,
        token_id,
        params["since"],
        params["until"],
        after_id=params["after_id"],
        limit=params["per_page"],
    )
    return jsonify(ActivitySchema(many=True).dump([{"id": row.id, **row.event._asdict()} for row in rows]))


class AtSchema(Schema):
    at = UtcInstant(required=True, error_messages={"required": "is missing"})

    @validates_schema
    def _at_given(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("at") is None:
            raise ValidationError("is missing", "at")


class TokenStateSchema(Schema):
    token_id = fields.Integer()
    at = GitLabDateTime()
    version = fields.Integer()
    name = fields.String()
    username = fields.String()
    holder_kind = fields.String()
    holder_id = fields.Integer()
    scopes = fields.List(fields.String())
    expires_at = GitLabDateTime(allow_none=True)
    revoked = fields.Boolean()
    expired = fields.Boolean()
    deleted = fields.Boolean()
    holder_path = fields.String(allow_none=True)
    holder_deleted = fields.Boolean()


@audit.get("/deploy_tokens/<int:token_id>/state")
@operation(
    "A deploy token's state as of a past instant, by replaying its events",
    tag="audit",
    query=AtSchema,
    response=TokenStateSchema,
)
def token_state(token_id: int) -> ResponseReturnValue:
    require_audit_reader()
    params = load(AtSchema())
    return jsonify(TokenStateSchema().dump(token_state_at(runtime().store, token_id, params["at"]).as_dict()))


class AccessQuerySchema(AtSchema):
    action = fields.String(
        required=True, validate=validate.OneOf(_ACTIONS), error_messages={"required": "is missing"}
    )


class AccessSchema(Schema):
    token_id = fields.Integer()
    name = fields.String()
    username = fields.String()
    holder_kind = fields.String()
    holder_id = fields.Integer()
    scopes = fields.List(fields.String())
    created_at = GitLabDateTime()
    created_by = fields.String(allow_none=True)
    holder_path = fields.String(allow_none=True)


@audit.get("/projects/<path:reference>/deploy_token_access")
@operation(
    "Which deploy tokens could perform an action on the project at an instant, and who created them",
    tag="audit",
    query=AccessQuerySchema,
    response=AccessSchema,
    many=True,
)
def deploy_token_access(reference: str) -> ResponseReturnValue:
    require_audit_reader()
    params = load(AccessQuerySchema())
    answers = who_could(
        runtime().store,
        action=Action(params["action"]),
        project=past_reference(reference, "404 Project"),
        at=params["at"],
    )
    return jsonify(AccessSchema(many=True).dump([answer.as_dict() for answer in answers]))


class ExportQuerySchema(Schema):
    token_id = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    project = fields.String(validate=validate.Length(min=1, max=1000))
    group = fields.String(validate=validate.Length(min=1, max=1000))
    since = UtcInstant(load_default=None, allow_none=True)
    until = UtcInstant(load_default=None, allow_none=True)
    upto = fields.Integer(validate=validate.Range(min=0, max=BIGINT_MAX))
    # Lifecycle only, as the auditor pages filter the audit log (api/ui/audit_pages.py).
    actor_username = fields.String(validate=validate.Length(min=1, max=255))
    event_type = fields.String(validate=validate.Length(min=1, max=255))


class ManifestSchema(Schema):
    dataset = fields.String()
    format = fields.String()
    filters = fields.Dict()
    upto = fields.Integer()
    rows = fields.Integer()
    bytes = fields.Integer()
    sha256 = fields.String()
    log_range = fields.Dict()
    chain_head = fields.Dict()


def holder_now_or_then(kind: str, reference: str) -> int:
    """An export's holder: by id (deleted ones too), by its path now, or else by the path it had last."""
    try:
        return project_id(reference) if kind == "project" else group_id(reference)
    except NotFound:
        if isinstance(past := past_reference(reference, f"404 {kind.title()}"), int):
            raise
        found = holder_by_past_path(runtime().db, kind, past)
        if found is None:
            raise
        return found


def _export(dataset: str, kind: str) -> Export:
    return start_export(load(ExportQuerySchema()), dataset, kind)


def start_export(params: dict[str, Any], dataset: str, kind: str) -> Export:
    """An export of ``ExportQuerySchema``'s loaded parameters; the auditor pages' downloads start here too."""
    namespace_kind, namespace_id = None, None
    if "project" in params:
        namespace_kind, namespace_id = "project", holder_now_or_then("project", params["project"])
    elif "group" in params:
        namespace_kind, namespace_id = "group", holder_now_or_then("group", params["group"])
    request = ExportRequest(
        dataset=dataset,  # type: ignore[arg-type]
        format=kind,  # type: ignore[arg-type]
        token_id=params.get("token_id"),
        namespace_kind=namespace_kind,
        namespace_id=namespace_id,
        since=params["since"],
        until=params["until"],
        upto=params.get("upto"),
        actor_username=params.get("actor_username"),
        event_type=params.get("event_type"),
    )
    try:
        return Export(runtime().db, request, runtime().keys.chain_key)
    except ValueError as error:  # a filter that does not apply to this dataset
        raise ValidationError({"dataset": [str(error)]}) from None


_MEDIA = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@audit.get("/audit/exports/<any(lifecycle, usage, usage_set_aside):dataset>.<any(csv, jsonl):kind>")
@operation(
    "Compliance export, streamed (repeat with upto= from X-Export-Upto for the same bytes)",
    tag="audit",
    query=ExportQuerySchema,
    extra_responses={200: "the export"},
)
def export(dataset: str, kind: str) -> ResponseReturnValue:
    require_audit_reader()
    return export_response(_export(dataset, kind), dataset, kind)


def export_response(job: Export, dataset: str, kind: str) -> Response:
    """The export streamed as a download (the auditor pages' downloads answer the same way)."""
    response = Response(stream_with_context(job.chunks()), mimetype=_MEDIA[kind])
    response.headers["X-Export-Upto"] = str(job.manifest.upto)
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{dataset}-upto-{job.manifest.upto}.{kind}"'
    )
    return response


@audit.get("/audit/exports/<any(lifecycle, usage, usage_set_aside):dataset>.<any(csv, jsonl):kind>/manifest")
@operation(
    "The manifest of an export: filters, rows, SHA-256, log range and chain head",
    tag="audit",
    query=ExportQuerySchema,
    response=ManifestSchema,
)
def export_manifest(dataset: str, kind: str) -> ResponseReturnValue:
    require_audit_reader()
    job = _export(dataset, kind)
    for _ in job.chunks():  # the hash needs the bytes; they are produced and dropped, page by page
        pass
    return jsonify(ManifestSchema().dump(job.manifest.__dict__))
