"""The web UI: *Settings > Repository > Deploy tokens* of projects and groups, as GitLab lays it out
(behaviour [manage], [ui]).

Server-rendered (Flask + Jinja); the small script in ``api/static/ui/ui.js`` only adds copy buttons, a
``<dialog>`` for the revoke confirmation and a collapse toggle, each with a plain-HTML fallback.

Permissions are the application's: every page and form asks the token service, and its
``NotFound``/``PermissionDenied`` become the 404/403 pages, as the API answers. Writes also need the ``api``
scope on the personal access token that signed in, as in the API. The value of a new token is kept in the
(encrypted, server-side) session for exactly the one GET that the POST redirects to, then deleted (behaviour [value]).
The page also lists the holder's trust policies (behaviour [federation]), read-only: they are managed through
the API.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Final
from urllib.parse import urlsplit

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from api.context import runtime
from api.ui.presenters import date_time, duration, expiry_of, scope_choices, short_date, status_of
from api.ui.sessions import (
    CSRF_FIELD,
    csrf_token,
    end_session,
    load_session,
    session_id,
    sessions,
    start_session,
    write_cookie,
)
from deploy_tokens.access import Principal
from domain.deploy_token import HolderKind, validate_name, validate_username
from domain.errors import (
    Conflict,
    ErrorCollector,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ValidationError,
)
from domain.scopes import canonical_scopes
from projections.audit_directory import holder_path_at
from projections.audit_queries import AuditQuery, audit_events
from projections.credentials import TokenRecord

log = logging.getLogger(__name__)

ui = Blueprint(
    "ui",
    __name__,
    template_folder="../templates",
    static_folder="../static",
    static_url_path="/-/ui/static",
)

_SECTION: Final = "js-deploy-tokens"  # the anchor that expiry emails link to (deploy_tokens/expiry.py)
_CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SignInRequired(Exception):
    """No live session: the visitor is sent to the sign-in page and back."""


# The signed-in user -----------------------------------------------------------------------------------


def current_principal() -> Principal | None:
    """The signed-in user: the session's personal access token, authenticated again on every request,
    so a revoked or expired token, or a blocked user, ends the session at once."""
    if "ui_principal" in g:
        cached: Principal | None = g.ui_principal
        return cached
    principal: Principal | None = None
    current = session_id()
    data = sessions().load(current)
    if current is not None and data is not None:
        try:
            principal = runtime().access.authenticate(str(data.get("pat", "")), address=request.remote_addr)
        except Unauthenticated:
            sessions().delete(current)
            g.ui_clear_cookie = True
    g.ui_session_data = data if principal is not None else None
    g.ui_principal = principal
    return principal


def require_principal() -> Principal:
    principal = current_principal()
    if principal is None:
        raise SignInRequired()
    return principal


ui.before_request(load_session)


@ui.after_request
def _finish(response: Response) -> Response:
    write_cookie(response)
    if request.endpoint != "ui.static":
        response.headers["Cache-Control"] = "no-store"
        response.vary.add("Cookie")
    response.headers["Content-Security-Policy"] = _CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


@ui.context_processor
def _template_context() -> dict[str, Any]:
    return {
        "csrf_token": csrf_token,
        "csrf_field": CSRF_FIELD,
        "principal": g.get("ui_principal"),
        "short_date": short_date,
        "date_time": date_time,
        "duration": duration,
    }


# Errors -----------------------------------------------------------------------------------------------


def _error_page(status: int, title: str, message: str) -> ResponseReturnValue:
    return render_template("ui/error.html", status=status, title=title, message=message), status


@ui.errorhandler(SignInRequired)
def _sign_in_first(_error: SignInRequired) -> ResponseReturnValue:
    target = request.full_path.rstrip("?") if request.method == "GET" else _local_path(request.referrer)
    return redirect(url_for("ui.sign_in", next=target), 302)


@ui.errorhandler(NotFound)
def _not_found(_error: NotFound) -> ResponseReturnValue:
    return _error_page(
        404, "Page not found", "The page could not be found or you don't have permission to view it."
    )


@ui.errorhandler(PermissionDenied)
def _forbidden(error: PermissionDenied) -> ResponseReturnValue:
    detail = "You don't have the permission to manage deploy tokens here."
    if (request.endpoint or "").startswith("ui.audit_"):  # the auditor pages (api/ui/audit_pages.py)
        detail = "Only administrators and auditors can see the audit pages."
    if "insufficient_scope" in error.reason:
        detail = "Your personal access token needs the api scope to change deploy tokens."
    return _error_page(403, "Access denied", detail)


@ui.errorhandler(Conflict)
def _conflict(error: Conflict) -> ResponseReturnValue:
    return _error_page(409, "Please try again", str(error))


@ui.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> ResponseReturnValue:
    status = error.code or 500
    return _error_page(status, error.name, error.description or "")


@ui.errorhandler(Exception)
def _unexpected(_error: Exception) -> ResponseReturnValue:
    log.exception("unhandled error in the web UI")
    return _error_page(500, "Something went wrong", "The request could not be completed. Try again later.")


# Holders ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """The project or group whose settings page this is."""

    kind: HolderKind
    id: int
    name: str
    full_path: str
    trail: tuple[str, ...]  # the names of the namespaces above it, outermost first
    dependency_proxy_enabled: bool | None = None  # groups only

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.id}"

    def url(self, what: str, **values: Any) -> str:
        return url_for(f"ui.{self.kind}_{what}", full_path=self.full_path, **values)

    @property
    def settings_url(self) -> str:
        return self.url("settings")


def _holder(kind: HolderKind, full_path: str) -> Holder:
    read = runtime().read
    if kind == "project":
        project = read.project_by_path(full_path)
        if project is None:
            raise NotFound("404 Project")
        above = project.group_ids or (project.namespace_id,)
        names = tuple(ns.name for ns in (read.namespace(number) for number in above) if ns is not None)
        return Holder("project", project.project_id, project.name, project.full_path, names)
    group = read.namespace_by_path(full_path)
    if group is None or group.kind != "group":
        raise NotFound("404 Group")
    names = tuple(
        ns.name for ns in (read.namespace(number) for number in group.ancestor_ids) if ns is not None
    )
    return Holder(
        "group", group.namespace_id, group.name, group.full_path, names, group.dependency_proxy_enabled
    )


def _managed(kind: HolderKind, full_path: str) -> tuple[Principal, Holder]:
    """The rules live in the token service: it alone says who may see a holder's tokens page (404 when the
    holder is hidden from the user, 403 when the role is too low) and who may change them (each command checks
    again). The UI asks it and never decides by itself."""
    principal = require_principal()
    holder = _holder(kind, full_path)
    runtime().tokens.check_token_page(principal.actor, holder.kind, holder.id)
    return principal, holder


def _tokens(holder: Holder) -> list[TokenRecord]:
    rt = runtime()
    now = rt.clock.now()
    found: list[TokenRecord] = []
    page = 1
    while True:
        batch = rt.read.tokens(
            holder_kind=holder.kind, holder_id=holder.id, active_only=False, now=now, page=page, per_page=100
        )
        found += batch.items
        if not batch.items or len(found) >= batch.total:
            return found
        page += 1


# Pages ------------------------------------------------------------------------------------------------


@dataclass
class TokenForm:
    name: str = ""
    expires_at: str = ""
    username: str = ""
    scopes: tuple[str, ...] = ()
    errors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def general_errors(self) -> list[str]:
        known = {"name", "expires_at", "username", "scopes"}
        return [message for key, messages in self.errors.items() if key not in known for message in messages]


def _token_row(token: TokenRecord, holder: Holder) -> dict[str, Any]:
    now = runtime().clock.now()
    return {
        "record": token,
        "expiry": expiry_of(token, now),
        "status": status_of(token, now),
        "revoke_url": holder.url("revoke", token_id=token.token_id),
        "history_url": holder.url("history", token_id=token.token_id),
    }


def _render_settings(
    principal: Principal, holder: Holder, form: TokenForm, *, status: int = 200, open_form: bool = False
) -> ResponseReturnValue:
    now = runtime().clock.now()
    shown: dict[str, Any] = {}
    current = session_id()
    data = g.get("ui_session_data") or {}
    if current is not None and ("created" in data or "notice" in data):
        shown = sessions().take(current, "created", "notice")
    created = shown.get("created")
    if not isinstance(created, dict) or created.get("holder") != holder.key:
        created = None
    tokens = list(reversed(_tokens(holder)))  # newest first
    # Whoever sees this page may read the policies: the page needs at least the role that reads tokens.
    policies = runtime().trust_policies.policies(principal.actor, holder.kind, holder.id)
    html = render_template(
        "ui/settings_repository.html",
        holder=holder,
        form=form,
        open_form=open_form or bool(form.errors),
        scopes=scope_choices(),
        active=[_token_row(token, holder) for token in tokens if token.is_active(now)],
        inactive=[_token_row(token, holder) for token in tokens if not token.is_active(now)],
        created=created,
        policies=policies,
        notice=shown.get("notice"),
        can_write=principal.can_write,
        today=now.date().isoformat(),
        min_date=(now.date() + timedelta(days=1)).isoformat(),
        section=_SECTION,
    )
    response = Response(html, status=status)
    if created is not None:
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


def settings(kind: HolderKind, full_path: str) -> ResponseReturnValue:
    principal, holder = _managed(kind, full_path)
    if full_path != holder.full_path:
        return redirect(holder.settings_url, 301)
    return _render_settings(principal, holder, TokenForm())


def _parse_expiry(text: str, errors: ErrorCollector) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.add("expires_at", "is not a valid date: use YYYY-MM-DD")
        return None


def create(kind: HolderKind, full_path: str) -> ResponseReturnValue:
    principal, holder = _managed(kind, full_path)
    principal.require_write()  # as in the API: the api scope, and no auditor account
    form = TokenForm(
        name=request.form.get("name", ""),
        expires_at=request.form.get("expires_at", "").strip(),
        username=request.form.get("username", "").strip(),
        scopes=tuple(request.form.getlist("scopes")),
    )
    parse_errors = ErrorCollector()
    expires_at = _parse_expiry(form.expires_at, parse_errors)
    if parse_errors.errors:
        # The service is not asked with a date it never saw: the domain's own field checks report the rest.
        parse_errors.check(validate_name, form.name)
        parse_errors.check(validate_username, form.username)
        parse_errors.check(canonical_scopes, form.scopes)
        form.errors = parse_errors.errors
        return _render_settings(principal, holder, form, status=400)
    try:
        issued = runtime().tokens.create_token(
            principal.actor,
            holder.kind,
            holder.id,
            name=form.name,
            scopes=form.scopes,
            expires_at=expires_at,
            username=form.username or None,
        )
    except ValidationError as error:
        form.errors = error.errors
        return _render_settings(principal, holder, form, status=400)
    current = session_id()
    assert current is not None  # a signed-in request has one
    token = issued.token
    sessions().update(
        current,
        created={
            "holder": holder.key,
            "token_id": token.token_id,
            "name": token.name,
            "username": token.username,
            "value": issued.value,
            # behaviour [expiry]: an expiry today or earlier is accepted; the page warns the token is unusable.
            "expired": token.is_expired(runtime().clock.now()),
        },
    )
    return redirect(f"{holder.settings_url}#{_SECTION}", 303)


def revoke(kind: HolderKind, full_path: str, token_id: int) -> ResponseReturnValue:
    """GET: the confirmation page (the no-JavaScript path; with JavaScript a ``<dialog>`` asks instead).
    POST: revoke (behaviour [manage]; revoking twice is harmless) and go back to the list."""
    principal, holder = _managed(kind, full_path)
    token = runtime().tokens.token_of(principal.actor, holder.kind, holder.id, token_id)
    if request.method == "GET":
        return render_template(
            "ui/revoke_confirm.html", holder=holder, token=token, row=_token_row(token, holder)
        )
    principal.require_write()  # as in the API: the api scope, and no auditor account
    record = runtime().tokens.revoke_token(principal.actor, holder.kind, holder.id, token_id)
    current = session_id()
    assert current is not None
    sessions().update(current, notice=f"Deploy token {record.name} (username {record.username}) was revoked.")
    return redirect(f"{holder.settings_url}#{_SECTION}", 303)


def history(kind: HolderKind, full_path: str, token_id: int) -> ResponseReturnValue:
    """The token's audit trail (behaviour [history]): every lifecycle event, who did it, when and from where."""
    principal, holder = _managed(kind, full_path)
    token = runtime().tokens.token_of(principal.actor, holder.kind, holder.id, token_id)
    rows = audit_events(runtime().db, AuditQuery(token_id=token_id, limit=None))
    # Where the holder was at each event: it may have been renamed or moved since (behaviour [history]).
    paths = [
        (holder_path_at(runtime().db, holder.kind, holder.id, event.position) or (holder.full_path, False))[0]
        for event in rows
    ]
    return render_template(
        "ui/token_history.html",
        holder=holder,
        token=token,
        row=_token_row(token, holder),
        events=list(zip(rows, paths, strict=True)),
    )


