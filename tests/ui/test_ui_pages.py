"""The web UI through the Flask test client, on both backends (behaviour [value], [manage], [ui]):
sign-in and sessions, CSRF, the
Deploy tokens section of project and group settings, create-and-show-once, revoke with confirmation, each
token's history, permissions as in the API, validation errors next to their fields."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask

from deploy_tokens.expiry_sender import NoticeContext
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock

from ..conftest import T0, World
from .conftest import GROUP_SETTINGS, PROJECT_SETTINGS, WebClient, csrf_of, personal_access_token

CREATE = PROJECT_SETTINGS + "/deploy_token/create"
GROUP_CREATE = GROUP_SETTINGS + "/deploy_token/create"
SignIn = Callable[..., WebClient]


def shown_token(html: str) -> tuple[str, str] | None:
    """(username, value) of the shown-once panel, or None when the page has no such panel."""
    if 'id="new-deploy-token"' not in html:
        return None
    username = re.search(r'id="deploy-token-user"[^>]*value="([^"]+)"', html)
    value = re.search(r'id="deploy-token-value"[^>]*value="([^"]+)"', html)
    assert username and value
    return username.group(1), value.group(1)


def active_table(html: str) -> str:
    found = re.search(r'<table[^>]*id="active-deploy-tokens".*?</table>', html, re.S)
    return found.group(0) if found else ""


def inactive_list(html: str) -> str:
    found = re.search(r'<details class="inactive-tokens".*?</details>', html, re.S)
    assert found
    return found.group(0)


def create(web: WebClient, url: str = CREATE, **fields: object) -> str:
    """Create through the form, follow the redirect, return the page that shows the token."""
    data: dict[str, object] = {"name": "ci", "scopes": ["read_repository", "read_registry"], **fields}
    response = web.post(url, data)
    assert response.status_code == 303, response.text
    settings_url = url.removesuffix("/deploy_token/create")
    assert response.headers["Location"] == settings_url + "#js-deploy-tokens"
    page = web.get(settings_url)
    assert page.status_code == 200
    return page.text


def count_tokens(runtime: Runtime) -> int:
    return runtime.read.tokens(holder_kind=None, holder_id=None, active_only=False, now=T0).total


# Signing in ---------------------------------------------------------------------------------------------


def test_pages_need_a_session_and_sign_in_returns_to_them(web: WebClient, world: World):
    response = web.get(PROJECT_SETTINGS)
    assert response.status_code == 302
    assert response.headers["Location"] == "/users/sign_in?next=" + PROJECT_SETTINGS

    page = web.get("/users/sign_in?next=" + PROJECT_SETTINGS)
    assert page.status_code == 200
    assert '<label for="personal_access_token">Personal access token</label>' in page.text
    anonymous_cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in anonymous_cookie and "SameSite=Lax" in anonymous_cookie
    assert "Secure" not in anonymous_cookie  # plain http here; see the https test below

    response = web.post(
        "/users/sign_in",
        {"personal_access_token": personal_access_token(world, "maintainer"), "next": PROJECT_SETTINGS},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == PROJECT_SETTINGS
    session_cookie = response.headers["Set-Cookie"]
    assert session_cookie.split(";")[0] != anonymous_cookie.split(";")[0]  # a new id at sign-in
    assert (
        "HttpOnly" in session_cookie and "SameSite=Lax" in session_cookie and "Max-Age" not in session_cookie
    )

    page = web.get(PROJECT_SETTINGS)
    assert page.status_code == 200
    assert "Signed in as <strong>@maintainer</strong>" in page.text
    assert page.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]


def test_a_bad_token_is_refused_next_to_the_field(web: WebClient, world: World):
    web.get("/users/sign_in")
    for bad in ("glpat-nonsense", "", "gldt-" + "a" * 20):
        response = web.post("/users/sign_in", {"personal_access_token": bad})
        assert response.status_code == 401
        assert 'id="personal_access_token-error"' in response.text
        assert 'aria-invalid="true"' in response.text
        assert "Invalid, expired or revoked personal access token." in response.text
    assert web.get(PROJECT_SETTINGS).status_code == 302


def test_sign_out_ends_the_session_on_the_server(web: WebClient, world: World):
    web.sign_in(personal_access_token(world, "maintainer"))
    cookie = web.client.get_cookie("deploy_tokens_session")
    assert cookie is not None
    stolen = cookie.value
    web.get(PROJECT_SETTINGS)
    response = web.post("/users/sign_out")
    assert response.status_code == 303
    assert response.headers["Location"] == "/users/sign_in"
    assert web.get(PROJECT_SETTINGS).status_code == 302
    # Replaying the old cookie does not bring the session back: the server deleted it.
    web.client.set_cookie("deploy_tokens_session", stolen)
    assert web.get(PROJECT_SETTINGS).status_code == 302


def test_sessions_end_with_their_token_and_after_their_lifetime(
    web: WebClient, world: World, clock: FixedClock
):
    web.sign_in(personal_access_token(world, "maintainer"))
    assert web.get(PROJECT_SETTINGS).status_code == 200
    clock.set(T0 + timedelta(hours=8, seconds=1))
    assert web.get(PROJECT_SETTINGS).status_code == 302

    clock.set(T0)
    web.sign_in(personal_access_token(world, "maintainer"))
    assert web.get(PROJECT_SETTINGS).status_code == 200
    maintainer_id = world.users["maintainer"].user_id
    assert maintainer_id is not None
    world.runtime.directory.set_user_blocked(world.admin, maintainer_id, True)
    assert web.get(PROJECT_SETTINGS).status_code == 302


def test_cookies_are_secure_over_https(app: Flask, world: World):
    client = app.test_client()
    page = client.get("/users/sign_in", base_url="https://deploy.example")
    cookie = page.headers["Set-Cookie"]
    assert cookie.startswith("__Host-deploy_tokens_session=")
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    response = client.post(
        "/users/sign_in",
        base_url="https://deploy.example",
        data={"csrf_token": csrf_of(page.text), "personal_access_token": world.admin_token},
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]
    assert client.get(PROJECT_SETTINGS, base_url="https://deploy.example").status_code == 200


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/phish", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "evil"],
)
def test_sign_in_never_redirects_off_site(web: WebClient, world: World, target: str):
    response = web.sign_in(world.admin_token, next_url=target)
    assert response.headers["Location"] == "/"


# CSRF ---------------------------------------------------------------------------------------------------


def test_every_form_needs_the_session_csrf_token(web: WebClient, world: World, app: Flask):
    runtime = world.runtime
    web.get("/users/sign_in")
    token = personal_access_token(world, "maintainer")
    assert web.post("/users/sign_in", {"personal_access_token": token}, csrf="").status_code == 403
    assert web.post("/users/sign_in", {"personal_access_token": token}, csrf="0" * 64).status_code == 403

    web.sign_in(token)
    web.get(PROJECT_SETTINGS)
    good = web.csrf
    other = app.test_client()
    other_page = other.get("/users/sign_in")
    foreign = csrf_of(other_page.text)  # valid, but for another session
    form = {"name": "x", "scopes": ["read_repository"]}
    for csrf in ("", "not-a-token", foreign, good[:-1] + ("0" if good[-1] != "0" else "1")):
        response = web.post(CREATE, form, csrf=csrf)
        assert response.status_code == 403
        assert "did not come from this site" in response.text
        assert response.mimetype == "text/html"
    response = web.client.post(CREATE, data=form)  # no field at all
    assert response.status_code == 403
    assert count_tokens(runtime) == 0

    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="keep", scopes=["read_repository"]
    )
    revoke_url = f"/acme/api/-/deploy_tokens/{issued.token.token_id}/revoke"
    assert web.post(revoke_url, csrf=foreign).status_code == 403
    assert web.post("/users/sign_out", csrf="").status_code == 403
    assert web.get(PROJECT_SETTINGS).status_code == 200  # still signed in
    record = runtime.read.token(issued.token.token_id)
    assert record is not None and not record.revoked

    assert web.post(CREATE, form, csrf=good).status_code == 303  # the page's own token works


# Create, shown once -------------------------------------------------------------------------------------


def test_create_shows_the_token_once_and_a_reload_never_again(signed_in: SignIn, world: World):
    web = signed_in("maintainer")
    web.get(PROJECT_SETTINGS)
    response = web.post(
        CREATE,
        {"name": "deployer", "expires_at": "2026-02-20", "scopes": ["read_repository", "read_registry"]},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == PROJECT_SETTINGS + "#js-deploy-tokens"
    assert "gldt-" not in response.text

    page = web.get(PROJECT_SETTINGS)
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    shown = shown_token(page.text)
    assert shown is not None
    username, value = shown
    assert value.startswith("gldt-")
    record = world.runtime.read.tokens(
        holder_kind="project", holder_id=world.project, active_only=True, now=T0
    ).items[0]
    assert username == record.username == f"gitlab+deploy-token-{record.token_id}"
    assert "you won't be able to access it again" in page.text
    assert 'data-copy-target="deploy-token-value"' in page.text
    assert 'data-copy-target="deploy-token-user"' in page.text

    again = web.get(PROJECT_SETTINGS)
    assert shown_token(again.text) is None
    assert value not in again.text
    assert "deployer" in active_table(again.text)
    assert "read_repository" in active_table(again.text) and "read_registry" in active_table(again.text)
    assert value not in web.get(f"/acme/api/-/deploy_tokens/{record.token_id}/history").text


def test_a_created_value_is_never_stored_in_plaintext(signed_in: SignIn, world: World):
    """behaviour [value]: between the POST and its GET
    the value sits in the session row, encrypted; afterwards nowhere."""
    runtime = world.runtime
    pat = personal_access_token(world, "maintainer")
    web = signed_in("admin")
    assert web.post("/users/sign_out").status_code == 303
    web.sign_in(pat)
    web.get(PROJECT_SETTINGS)
    web.post(CREATE, {"name": "secret", "scopes": ["read_repository"]})
    with runtime.db.read() as cursor:
        rows = cursor.execute("SELECT session_digest, nonce, ciphertext FROM ui_sessions").fetchall()
    assert rows
    cookie = web.client.get_cookie("deploy_tokens_session")
    assert cookie is not None
    stored = b"".join(
        (str(digest).encode() + bytes(nonce) + bytes(ciphertext)) for digest, nonce, ciphertext in rows
    )
    assert cookie.value.encode() not in stored  # rows are keyed by an HMAC of the id
    assert pat.encode() not in stored and pat.split("-", 1)[1].encode() not in stored
    page = web.get(PROJECT_SETTINGS)
    shown = shown_token(page.text)
    assert shown is not None
    value = shown[1]
    assert value.encode() not in stored and value.split("-", 1)[1].encode() not in stored
    if runtime.settings.database.dialect == "sqlite":
        for path in Path(runtime.settings.data_dir).rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert value.split("-", 1)[1].encode() not in blob, f"token value found in {path}"
                assert pat.split("-", 1)[1].encode() not in blob, f"personal access token found in {path}"


def test_the_no_javascript_revoke_path_confirms_first(signed_in: SignIn, world: World):
    web = signed_in("maintainer")
    web.get(PROJECT_SETTINGS)
    create(web, name="to-revoke")
    page = web.get(PROJECT_SETTINGS)
    token_id = re.search(r'<tr data-token-id="(\d+)"', active_table(page.text))
    assert token_id
    revoke_url = f"/acme/api/-/deploy_tokens/{token_id.group(1)}/revoke"
    assert f'href="{revoke_url}"' in page.text

    confirm = web.get(revoke_url)  # the Revoke link: a confirmation page, nothing revoked yet
    assert confirm.status_code == 200
    assert '<h1 class="page-title">Revoke to-revoke?</h1>' in confirm.text
    assert f'<form method="post" action="{revoke_url}"' in confirm.text
    assert "to-revoke" in active_table(web.get(PROJECT_SETTINGS).text)

    response = web.post(revoke_url)
    assert response.status_code == 303
    assert response.headers["Location"] == PROJECT_SETTINGS + "#js-deploy-tokens"
    after = web.get(PROJECT_SETTINGS)
    assert "to-revoke" not in active_table(after.text)
    revoked = inactive_list(after.text)
    assert "to-revoke" in revoked and "Revoked</span>" in revoked
    assert "Deploy token to-revoke (username gitlab+deploy-token-" in after.text  # the notice, once
    assert "was revoked" not in web.get(PROJECT_SETTINGS).text
    assert web.post(revoke_url).status_code == 303  # revoking twice is harmless (behaviour [manage])


def test_each_token_has_its_history_one_click_away(signed_in: SignIn, world: World):
    web = signed_in("maintainer")
    web.get(PROJECT_SETTINGS)
    create(web, name="audited", scopes=["read_package_registry"])
    page = web.get(PROJECT_SETTINGS)
    found = re.search(r'href="(/acme/api/-/deploy_tokens/(\d+)/history)"', page.text)
    assert found
    history_url, token_id = found.group(1), found.group(2)
    web.post(f"/acme/api/-/deploy_tokens/{token_id}/revoke")
    history = web.get(history_url)
    assert history.status_code == 200
    table = re.search(r'<table[^>]*id="token-history".*?</table>', history.text, re.S)
    assert table
    rows = re.findall(r"<tr>.*?</tr>", table.group(0), re.S)[1:]
    events = [re.search(r"<code>(\w+)</code>", row).group(1) for row in rows]  # type: ignore[union-attr]
    assert events[0] == "deploy_token_created" and events[-1] == "deploy_token_revoked"
    assert all("@maintainer" in row for row in rows)
    assert "Revoked" in history.text
    assert "audited" in history.text
    # The inactive list links the history too.
    assert f'href="{history_url}"' in inactive_list(web.get(PROJECT_SETTINGS).text)


# Validation ---------------------------------------------------------------------------------------------


def _error_after_input(html: str, input_id: str, error_id: str) -> bool:
    """The error is rendered in the field's own group, and the field points at it (aria-describedby)."""
    field = re.search(rf'<input[^>]*id="{input_id}"[^>]*>', html)
    assert field, input_id
    described = re.search(r'aria-describedby="([^"]+)"', field.group(0))
    start = html.index(field.group(0))
    end = html.find('<div class="form-group', start)
    return bool(described and error_id in described.group(1).split()) and error_id in html[start:end]


