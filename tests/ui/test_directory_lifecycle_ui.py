"""The web UI after a rename (behaviour [history-paths], [old-paths]): the token's history says where its
project was at each event, and the old path's pages are gone."""

from __future__ import annotations

from collections.abc import Callable

from ..conftest import World
from .conftest import PROJECT_SETTINGS, WebClient


def test_a_tokens_history_shows_the_path_its_project_had_at_each_event(
    world: World, signed_in: Callable[..., WebClient]
):
    token = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="deploy", scopes=["read_repository"]
    )
    world.runtime.lifecycle.update_project(world.admin, world.project, path="renamed")
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token.token.token_id)
    web = signed_in("owner")
    assert web.get(PROJECT_SETTINGS).status_code == 404  # no redirect from the old path
    page = web.get(f"/acme/renamed/-/deploy_tokens/{token.token.token_id}/history")
    assert page.status_code == 200
    rows = page.text.split("<tbody>", 1)[1].split("</tbody>", 1)[0].split("<tr>")[1:]
    paths = [row.split('<td class="monospace">')[2].split("</td>")[0] for row in rows]
    assert paths == ["acme/api", "acme/api", "acme/renamed"]  # created, scoped, revoked
    assert "Project path then" in page.text