_VIEWS: Final[tuple[tuple[str, str, Callable[..., ResponseReturnValue], tuple[str, ...]], ...]] = (
    ("settings", "/-/settings/repository", settings, ("GET",)),
    ("create", "/-/settings/repository/deploy_token/create", create, ("POST",)),
    ("revoke", "/-/deploy_tokens/<int:token_id>/revoke", revoke, ("GET", "POST")),
    ("history", "/-/deploy_tokens/<int:token_id>/history", history, ("GET",)),
)
_PREFIXES: Final[tuple[tuple[HolderKind, str], ...]] = (
    ("project", "/<path:full_path>"),
    ("group", "/groups/<path:full_path>"),
)


def _bind(kind: HolderKind, view: Callable[..., ResponseReturnValue]) -> Callable[..., ResponseReturnValue]:
    def bound(**values: Any) -> ResponseReturnValue:
        return view(kind, **values)

    bound.__name__ = f"{kind}_{view.__name__}"
    return bound


for _kind, _prefix in _PREFIXES:
    for _name, _suffix, _view, _methods in _VIEWS:
        ui.add_url_rule(
            f"{_prefix}{_suffix}",
            endpoint=f"{_kind}_{_name}",
            view_func=_bind(_kind, _view),
            methods=_methods,
        )