def test_validation_errors_are_shown_next_to_their_fields(signed_in: SignIn, world: World):
    web = signed_in("maintainer")
    web.get(PROJECT_SETTINGS)
    response = web.post(CREATE, {"name": "", "expires_at": "1899-12-31", "username": "not ok!", "scopes": []})
    assert response.status_code == 400
    html = response.text
    assert '<details class="add-token" open>' in html
    assert 'role="alert" id="form-error-summary"' in html
    assert _error_after_input(html, "deploy_token_name", "name-error")
    assert "Name can&#39;t be blank" in html
    assert _error_after_input(html, "deploy_token_expires_at", "expires_at-error")
    assert "Expiration date must be between 1900-01-01 and 9999-12-31" in html
    assert _error_after_input(html, "deploy_token_username", "username-error")
    assert "Username can contain only letters, digits" in html
    assert 'aria-describedby="scopes-error"' in html
    assert re.search(
        r'<legend>Scopes \(select at least one\)</legend>\s*<p class="field-error" id="scopes-error">', html
    )
    assert "Scopes can&#39;t be blank" in html
    assert 'value="not ok!"' in html  # what was typed is kept
    assert count_tokens(world.runtime) == 0

    response = web.post(CREATE, {"name": "ok", "expires_at": "31/12/2026", "scopes": ["nope"]})
    assert response.status_code == 400
    assert _error_after_input(response.text, "deploy_token_expires_at", "expires_at-error")
    assert "is not a valid date: use YYYY-MM-DD" in response.text
    assert "Scopes does not have a valid value: nope" in response.text
    assert count_tokens(world.runtime) == 0


