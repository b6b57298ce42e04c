"""The web UI's session in a request: the cookie that carries its id, and CSRF.

* **Cookie.** Only a random 256-bit session id, ``HttpOnly``, ``SameSite=Lax``, ``Path=/``, and ``Secure``
  (under the ``__Host-`` name) when served over https. No ``Max-Age``: it ends with the browser; the
  server side (``infrastructure.web_sessions``) ends after ``SESSION_LIFETIME`` at the latest.
* **CSRF.** Every POST carries the session's CSRF token. Anonymous visitors get an id too (cookie only, no
  row), so the sign-in form is protected against login CSRF.
* **Rotation.** Signing in always issues a new id (no session fixation); signing out deletes the row.
"""

from __future__ import annotations

from typing import Final

from flask import Response, abort, g, request

from api.context import runtime
from infrastructure.web_sessions import SessionStore, new_session_id, well_formed_session_id

COOKIE_NAME: Final = "deploy_tokens_session"
SECURE_COOKIE_NAME: Final = "__Host-deploy_tokens_session"
CSRF_FIELD: Final = "csrf_token"


def sessions() -> SessionStore:
    return runtime().web_sessions


def _secure() -> bool:
    """``Secure`` cookies when this request came over https or the service is published on https."""
    return request.is_secure or runtime().settings.external_url.startswith("https://")


def _cookie_name() -> str:
    return SECURE_COOKIE_NAME if _secure() else COOKIE_NAME


def session_id() -> str | None:
    value: str | None = g.get("ui_session_id")
    return value


def _ensure_session_id() -> str:
    """Anonymous visitors get an id too (cookie only), so the sign-in form has a CSRF token."""
    current = session_id()
    if current is None:
        current = new_session_id()
        g.ui_session_id = current
        g.ui_set_cookie = current
    return current


def csrf_token() -> str:
    return sessions().keys.csrf_token(_ensure_session_id())


def start_session(data: dict[str, object]) -> None:
    """A new session (and a new id: no session fixation) in place of the visitor's current one."""
    sessions().delete(session_id())
    started = sessions().create(data)
    g.ui_session_id = started
    g.ui_set_cookie = started


def end_session() -> None:
    sessions().delete(session_id())
    g.ui_session_id = None
    g.ui_clear_cookie = True


def load_session() -> None:
    """Before each request: the session id from the cookie; a POST without this session's CSRF token is
    refused."""
    cookie = request.cookies.get(_cookie_name())
    g.ui_session_id = cookie if well_formed_session_id(cookie) else None
    if request.method == "POST" and not sessions().keys.csrf_valid(
        session_id(), request.form.get(CSRF_FIELD)
    ):
        abort(403, "The form has expired or did not come from this site. Reload the page and try again.")


def write_cookie(response: Response) -> None:
    """After each request: set the cookie of a new id, or clear the cookie of an ended session."""
    name = _cookie_name()
    secure = _secure()
    set_cookie: str | None = g.get("ui_set_cookie")
    if set_cookie is not None:
        response.set_cookie(name, set_cookie, httponly=True, secure=secure, samesite="Lax", path="/")
    elif g.get("ui_clear_cookie"):
        response.delete_cookie(name, httponly=True, secure=secure, samesite="Lax", path="/")
