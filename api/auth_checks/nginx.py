"""``/internal/auth_request``: nginx's ``auth_request`` for Git over HTTP (behaviour [git]) and packages
(behaviour [packages], [api-routes]).

Any method (nginx may forward the original one). It reads ``Authorization`` (Basic or Bearer),
``Deploy-Token``, ``X-Original-URI``, ``X-Original-Method`` and ``X-Original-Remote-Addr``, and answers only
what nginx understands: **200** (``X-Auth-User``, ``X-Deploy-Token-Id``), **401** with
``WWW-Authenticate: Basic realm="deploy-tokens"`` (no or bad credentials: missing, malformed, unknown,
revoked, deleted, expired, wrong username; also any route that never accepts deploy tokens, behaviour [api-routes], as
GitLab's API ignores the token there) or **403** (a valid token that may not do this: scope, namespace,
external authorization, push, a disabled feature, an unrecognised resource).

**A stale credential index.** nginx turns every sub-request status other than 2xx/401/403 into a 500, so a
503 here would reach clients as a 500. A 401 is worse: git answers it by telling the credential helper to
*erase* the stored deploy token, and pip and twine prompt for a password. So this endpoint answers **403
with** ``Retry-After: 1`` **and** ``X-Auth-Error: unavailable`` (a header no other answer carries). nginx
can turn that into a real, retryable 503 (pip, npm and Maven retry a 503; git reports it without touching
its credentials)::

    location ~ ^/.+\\.git/ {
        auth_request /_auth;
        auth_request_set $auth_error $upstream_http_x_auth_error;
        error_page 403 = @auth_denied;
        ...
    }
    location @auth_denied {
        if ($auth_error = "unavailable") { add_header Retry-After 1 always; return 503; }
        return 403;
    }

Without that recipe clients see a plain 403, which is still closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from time import perf_counter
from typing import Final

from flask import Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import Rule

from api.auth_checks.common import (
    AUTH_CHALLENGE,
    auth_checks,
    current_flask_app,
    first_decision,
    parse_authorization,
    presented_credentials,
    status_for,
    wiring_of,
)
from api.auth_checks.record import record_decisions
from api.openapi import operation
from api.request_mapping import Protocol, map_original_request
from projections.access import Decision
from projections.credential_index import StaleIndex

__all__ = ["AuthRequestAnswer", "auth_request"]

# nginx may proxy the sub-request with the client's method (the body is never sent), and the view decides from
# X-Original-Method alone. So every method must reach the view: Flask's automatic OPTIONS answer would be a
# 200 without credentials, and a 405 for WebDAV's PROPFIND would reach the client as nginx's 500. The methods
# listed are the documented ones; ``_any_method`` adds a rule that takes every other method.
_ANY_METHOD: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_STALE_HEADERS: Final = (("Retry-After", "1"), ("X-Auth-Error", "unavailable"))
_CHALLENGE_HEADERS: Final = (("WWW-Authenticate", AUTH_CHALLENGE),)


class AuthRequestAnswer(Response):
    """An ``auth_request`` answer: a status and headers, never a body, so no ``Content-Type`` either.

    nginx reads only the status and the ``X-`` headers of a sub-request; a ``Content-Type`` for an empty body
    would be one more header to build, validate and send on every check.
    """

    default_mimetype = None


@auth_checks.record_once
def _any_method(state: BlueprintSetupState) -> None:
    state.app.url_map.add(Rule("/internal/auth_request", endpoint="auth_checks.auth_request"))


@auth_checks.route("/internal/auth_request", methods=_ANY_METHOD, provide_automatic_options=False)
@operation(
    "nginx auth_request check for Git over HTTP and package registries (200, 401 or 403 only)",
    tag="auth_checks",
    auth="deploy_token",
    errors=(401, 403),
    error_body=False,
)
def auth_request() -> Response:
    started = perf_counter()
    app = current_flask_app()
    wiring = wiring_of(app)
    runtime = wiring.runtime
    # The proxy's documented accessor: ``request.environ`` resolves the proxy through several Python calls
    # (measured 2.4 against 0.3 microseconds).
    environ = request._get_current_object().environ  # type: ignore[attr-defined]
    target = map_original_request(environ.get("HTTP_X_ORIGINAL_URI"), environ.get("HTTP_X_ORIGINAL_METHOD"))
    credentials = presented_credentials(
        parse_authorization(environ.get("HTTP_AUTHORIZATION")),
        environ.get("HTTP_DEPLOY_TOKEN"),
        basic_only=target.protocol is Protocol.GIT,
    )
    client = wiring.addresses.behind_proxy(environ)
    now = runtime.clock.now()
    decision: Decision | None
    try:
        decision = first_decision(
            runtime,
            client,
            credentials,
            target.action,
            target.resource,
            now,
            target.check_username,
            target.exact_group_only,
        )
    except StaleIndex:
        decision = None
    status = 403 if decision is None else status_for(decision)
    headers: Sequence[tuple[str, str]]
    if decision is None:
        headers = _STALE_HEADERS
    elif status == 200:
        headers = (("X-Auth-User", decision.username or ""), ("X-Deploy-Token-Id", str(decision.token_id)))
    elif status == 401:
        headers = _CHALLENGE_HEADERS
    else:
        headers = ()
    observed = ((target.action, target.resource, decision),)
    record_decisions(app, wiring, environ, "auth_request", observed, status, credentials, client, now)
    wiring.metrics.auth_duration.observe(perf_counter() - started, "auth_request")
    return AuthRequestAnswer(status=status, headers=headers)