def test_the_form_explains_its_fields(signed_in: SignIn, world: World):
    html = signed_in("maintainer").get(PROJECT_SETTINGS).text
    assert 'id="js-deploy-tokens"' in html
    assert '<input type="date" id="deploy_token_expires_at"' in html and 'min="2026-01-11"' in html
    assert "00:00 UTC" in html
    assert 'placeholder="gitlab+deploy-token-{n}"' in html
    for scope in ("read_repository", "read_registry", "write_registry", "read_package_registry"):
        assert (
            f'<label class="form-check-label" for="deploy_token_scope_{scope}"><code>{scope}</code></label>'
            in html
        )
    assert "Allows read-only access to the repository" in html
    assert re.search(
        r'id="deploy_token_scope_read_virtual_registry"[^>]*aria-describedby="[^"]*virtual-registry-note"',
        html,
    )
    assert "can be used only while the dependency proxy is enabled" in html


def test_expiry_warnings_have_words_not_only_colour(signed_in: SignIn, world: World):
    for name, days in (("soon", 5), ("month", 20), ("quarter", 50), ("later", 90)):
        world.runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=name,
            scopes=["read_repository"],
            expires_at=(T0 + timedelta(days=days)).date(),
        )
    world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="forever", scopes=["read_repository"]
    )
    table = active_table(signed_in("maintainer").get(PROJECT_SETTINGS).text)
    rows = {
        re.search(r'<th scope="row">([^<]+)</th>', row).group(1): row  # type: ignore[union-attr]
        for row in re.findall(r"<tr data-token-id.*?</tr>", table, re.S)
    }
    assert "(in 5 days)" in rows["soon"] and "Expires within 7 days" in rows["soon"]
    assert "badge-danger" in rows["soon"] and "⚠" in rows["soon"]
    assert "(in 20 days)" in rows["month"] and "Expires within 30 days" in rows["month"]
    assert "(in 50 days)" in rows["quarter"] and "Expires within 60 days" in rows["quarter"]
    assert "(in 90 days)" in rows["later"] and "Expires within" not in rows["later"]
    assert "Never" in rows["forever"] and "Expires within" not in rows["forever"]

    revoked = world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="revoked-soon",
        scopes=["read_repository"],
        expires_at=(T0 + timedelta(days=3)).date(),
    )
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, revoked.token.token_id)
    web = signed_in("maintainer")
    history = web.get(f"/acme/api/-/deploy_tokens/{revoked.token.token_id}/history").text
    assert "(in 3 days)" in history and "Expires within" not in history  # no warning once revoked


