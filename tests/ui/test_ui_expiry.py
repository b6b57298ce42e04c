"""The create form with an expiry today or earlier (behaviour [expiry], [ui]): the token is created, the page warns
that it is already expired, and the lists show it as expired, as the API does."""

from __future__ import annotations

import re
from collections.abc import Callable

from ..conftest import T0, World
from .conftest import PROJECT_SETTINGS, WebClient

CREATE = PROJECT_SETTINGS + "/deploy_token/create"


def created_page(web: WebClient, expires_at: str) -> str:
    response = web.post(CREATE, {"name": "ci", "scopes": ["read_repository"], "expires_at": expires_at})
    assert response.status_code == 303, response.text
    return web.get(PROJECT_SETTINGS).text


def test_an_expiry_today_creates_the_token_and_warns_it_is_already_expired(
    signed_in: Callable[..., WebClient], world: World
):
    html = created_page(signed_in("maintainer"), T0.date().isoformat())
    assert 'id="new-deploy-token"' in html  # the value is still shown once
    assert re.search(r'id="new-token-expired" role="alert"><strong>.*This token is already expired', html)
    inactive = re.search(r'<details class="inactive-tokens".*?</details>', html, re.S)
    assert inactive and "gitlab+deploy-token-1" in inactive.group(0)
    token = world.runtime.read.token(1)
    assert token is not None and token.is_expired(T0)


def test_an_expiry_tomorrow_shows_no_warning(signed_in: Callable[..., WebClient], world: World):
    html = created_page(signed_in("maintainer"), "2026-01-11")
    assert 'id="new-deploy-token"' in html
    assert "new-token-expired" not in html
