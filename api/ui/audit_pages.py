"""The auditor pages of the web UI (behaviour [history], [activity], [auditors]): the instance audit log with
its filters and downloads, a token's page (state, last use, uses per day, recent uses), and the point-in-time
questions.

Administrators and auditors only: every page asks the access service (``require_audit_reader``), as the
audit API does; anybody else gets the 403 page, a visitor without a session the sign-in page. The pages
read; they change nothing (GET only). Parameters are parsed with the audit API's own schemas, so a page, its
download and the API take the same filters; bad input is a 400 page naming the field, never a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final
from urllib.parse import urlencode

from flask import g, render_template, request, url_for
from flask.typing import ResponseReturnValue
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from api.audit import BIGINT_MAX, ExportQuerySchema, export_response, holder_now_or_then, start_export
from api.context import runtime
from api.resources import past_reference
from api.schemas import UtcInstant
from api.ui.charts import uses_per_day_svg
from api.ui.presenters import expiry_of
from api.ui.views import current_principal, require_principal, ui
from deploy_tokens.access import Principal
from domain.errors import NotFound, PermissionDenied, Unauthenticated
from projections.access import Action
from projections.audit_directory import holder_path_at
from projections.audit_log_queries import (
    AuditLogFilter,
    audit_log_count,
    audit_log_page,
    daily_uses,
    event_types,
    last_use,
    recent_uses,
)
from projections.audit_queries import AuditFilter, AuditRecord
from projections.audit_rows import TARGET_DEPLOY_TOKEN
from projections.credentials import TokenRecord
from projections.point_in_time import token_state_at, who_could

PER_PAGE_CHOICES: Final = (20, 50, 100)
CHART_DAYS: Final = (7, 30, 90)
RECENT_USES: Final = 50
COUNT_CAP: Final = 10_000  # the log page counts its rows up to this many ("more than 10,000")
ACTIONS: Final = tuple(action.value for action in Action if action is not Action.API)
FILTER_FIELDS: Final = ("token_id", "project", "group", "actor_username", "event_type", "since", "until")
_LABELS: Final = {
    "token_id": "Token ID",
    "project": "Project",
    "group": "Group",
    "actor_username": "Actor",
    "event_type": "Event type",
    "since": "From",
    "until": "Until",
    "per_page": "Rows per page",
    "before": "Page",
    "after": "Page",
    "days": "Period",
    "action": "Action",
    "at": "Instant",
    "question": "Question",
}


def _audit_reader() -> Principal:
    """The signed-in administrator or auditor; the access service decides (403 for anybody else)."""
    principal = require_principal()
    runtime().access.require_audit_reader(principal.actor)
    return principal


@ui.context_processor
def _audit_navigation() -> dict[str, Any]:
    def reads_audit() -> bool:
        """Whether the signed-in user sees the auditor pages (for the navigation), asked once a request."""
        if "ui_reads_audit" not in g:
            principal = current_principal()
            allowed = principal is not None
            if principal is not None:
                try:
                    runtime().access.require_audit_reader(principal.actor)
                except (PermissionDenied, Unauthenticated):
                    allowed = False
            g.ui_reads_audit = allowed
        return bool(g.ui_reads_audit)

    return {"reads_audit": reads_audit}


# Parameters --------------------------------------------------------------------------------------------


def _given(names: tuple[str, ...]) -> dict[str, str]:
    """The named query parameters that were filled in (an empty form field is no filter)."""
    return {name: value for name in names if (value := request.args.get(name, "").strip())}


def _messages(error: ValidationError) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    for key, value in messages.items():
        texts = value if isinstance(value, list) else [str(value)]
        found.setdefault(str(key), []).extend(str(text) for text in texts)
    return found


class AuditLogQuerySchema(ExportQuerySchema):
    """The export's filters (``upto`` aside, unused here) and the page's own paging."""

    before = fields.Integer(validate=validate.Range(min=1, max=BIGINT_MAX))
    after = fields.Integer(validate=validate.Range(min=0, max=BIGINT_MAX))
    per_page = fields.Integer(load_default=50, validate=validate.OneOf(PER_PAGE_CHOICES))

    @validates_schema
    def _consistent(self, data: dict[str, Any], **_: Any) -> None:
        if "project" in data and "group" in data:
            raise ValidationError("give a project or a group, not both", "group")
        if "before" in data and "after" in data:
            raise ValidationError("give one page bound, not two", "after")
        since, until = data.get("since"), data.get("until")
        if since is not None and until is not None and since >= until:
            raise ValidationError("must be later than From", "until")


@dataclass(frozen=True)
class LogRow:
    record: AuditRecord
    namespace_path: str | None  # where the project or group was when the row was written
    token_url: str | None


def _namespace_path(record: AuditRecord) -> str | None:
    if record.namespace_kind not in ("project", "group") or record.namespace_id is None:
        return None
    found = holder_path_at(runtime().db, record.namespace_kind, record.namespace_id, record.position)
    return None if found is None else found[0]


def _log_row(record: AuditRecord) -> LogRow:
    token_url = None
    if record.target_type == TARGET_DEPLOY_TOKEN and record.target_id is not None:
        token_url = url_for("ui.audit_token", token_id=record.target_id)
    return LogRow(record, _namespace_path(record), token_url)


def _log_selection(params: dict[str, Any]) -> tuple[AuditLogFilter | None, dict[str, list[str]]]:
    """The audit rows the parameters select; a project or group that names nothing is a field error."""
    namespace_kind: str | None = None
    namespace_id: int | None = None
    for kind in ("project", "group"):
        if kind in params:
            try:
                namespace_kind, namespace_id = kind, holder_now_or_then(kind, params[kind])
            except NotFound:
                return None, {kind: [f"names no {kind}, now or in the past"]}
    rows = AuditFilter(
        token_id=params.get("token_id"),
        namespace_kind=namespace_kind,
        namespace_id=namespace_id,
        actor_username=params.get("actor_username"),
        since=params.get("since"),
        until=params.get("until"),
    )
    return AuditLogFilter(rows, params.get("event_type")), {}


def _render_log(
    filters: dict[str, str], errors: dict[str, list[str]], params: dict[str, Any] | None
) -> ResponseReturnValue:
    db = runtime().db
    query: dict[str, Any] = dict(filters)
    context: dict[str, Any] = {
        "filters": filters,
        "errors": errors,
        "labels": _LABELS,
        "event_types": event_types(db),
        "per_page_choices": PER_PAGE_CHOICES,
        "per_page": PER_PAGE_CHOICES[1],
        "rows": [],
        "total": None,
        "newest_url": None,
        "newer_url": None,
        "older_url": None,
        "downloads": {},
    }
    selection = None
    if params is not None and not errors:
        selection, errors = _log_selection(params)
        context["errors"] = errors
    if selection is None or params is None:
        return render_template("ui/audit_log.html", **context), 400 if errors else 200
    per_page = params["per_page"]
    page = audit_log_page(
        db, selection, limit=per_page, before=params.get("before"), after=params.get("after")
    )
    kept: dict[str, Any] = {
        **filters,
        **({"per_page": str(per_page)} if per_page != PER_PAGE_CHOICES[1] else {}),
    }
    context.update(
        per_page=per_page,
        rows=[_log_row(record) for record in page.rows],
        total=audit_log_count(db, selection, cap=COUNT_CAP),
        count_cap=COUNT_CAP,
        newest_url=url_for("ui.audit_log", **kept) if "before" in params or "after" in params else None,
        newer_url=None if page.newer is None else url_for("ui.audit_log", **kept, after=page.newer),
        older_url=None if page.older is None else url_for("ui.audit_log", **kept, before=page.older),
        downloads={kind: url_for("ui.audit_log_export", kind=kind, **query) for kind in ("csv", "jsonl")},
        api_query=urlencode(filters),
    )
    return render_template("ui/audit_log.html", **context)


@ui.get("/admin/audit_logs")
def audit_log() -> ResponseReturnValue:
    """The instance audit log, newest first, filtered and paged (behaviour [history], [audit-types])."""
    _audit_reader()
    filters = _given(FILTER_FIELDS)
    try:
        params = AuditLogQuerySchema().load(
            {**filters, **_given(("before", "after", "per_page"))}, unknown="exclude"
        )
    except ValidationError as error:
        return _render_log(filters, _messages(error), None)
    return _render_log(filters, {}, params)


@ui.get("/admin/audit_logs/export.<any(csv, jsonl):kind>")
def audit_log_export(kind: str) -> ResponseReturnValue:
    """The page's rows as the lifecycle export (CSV or JSON Lines, behaviour [exports]), the same filter."""
    _audit_reader()
    filters = _given(FILTER_FIELDS)
    try:
        params = AuditLogQuerySchema().load(filters, unknown="exclude")
        _, errors = _log_selection(params)
        if errors:
            return _render_log(filters, errors, None)
        job = start_export(params, "lifecycle", kind)
    except ValidationError as error:
        return _render_log(filters, _messages(error), None)
    return export_response(job, "lifecycle", kind)