def test_expired_tokens_leave_the_active_list(signed_in: SignIn, world: World, clock: FixedClock):
    world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="short-lived",
        scopes=["read_repository"],
        expires_at=(T0 + timedelta(days=2)).date(),
    )
    web = signed_in("maintainer")
    assert "short-lived" in active_table(web.get(PROJECT_SETTINGS).text)
    clock.set(T0 + timedelta(days=2))
    web.sign_in(personal_access_token(world, "maintainer"))
    page = web.get(PROJECT_SETTINGS).text
    assert "short-lived" not in active_table(page)
    assert "short-lived" in inactive_list(page) and "Expired</span>" in inactive_list(page)


# Permissions (behaviour [manage]) ---------------------------------------------------------------------------------


def test_a_developer_sees_no_page_and_cannot_post(signed_in: SignIn, world: World):
    runtime = world.runtime
    runtime.tokens.create_token(
        world.admin, "project", world.project, name="secret-token-name", scopes=["read_repository"]
    )
    web = signed_in("developer")
    page = web.get(PROJECT_SETTINGS)
    assert page.status_code == 403
    assert page.mimetype == "text/html"
    assert "Access denied" in page.text
    assert (
        "secret-token-name" not in page.text
        and "Add token" not in page.text
        and "deploy_token_name" not in page.text
    )
    assert web.post(CREATE, {"name": "x", "scopes": ["read_repository"]}).status_code == 403
    assert web.get("/acme/api/-/deploy_tokens/1/history").status_code == 403
    assert web.get("/acme/api/-/deploy_tokens/1/revoke").status_code == 403
    assert web.post("/acme/api/-/deploy_tokens/1/revoke").status_code == 403
    assert web.get(GROUP_SETTINGS).status_code == 404  # not a member of the group: hidden, as in the API
    assert count_tokens(runtime) == 1
    token = runtime.read.token(1)
    assert token is not None and not token.revoked


