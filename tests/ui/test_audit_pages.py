"""The auditor pages through the Flask test client (behaviour [history], [activity], [auditors]): who may see
them, the audit log's filters, paging and downloads (the same rows as the page), a token's page and what
clients sent shown escaped, the point-in-time form, and bad input as a 400 page."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from api.ui import audit_pages
from infrastructure.activity import ActivityEvent

from ..conftest import T0, World
from .conftest import WebClient

LOG = "/admin/audit_logs"
POINT_IN_TIME = "/admin/audit_logs/point_in_time"
SignIn = Callable[..., WebClient]


def token_page(token_id: int) -> str:
    return f"/admin/deploy_tokens/{token_id}"


def auditor_token(world: World) -> str:
    """A personal access token of a user registered with the auditor flag (and no membership anywhere)."""
    user = world.runtime.directory.register_user(
        world.admin, username="inspector", email="inspector@example.com", is_auditor=True
    )
    return world.runtime.directory.create_personal_access_token(
        world.admin, user.user_id, name="audit", scopes=["read_api"]
    ).value


def table_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-position="\d+">.*?</tr>', html, re.S)


def positions(html: str) -> list[int]:
    return [int(found) for found in re.findall(r'<tr data-position="(\d+)"', html)]


def use(token_id: int, at: datetime, *, allowed: bool = True, agent: str = "git/2.39.5") -> ActivityEvent:
    return ActivityEvent(
        occurred_at=at,
        token_id=token_id,
        token_ref=None,
        endpoint="auth_request",
        action="git_read",
        resource_kind="project",
        resource_ref="acme/api",
        allowed=allowed,
        reason="allowed" if allowed else "revoked",
        status=200 if allowed else 401,
        client_addr="192.0.2.7",
        user_agent=agent,
    )


# Who may see them ---------------------------------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(web: WebClient, world: World):
    for url in (LOG, f"{LOG}/export.csv", POINT_IN_TIME, token_page(1)):
        response = web.get(url)
        assert response.status_code == 302, url
        assert response.headers["Location"].startswith("/users/sign_in?next=")


@pytest.mark.parametrize("role", ["maintainer", "outsider"])
def test_users_who_are_neither_admin_nor_auditor_get_403_everywhere(
    signed_in: SignIn, world: World, role: str
):
    token = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    web = signed_in(role)
    for url in (LOG, f"{LOG}/export.jsonl", POINT_IN_TIME, token_page(token.token_id)):
        response = web.get(url)
        assert response.status_code == 403, url
        assert "Only administrators and auditors can see the audit pages." in response.text
        assert "ci" not in re.sub(r"<[^>]+>", "", response.text.split("<main", 1)[1]).split()
    home = web.get("/")
    assert home.status_code == 200
    assert 'href="/admin/audit_logs"' not in home.text  # no navigation to pages they cannot open


@pytest.mark.parametrize("who", ["admin", "auditor"])
def test_admins_and_auditors_see_every_page_and_the_navigation(web: WebClient, world: World, who: str):
    token = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    web.sign_in(world.admin_token if who == "admin" else auditor_token(world))
    home = web.get("/")
    assert 'href="/admin/audit_logs">Audit log</a>' in home.text
    assert 'href="/admin/audit_logs/point_in_time">Point in time</a>' in home.text
    for url in (LOG, POINT_IN_TIME, token_page(token.token_id)):
        response = web.get(url)
        assert response.status_code == 200, url
        assert response.headers["Cache-Control"] == "no-store"
    assert web.get(f"{LOG}/export.csv").status_code == 200


def test_an_auditor_whose_flag_is_cleared_loses_the_pages_at_once(web: WebClient, world: World):
    web.sign_in(auditor_token(world))
    assert web.get(LOG).status_code == 200
    user = world.runtime.read.user_by_username("inspector")
    assert user is not None
    world.runtime.directory.update_user(world.admin, user.user_id, is_auditor=False)
    assert web.get(LOG).status_code == 403


# The audit log ------------------------------------------------------------------------------------------


def test_the_log_lists_events_newest_first_with_who_where_and_links_to_tokens(
    signed_in: SignIn, world: World
):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    )
    rt.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
    web = signed_in("admin")
    html = web.get(LOG).text
    shown = positions(html)
    every = positions(web.get(LOG, query_string={"per_page": "100"}).text)
    assert shown == sorted(shown, reverse=True) == every[:50]  # 50 a page unless told
    first_row = html.split('<tr data-position="', 2)[1]
    assert "deploy_token_revoked" in first_row and "@root" in first_row
    assert f'href="/admin/deploy_tokens/{token.token.token_id}"' in first_row
    assert ">acme/api<" in first_row  # where the token's project was
    assert f'<span class="count">({len(every)})</span>' in html


def test_a_large_log_is_counted_only_up_to_a_bound(
    signed_in: SignIn, world: World, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(audit_pages, "COUNT_CAP", 5)
    html = signed_in("admin").get(LOG).text
    assert '<span class="count">(more than 5)</span>' in html
    assert len(positions(html)) > 5  # the page itself is not cut


def test_filters_select_the_same_rows_as_the_audit_api(signed_in: SignIn, world: World):
    rt = world.runtime
    project_token = rt.tokens.create_token(
        world.admin, "project", world.project, name="p", scopes=["read_repository"]
    ).token
    group_token = rt.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_registry"]
    ).token
    rt.tokens.revoke_token(world.admin, "project", world.project, project_token.token_id)
    web = signed_in("admin")

    def shown(**query: str) -> list[int]:
        response = web.get(LOG, query_string={**query, "per_page": "100"})
        assert response.status_code == 200, response.text
        return positions(response.text)

    def types(**query: str) -> list[str]:
        html = web.get(LOG, query_string={**query, "per_page": "100"}).text
        return [re.findall(r"<code>([a-z_]+)</code>", row)[0] for row in table_rows(html)]

    project_events = types(token_id=str(project_token.token_id))
    assert project_events[0] == "deploy_token_revoked" and project_events[-1] == "deploy_token_created"
    assert "group_deploy_token_created" in types(token_id=str(group_token.token_id))
    assert not any(kind.startswith("group_") for kind in project_events)
    revoked = shown(event_type="deploy_token_revoked")
    assert revoked == shown(token_id=str(project_token.token_id))[:1]
    assert types(project="acme/api", event_type="deploy_token_created") == ["deploy_token_created"]
    assert types(project=str(world.project), event_type="deploy_token_created") == ["deploy_token_created"]
    assert types(group="acme", event_type="group_deploy_token_created") == ["group_deploy_token_created"]
    assert (
        shown(group="acme", event_type="deploy_token_created") == []
    )  # the project's rows are not the group's
    assert shown(actor_username="nobody-did-this") == []
    every = shown()
    by_root = web.get(LOG, query_string={"actor_username": "root", "per_page": "100"}).text
    assert 0 < len(positions(by_root)) <= len(every)
    assert all("@root" in row for row in table_rows(by_root))
    assert shown(since="2100-01-01") == []
    assert shown(until="2000-01-01") == []
    assert shown(since=T0.date().isoformat(), until=(T0 + timedelta(days=1)).isoformat()) == every


def link(html: str, rel: str) -> str | None:
    found = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    return None if found is None else found.group(1).replace("&amp;", "&")


def test_pages_follow_one_another_without_gaps_or_repeats(signed_in: SignIn, world: World):
    rt = world.runtime
    for number in range(12):  # enough rows for three pages of 20
        rt.tokens.create_token(
            world.admin, "project", world.project, name=f"t{number}", scopes=["read_repository"]
        )
    web = signed_in("admin")
    expected = positions(web.get(f"{LOG}?per_page=100&actor_username=root").text)
    assert len(expected) > 40
    seen: list[int] = []
    pages: list[str] = []
    url: str | None = f"{LOG}?per_page=20&actor_username=root"
    while url:
        pages.append(url)
        html = web.get(url).text
        assert "actor_username=root" in (link(html, "next") or "actor_username=root")  # the filter is kept
        seen += positions(html)
        url = link(html, "next")
    assert seen == expected and len(pages) == -(-len(expected) // 20)
    first = web.get(pages[0]).text
    assert link(first, "prev") is None
    second = web.get(pages[1]).text
    back = link(second, "prev")
    assert back is not None and positions(web.get(back).text) == positions(first)
    newest = re.search(r'<a href="([^"]+)">« Newest</a>', second)
    assert newest is not None and positions(web.get(newest.group(1).replace("&amp;", "&")).text) == positions(
        first
    )


def test_downloads_hold_exactly_the_rows_of_the_filtered_page(signed_in: SignIn, world: World):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="=cmd", scopes=["read_repository"]
    )
    rt.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
    web = signed_in("admin")
    query = {"project": "acme/api", "actor_username": "root", "event_type": "deploy_token_revoked"}
    page = web.get(LOG, query_string=query).text
    links = dict(re.findall(r'href="(/admin/audit_logs/export\.(csv|jsonl)\?[^"]+)"', page))
    assert len(links) == 2
    jsonl_url = next(url for url, kind in links.items() if kind == "jsonl").replace("&amp;", "&")
    csv_url = next(url for url, kind in links.items() if kind == "csv").replace("&amp;", "&")

    jsonl = web.get(jsonl_url)
    assert jsonl.status_code == 200 and jsonl.mimetype == "application/x-ndjson"
    assert "attachment" in jsonl.headers["Content-Disposition"]
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [row["position"] for row in rows][::-1] == positions(page) != []
    assert {row["event_type"] for row in rows} == {"deploy_token_revoked"}

    table = list(csv.DictReader(io.StringIO(web.get(csv_url).text)))
    assert [int(row["position"]) for row in table][::-1] == positions(page)
    assert table[0]["target_name"] == "'=cmd"  # neutralised as every CSV export is


def test_the_api_export_takes_the_new_filters_for_lifecycle_only(app, world: World):
    client = app.test_client()
    headers = {"PRIVATE-TOKEN": world.admin_token}
    lifecycle = client.get(
        "/api/v4/audit/exports/lifecycle.jsonl?event_type=group_created&actor_username=root", headers=headers
    )
    assert lifecycle.status_code == 200
    assert {json.loads(line)["event_type"] for line in lifecycle.text.splitlines()} == {"group_created"}
    usage = client.get("/api/v4/audit/exports/usage.jsonl?event_type=x", headers=headers)
    assert usage.status_code == 400
    assert "only lifecycle rows" in usage.text


# (query, the field named, the words that say why)
BAD_FILTERS: list[tuple[dict[str, str], str, str]] = [
    ({"token_id": "abc"}, "token_id", "Not a valid integer."),
    ({"token_id": "0"}, "token_id", "greater than or equal to 1"),
    ({"token_id": "9" * 40}, "token_id", ""),
    ({"token_id": "1e999"}, "token_id", ""),
    ({"since": "yesterday"}, "since", "must be in ISO 8601 format"),
    ({"since": "2026-02-01", "until": "2026-01-01"}, "until", "must be later than From"),
    ({"project": "acme/api", "group": "acme"}, "group", "not both"),
    ({"project": "no/such/project"}, "project", "names no project"),
    ({"group": "x" * 5000}, "group", "Length must be between 1 and 1000."),
    ({"actor_username": "a" * 300}, "actor_username", "Length must be between 1 and 255."),
    ({"event_type": "e" * 300}, "event_type", "Length must be between 1 and 255."),
]


def test_bad_filters_are_a_400_page_naming_the_field(signed_in: SignIn, world: World):
    web = signed_in("admin")
    for query, field, message in BAD_FILTERS:
        for url in (LOG, f"{LOG}/export.csv"):
            response = web.get(url, query_string=query)
            assert response.status_code == 400, (url, query)
            assert response.mimetype == "text/html"
            assert f'id="filter-{field}-error"' in response.text, (url, query)
            assert message in response.text, (url, query)
            assert 'id="form-error-summary"' in response.text


def test_filter_values_come_back_escaped(signed_in: SignIn, world: World):
    hostile = '"><script>alert(1)</script>'
    response = signed_in("admin").get(LOG, query_string={"event_type": hostile, "actor_username": hostile})
    assert response.status_code == 200
    assert "No events match this filter." in response.text
    assert "<script>alert(1)</script>" not in response.text
    assert "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in response.text


def test_bad_paging_is_a_400_page(signed_in: SignIn, world: World):
    web = signed_in("admin")
    for query, message in (
        ({"per_page": "7"}, "Must be one of: 20, 50, 100."),
        ({"per_page": "1" * 40}, "Rows per page"),
        ({"before": "-1"}, "Must be greater than or equal to 1"),
        ({"before": "5", "after": "1"}, "give one page bound, not two"),
    ):
        response = web.get(LOG, query_string=query)
        assert response.status_code == 400, query
        assert 'id="form-error-summary"' in response.text and message in response.text


def test_nul_and_undecodable_parameters_are_400(signed_in: SignIn, world: World):
    web = signed_in("admin")
    for raw in ("token_id=%00", "project=a%00b", "since=%ED%A0%80", "actor_username=%FF", "days=%00"):
        for url in (LOG, POINT_IN_TIME, f"{LOG}/export.jsonl", token_page(1)):
            assert web.get(f"{url}?{raw}").status_code == 400, (url, raw)


def test_instants_that_do_not_exist_in_utc_are_400(signed_in: SignIn, world: World):
    web = signed_in("admin")
    for instant in ("9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"):
        for url, name in (
            (LOG, "since"),
            (LOG, "until"),
            (f"{LOG}/export.csv", "since"),
        ):
            assert web.get(url, query_string={name: instant}).status_code == 400, (url, name, instant)
        for question in (
            {"question": "who_could", "project": "acme/api", "action": "git_read", "at": instant},
            {"question": "token_state", "token_id": "1", "at": instant},
        ):
            assert web.get(POINT_IN_TIME, query_string=question).status_code == 400, question
        for path in ("/api/v4/audit_events", "/api/v4/audit/exports/lifecycle.csv"):
            response = web.get(
                path, query_string={"since": instant}, headers={"PRIVATE-TOKEN": world.admin_token}
            )
            assert response.status_code == 400, (path, instant)


# A token's page -----------------------------------------------------------------------------------------


def test_a_tokens_page_shows_its_state_last_use_chart_and_recent_uses(signed_in: SignIn, world: World):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    today = rt.clock.now()
    for days_ago, allowed, count in ((0, True, 3), (0, False, 1), (2, True, 2), (40, True, 5)):
        for number in range(count):
            rt.activity.record(
                use(token.token_id, today - timedelta(days=days_ago, minutes=number + 1), allowed=allowed)
            )
    rt.activity.flush()
    rt.tokens.revoke_token(world.admin, "project", world.project, token.token_id)
    html = signed_in("admin").get(token_page(token.token_id)).text
    assert 'id="token-status">Revoked<' in html
    assert "acme/api" in html
    last = re.search(r'<dd id="last-use">(.*?)</dd>', html, re.S)
    assert last is not None and (today - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M") in last.group(1)
    svg = re.search(r"<svg .*?</svg>", html, re.S)
    assert svg is not None
    assert "<title" in svg.group(0) and "the last 30 days" in svg.group(0)
    assert "6 uses from" in svg.group(0) and "5 allowed, 1 denied" in svg.group(0)  # day 40 is outside
    assert svg.group(0).count('class="bar-allowed"') == 2 and svg.group(0).count('class="bar-denied"') == 1
    recent = re.search(r'<table class="table" id="recent-uses".*?</table>', html, re.S)
    assert recent is not None and recent.group(0).count("<tr>") == 1 + 11  # the header and every use
    ninety = signed_in("admin").get(token_page(token.token_id) + "?days=90").text
    assert "11 uses from" in ninety


def test_hostile_user_agents_are_shown_escaped_and_cut(signed_in: SignIn, world: World):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    agents = [
        '<script>alert("ua")</script>',
        "nul\x00byte",
        "lone \ud800 surrogate",
        "x" * 10_000,
        "\u202egnp.exe",
    ]
    for number, agent in enumerate(agents):
        rt.activity.record(use(token.token_id, T0 - timedelta(minutes=number), agent=agent))
    rt.activity.flush()
    # And one written around the writer (as a restored backup could hold it): the page escapes it anyway.
    with rt.db.transaction() as cursor:
        cursor.execute(
            "INSERT INTO token_activity (occurred_at, token_id, endpoint, action, allowed, reason, status, "
            "client_addr, user_agent) VALUES (?, ?, 'check', 'git_read', ?, 'allowed', 200, ?, ?)",
            (T0 - timedelta(hours=1), token.token_id, True, '"><img src=x onerror=1>', "<b>bold</b>"),
        )
    response = signed_in("admin").get(token_page(token.token_id))
    assert response.status_code == 200
    html = response.text
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#34;ua&#34;)&lt;/script&gt;" in html
    assert "\x00" not in html and "nul\\x00byte" in html
    assert "lone \\ud800 surrogate" in html
    assert "x" * 512 in html and "x" * 513 not in html  # stored cut to the activity text limit
    assert "\u202e" not in html and "\\u202egnp.exe" in html
    assert "<img src=x" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    response.get_data().decode("utf-8")  # the page is valid UTF-8 throughout


def test_a_token_that_does_not_exist_is_404_and_a_bad_period_400(signed_in: SignIn, world: World):
    web = signed_in("admin")
    assert web.get(token_page(999_999)).status_code == 404
    assert web.get(token_page(2**63)).status_code == 404
    token = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    for days in ("8", "abc", "-1", "9" * 50):
        response = web.get(token_page(token.token_id) + f"?days={days}")
        assert response.status_code == 400
        assert 'id="filter-days-error"' in response.text and "<svg" in response.text


def test_a_deleted_token_keeps_its_page(signed_in: SignIn, world: World):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="gone", scopes=["read_repository"]
    ).token
    rt.tokens.delete_token(world.admin, "project", world.project, token.token_id)
    html = signed_in("admin").get(token_page(token.token_id)).text
    assert 'id="token-status">Deleted<' in html


# Point in time ------------------------------------------------------------------------------------------


def test_who_could_and_a_tokens_state_at_an_instant_as_tables(signed_in: SignIn, world: World, clock):
    rt = world.runtime
    token = rt.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    before_revoke = clock.now()
    clock.set(before_revoke + timedelta(hours=1))
    rt.tokens.revoke_token(world.admin, "project", world.project, token.token_id)
    web = signed_in("admin")
    then = before_revoke.isoformat()
    answer = web.get(
        POINT_IN_TIME,
        query_string={"question": "who_could", "project": "acme/api", "action": "git_read", "at": then},
    )
    assert answer.status_code == 200
    table = re.search(r'<table class="table" id="who-could-answer".*?</table>', answer.text, re.S)
    assert table is not None and ">ci</a>" in table.group(0) and "root" in table.group(0)
    later = (before_revoke + timedelta(hours=2)).isoformat()
    none = web.get(
        POINT_IN_TIME,
        query_string={
            "question": "who_could",
            "project": str(world.project),
            "action": "git_read",
            "at": later,
        },
    )
    assert none.status_code == 200 and "No deploy token could do this then." in none.text

    state = web.get(
        POINT_IN_TIME, query_string={"question": "token_state", "token_id": str(token.token_id), "at": then}
    )
    found = re.search(r'<table class="table" id="token-state-answer".*?</table>', state.text, re.S)
    assert found is not None and "<td>Active</td>" in found.group(0)
    revoked = web.get(
        POINT_IN_TIME, query_string={"question": "token_state", "token_id": str(token.token_id), "at": later}
    )
    assert "<td>Revoked</td>" in revoked.text


# (question, the field named)
BAD_QUESTIONS: list[tuple[dict[str, str], str]] = [
    ({"question": "who_could", "action": "git_read", "at": "2026-01-10"}, "project"),
    ({"question": "who_could", "project": "acme/api", "action": "fly", "at": "2026-01-10"}, "action"),
    ({"question": "who_could", "project": "acme/api", "action": "git_read"}, "at"),
    ({"question": "who_could", "project": "acme/api", "action": "git_read", "at": "soon"}, "at"),
    (
        {"question": "who_could", "project": "no/such", "action": "git_read", "at": "2026-01-10"},
        "project",
    ),
    (
        {"question": "who_could", "project": "acme/api", "action": "git_read", "at": "1990-01-01"},
        "project",
    ),
    (
        {"question": "who_could", "project": "p" * 2000, "action": "git_read", "at": "2026-01-10"},
        "project",
    ),
    ({"question": "token_state", "token_id": "x", "at": "2026-01-10"}, "token_id"),
    ({"question": "token_state", "token_id": "424242", "at": "2026-01-10"}, "token_id"),
    ({"question": "token_state", "token_id": "9" * 30, "at": "2026-01-10"}, "token_id"),
    ({"question": "token_state", "token_id": "1", "at": "9999-12-31T24:00"}, "at"),
    ({"question": "<script>"}, "question"),
]


def test_bad_point_in_time_questions_are_a_400_page(signed_in: SignIn, world: World):
    web = signed_in("admin")
    for query, field in BAD_QUESTIONS:
        response = web.get(POINT_IN_TIME, query_string=query)
        assert response.status_code == 400, query
        assert 'id="form-error-summary"' in response.text
        anchor = (
            "filter-state-at" if (query["question"], field) == ("token_state", "at") else f"filter-{field}"
        )
        assert f'href="#{anchor}"' in response.text or field == "question", query
        assert "<script>" not in response.text.split("<main", 1)[1]


def test_the_auditor_sees_the_same_answers_and_no_write_control(web: WebClient, world: World):
    web.sign_in(auditor_token(world))
    html = web.get(
        POINT_IN_TIME,
        query_string={
            "question": "who_could",
            "project": "acme/api",
            "action": "git_read",
            "at": T0.isoformat(),
        },
    ).text
    assert 'id="who-could-answer"' in html
    assert '<form method="post"' not in html.split("<main", 1)[1]


def test_the_token_page_links_its_history_and_state_form(signed_in: SignIn, world: World):
    token = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    ).token
    web = signed_in("admin")
    html = web.get(token_page(token.token_id)).text
    assert f'href="/admin/audit_logs?token_id={token.token_id}"' in html
    form = web.get(f"{POINT_IN_TIME}?token_id={token.token_id}")
    assert form.status_code == 200
    assert f'name="token_id" class="form-control" value="{token.token_id}"' in form.text