# A token's page ----------------------------------------------------------------------------------------


class TokenPageSchema(Schema):
    days = fields.Integer(load_default=30, validate=validate.OneOf(CHART_DAYS))


def _holder_path(token: TokenRecord) -> str | None:
    read = runtime().read
    if token.holder_kind == "project":
        project = read.project(token.holder_id)
        return None if project is None else project.full_path
    namespace = read.namespace(token.holder_id)
    return None if namespace is None else namespace.full_path


@ui.get("/admin/deploy_tokens/<int:token_id>")
def audit_token(token_id: int) -> ResponseReturnValue:
    """A token as auditors see it: its state, last use, uses per day (allowed vs denied) and recent uses."""
    _audit_reader()
    rt = runtime()
    token = rt.read.token(token_id)
    if token is None:
        raise NotFound("404 Token")
    errors: dict[str, list[str]] = {}
    try:
        days = int(TokenPageSchema().load(_given(("days",)), unknown="exclude")["days"])
    except ValidationError as error:
        errors = _messages(error)
        days = 30
    now = rt.clock.now()
    today = now.date()
    per_day = daily_uses(rt.db, token_id, today - timedelta(days=days - 1), today)
    html = render_template(
        "ui/audit_token.html",
        token=token,
        status=token.state(now).capitalize(),
        expiry=expiry_of(token, now),
        holder_path=_holder_path(token),
        last=last_use(rt.db, token_id),
        recent=recent_uses(rt.db, token_id, limit=RECENT_USES),
        per_day=per_day,
        chart=uses_per_day_svg(
            per_day,
            title=f"Uses per day of deploy token {token.name} (ID {token.token_id}), the last {days} days",
            chart_id="token-uses-chart",
        ),
        days=days,
        chart_days=CHART_DAYS,
        errors=errors,
        labels=_LABELS,
        recent_limit=RECENT_USES,
        now=now,
    )
    return html, 400 if errors else 200