# Signing in and out, and the start page ---------------------------------------------------------------


def _local_path(target: str | None) -> str:
    """Only paths on this site: never an open redirect."""
    home = url_for("ui.home")
    if not target or "\\" in target or any(ord(char) < 0x20 for char in target):
        return home
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc) and (
        parts.scheme not in ("http", "https") or parts.netloc != request.host
    ):
        return home
    if not parts.path.startswith("/") or parts.path.startswith("//"):
        return home
    return parts.path + (f"?{parts.query}" if parts.query else "")


@ui.route("/users/sign_in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    target = _local_path(request.values.get("next"))
    if request.method == "GET":
        if current_principal() is not None:
            return redirect(target, 302)
        return render_template("ui/sign_in.html", next=target, error=None)
    value = request.form.get("personal_access_token", "").strip()
    try:
        principal = runtime().access.authenticate(value, address=request.remote_addr)
    except Unauthenticated:
        return render_template(
            "ui/sign_in.html", next=target, error="Invalid, expired or revoked personal access token."
        ), 401
    start_session({"pat": value, "user_id": principal.user.user_id})
    return redirect(target, 303)


@ui.post("/users/sign_out")
def sign_out() -> ResponseReturnValue:
    end_session()
    return redirect(url_for("ui.sign_in"), 303)


@dataclass(frozen=True)
class HolderLink:
    kind: HolderKind
    name: str
    full_path: str
    url: str


_HOME_LIMIT: Final = 200


@ui.get("/")
def home() -> ResponseReturnValue:
    """Where the user may manage deploy tokens, as the token service finds it."""
    principal = require_principal()
    links = [
        HolderLink(
            holder.kind,
            holder.name,
            holder.full_path,
            url_for(f"ui.{holder.kind}_settings", full_path=holder.full_path),
        )
        for holder in runtime().tokens.holders_managed_by(principal, limit=_HOME_LIMIT)
    ]
    return render_template(
        "ui/home.html",
        groups=[link for link in links if link.kind == "group"],
        projects=[link for link in links if link.kind == "project"],
        truncated=len(links) >= _HOME_LIMIT,
    )
