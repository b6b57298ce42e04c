"""The auditor pages in a real browser (issue 17): Debian's Chromium through Playwright against a live server,
as ``test_browser.py`` runs it (the same skip and fail rules, screenshots in ``tests/artifacts/screenshots/``).

An administrator reaches the audit log from the navigation, filters it, downloads the CSV of that filter,
opens a token's page with its chart of uses per day (allowed vs denied), and asks who could clone a project
at an instant. An auditor sees the same pages (who else may is tested through the Flask client, in
``test_audit_pages.py``).
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from infrastructure.activity import ActivityEvent

from ..conftest import T0, World
from . import test_browser as browser
from .test_audit_pages import auditor_token

pytestmark = pytest.mark.e2e

# The browser, the live server and the pages, as the first browser tests set them up.
chromium = browser.chromium
live_app = browser.live_app
live_server = browser.live_server
new_page = browser.new_page
screenshot = browser.screenshot
sign_in = browser.sign_in


def _activity(world: World) -> int:
    """A token used over three weeks, allowed and denied, then revoked; returns its id."""
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="release-ci", scopes=["read_repository"]
    ).token
    rt.tokens.create_token(world.admin, "group", world.top, name="group-pull", scopes=["read_repository"])
    for day in range(21):
        for number in range((day * 7) % 11 + 1):
            allowed = (day + number) % 5 != 0
            rt.activity.record(
                ActivityEvent(
                    occurred_at=T0 - timedelta(days=day, minutes=number * 7),
                    token_id=token.token_id,
                    token_ref=None,
                    endpoint="auth_request",
                    action="git_read",
                    resource_kind="project",
                    resource_ref="acme/api",
                    allowed=allowed,
                    reason="allowed" if allowed else "insufficient_scope",
                    status=200 if allowed else 403,
                    client_addr=f"198.51.100.{number + 1}",
                    user_agent='git/2.39.5 <script>alert("ua")</script>',
                )
            )
    rt.activity.flush()
    return token.token_id


def test_an_admin_filters_the_log_downloads_it_and_reads_a_tokens_chart_and_the_past(
    new_page: Any, live_server: str, world: World
) -> None:
    token_id = _activity(world)
    page = new_page()
    sign_in(page, live_server, world.admin_token)

    page.get_by_role("navigation", name="Audit", exact=True).get_by_role("link", name="Audit log").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Audit log", level=1).is_visible()
    page.get_by_label("Project").fill("acme/api")
    page.get_by_label("Event type").select_option("deploy_token_created")
    page.get_by_role("button", name="Apply filter").click()
    page.wait_for_load_state()
    rows = page.locator("#audit-log tbody tr")
    assert rows.count() == 1
    assert rows.first.get_by_text("deploy_token_created").is_visible()
    assert page.get_by_role("heading", name="Events (1)").is_visible()
    screenshot(page, "audit-log")

    with page.expect_download() as download_info:
        page.get_by_role("link", name="CSV").click()
    download = download_info.value
    table = list(csv.DictReader(io.StringIO(Path(download.path()).read_text(encoding="utf-8"))))
    assert [row["event_type"] for row in table] == ["deploy_token_created"]
    assert table[0]["target_name"] == "release-ci"

    rows.first.get_by_role("link", name="release-ci").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name=f"Deploy token release-ci (ID {token_id})").is_visible()
    chart = page.get_by_role("img", name="Uses per day of deploy token release-ci")
    assert chart.is_visible()
    assert page.locator("#token-uses-chart .chart-bars > g").count() == 21  # a bar for each day used
    assert page.locator("#token-uses-chart .bar-denied").count() > 0
    assert page.locator("#last-use").get_by_text("2026-01-10 12:00:00 UTC").is_visible()
    agent_cell = page.locator("#recent-uses tbody tr").first.locator("td.user-agent")
    assert agent_cell.inner_text() == 'git/2.39.5 <script>alert("ua")</script>'  # shown as text, never run
    screenshot(page, "token-activity-chart")

    page.get_by_role("navigation", name="Audit", exact=True).get_by_role("link", name="Point in time").click()
    page.wait_for_load_state()
    form = page.get_by_role("form", name="Who could do an action on a project?")
    form.get_by_label("Action", exact=True).select_option("git_read")
    form.get_by_label("Project", exact=True).fill("acme/api")
    form.get_by_label("Instant", exact=True).fill(T0.isoformat())
    form.get_by_role("button", name="Who could?").click()
    page.wait_for_load_state()
    answer = page.locator("#who-could-answer")
    assert answer.locator("tbody tr").count() == 2  # the project's token and the group's
    assert answer.get_by_role("link", name="release-ci").is_visible()
    assert answer.get_by_role("link", name="group-pull").is_visible()
    screenshot(page, "point-in-time")


def test_an_auditor_reads_a_tokens_chart(new_page: Any, live_server: str, world: World) -> None:
    token_id = _activity(world)
    auditor = new_page()
    sign_in(auditor, live_server, auditor_token(world))
    response = auditor.goto(f"{live_server}/admin/deploy_tokens/{token_id}?days=7")
    assert response is not None and response.status == 200
    assert auditor.locator("#token-uses-chart .chart-bars > g").count() == 7
    assert auditor.get_by_role("navigation", name="Audit", exact=True).is_visible()