@pytest.mark.parametrize(
    ("role", "url", "status"),
    [
        ("guest", PROJECT_SETTINGS, 403),
        ("reporter", PROJECT_SETTINGS, 403),
        ("outsider", PROJECT_SETTINGS, 404),
        ("maintainer", PROJECT_SETTINGS, 200),
        ("owner", PROJECT_SETTINGS, 200),  # Owner of the parent group
        ("group_maintainer", PROJECT_SETTINGS, 200),
        ("group_maintainer", GROUP_SETTINGS, 403),  # a group's tokens need Owner (behaviour [manage])
        ("maintainer", GROUP_SETTINGS, 404),
        ("owner", GROUP_SETTINGS, 200),
        ("owner", "/groups/acme/backend/services/-/settings/repository", 200),  # inherited downwards
        ("owner", "/groups/other/-/settings/repository", 404),
        ("admin", "/groups/other/-/settings/repository", 200),
        ("maintainer", "/acme/nothing-here/-/settings/repository", 404),
        ("owner", "/groups/nothing-here/-/settings/repository", 404),
    ],
)
def test_who_sees_which_page(signed_in: SignIn, world: World, role: str, url: str, status: int):
    response = signed_in(role).get(url)
    assert response.status_code == status
    assert response.mimetype == "text/html"