# Point in time -------------------------------------------------------------------------------------------


class _AtSchema(Schema):
    at = UtcInstant(required=True, error_messages={"required": "can't be blank"})

    @validates_schema
    def _at_given(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("at") is None:
            raise ValidationError("can't be blank", "at")


class WhoCouldSchema(_AtSchema):
    project = fields.String(
        required=True,
        validate=validate.Length(min=1, max=1000),
        error_messages={"required": "can't be blank"},
    )
    action = fields.String(
        required=True, validate=validate.OneOf(ACTIONS), error_messages={"required": "can't be blank"}
    )


class TokenStateSchema(_AtSchema):
    token_id = fields.Integer(
        required=True,
        validate=validate.Range(min=1, max=BIGINT_MAX),
        error_messages={"required": "can't be blank"},
    )


_QUESTIONS: Final[dict[str, tuple[type[Schema], tuple[str, ...]]]] = {
    "who_could": (WhoCouldSchema, ("project", "action", "at")),
    "token_state": (TokenStateSchema, ("token_id", "at")),
}


@ui.get("/admin/audit_logs/point_in_time")
def audit_point_in_time() -> ResponseReturnValue:
    """ "Who could do *action* on *project* at *instant*" and "a token's state at an instant", by replaying
    the log through the service's own decision (behaviour [history])."""
    _audit_reader()
    question = request.args.get("question", "")
    context: dict[str, Any] = {
        "question": question,
        "actions": ACTIONS,
        "labels": _LABELS,
        "errors": {},
        "values": {},
        "answers": None,
        "state": None,
        "prefill": _given(("token_id",)),  # from a token's page: its ID in the token-state form
    }
    if not question:
        return render_template("ui/audit_point_in_time.html", **context)
    if question not in _QUESTIONS:
        context["errors"] = {"question": ["must be who_could or token_state"]}
        return render_template("ui/audit_point_in_time.html", **context), 400
    schema, names = _QUESTIONS[question]
    values = _given(names)
    context["values"] = values
    try:
        params = schema().load(values, unknown="exclude")
    except ValidationError as error:
        context["errors"] = _messages(error)
        return render_template("ui/audit_point_in_time.html", **context), 400
    at = params["at"]
    assert at is not None
    context["at"] = at
    store = runtime().store
    try:
        if question == "who_could":
            context["answers"] = who_could(
                store,
                action=Action(params["action"]),
                project=past_reference(params["project"], "404 Project"),
                at=at,
            )
        else:
            context["state"] = token_state_at(store, params["token_id"], at)
    except NotFound:
        field = "project" if question == "who_could" else "token_id"
        thing = "no project had this path or ID" if question == "who_could" else "no token had this ID"
        context["errors"] = {field: [f"{thing} at that instant"]}
        return render_template("ui/audit_point_in_time.html", **context), 400
    return render_template("ui/audit_point_in_time.html", **context)