def test_a_read_only_personal_access_token_cannot_change_anything(signed_in: SignIn, world: World):
    web = signed_in("maintainer", scopes=["read_api"])
    page = web.get(PROJECT_SETTINGS)
    assert page.status_code == 200
    assert "without the <code>api</code> scope" in page.text and "Create deploy token" not in page.text
    response = web.post(CREATE, {"name": "x", "scopes": ["read_repository"]})
    assert response.status_code == 403
    assert "needs the api scope" in response.text
    assert count_tokens(world.runtime) == 0


def test_the_group_owner_manages_group_tokens(signed_in: SignIn, world: World):
    web = signed_in("owner")
    page = web.get(GROUP_SETTINGS)
    assert page.status_code == 200
    assert "of every project in this group and its subgroups" in page.text
    assert "it is currently <strong>enabled</strong>" in page.text  # the dependency proxy note
    world.runtime.directory.set_dependency_proxy(world.admin, world.top, False)
    assert "it is currently <strong>disabled</strong>" in web.get(GROUP_SETTINGS).text
    html = create(web, GROUP_CREATE, name="group-puller", username="puller", scopes=["read_registry"])
    shown = shown_token(html)
    assert shown is not None and shown[0] == "puller"
    record = world.runtime.read.tokens(
        holder_kind="group", holder_id=world.top, active_only=True, now=T0
    ).items[0]
    assert record.name == "group-puller" and record.scopes == ("read_registry",)
    assert shown_token(web.get(GROUP_SETTINGS).text) is None
    revoke_url = f"/groups/acme/-/deploy_tokens/{record.token_id}/revoke"
    assert web.get(revoke_url).status_code == 200
    assert web.post(revoke_url).headers["Location"] == GROUP_SETTINGS + "#js-deploy-tokens"
    page = web.get(GROUP_SETTINGS)
    assert "group-puller" not in active_table(page.text) and "group-puller" in inactive_list(page.text)
    assert web.get(f"/groups/acme/-/deploy_tokens/{record.token_id}/history").status_code == 200
    # The group's token id is not reachable through a project's URL, nor another group's (404).
    assert web.get(f"/acme/api/-/deploy_tokens/{record.token_id}/history").status_code == 404
    assert web.get(f"/groups/acme/backend/-/deploy_tokens/{record.token_id}/history").status_code == 404


def test_a_shown_once_value_belongs_to_its_own_page(signed_in: SignIn, world: World):
    """The one GET after creating consumes the value, and only the page of the token's holder shows it."""
    web = signed_in("owner")
    web.get(GROUP_SETTINGS)
    response = web.post(GROUP_CREATE, {"name": "g", "scopes": ["read_repository"]})
    assert response.status_code == 303
    assert shown_token(web.get(PROJECT_SETTINGS).text) is None  # another holder's page: not shown there
    assert shown_token(web.get(GROUP_SETTINGS).text) is None  # and already gone


def test_paths_are_case_insensitive_and_redirect_to_the_canonical_one(signed_in: SignIn, world: World):
    web = signed_in("maintainer")
    response = web.get("/ACME/Api/-/settings/repository")
    assert response.status_code == 301
    assert response.headers["Location"] == PROJECT_SETTINGS


def test_the_start_page_lists_where_the_user_may_manage_tokens(signed_in: SignIn, world: World):
    html = signed_in("owner").get("/").text
    assert f'href="{GROUP_SETTINGS}#js-deploy-tokens"' in html
    html = signed_in("developer").get("/").text
    assert PROJECT_SETTINGS not in html
    html = signed_in("maintainer").get("/").text
    assert f'href="{PROJECT_SETTINGS}#js-deploy-tokens"' in html


def test_static_assets_are_served(web: WebClient):
    for name in ("ui/ui.css", "ui/ui.js"):
        response = web.client.get(f"/-/ui/static/{name}")
        assert response.status_code == 200
        response.close()


@pytest.mark.parametrize(("kind", "full_path"), [("project", "acme/api"), ("group", "acme/backend")])
def test_expiry_email_links_open_the_deploy_tokens_section(
    signed_in: SignIn, world: World, kind: str, full_path: str
):
    """The links in expiry emails (deploy_tokens/expiry.py) land on these pages, at the section's anchor."""
    link = urlsplit(NoticeContext("https://deploy.example", "x@example.com").settings_url(kind, full_path))
    assert link.fragment == "js-deploy-tokens"
    page = signed_in("owner").get(link.path)
    assert page.status_code == 200
    assert f'<section class="settings" id="{link.fragment}"' in page.text
