"""The auth endpoints under attack: forged client addresses, brute force, registry names spelled another way,
hostile strings in the JSON check, and hostile URIs that must still leave a record (on both backends, since
PostgreSQL refuses text that SQLite stores)."""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from api.activity import install_activity
from api.app import create_app
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from domain.token_values import generate_token
from infrastructure.activity import ActivityRecorder, activity_rows
from infrastructure.bans import AddressBans, BanPolicy, RedisAddressBans
from infrastructure.keys import Keyring
from infrastructure.settings import ConfigurationError, Settings

from ..conftest import BOTH_BACKENDS, T0, World
from .test_auth_checks import CLONE, basic, git_auth, granted, issue, nginx, registry_token

ATTACKER = "203.0.113.66"
BYSTANDER = "198.51.100.20"
REDIS_URL = "redis://127.0.0.1:6379/0"


def app_for(runtime: Runtime, **settings: object) -> FlaskClient:
    runtime.settings = dataclasses.replace(runtime.settings, **settings)  # type: ignore[arg-type]
    app = create_app(runtime)
    app.testing = True
    return app.test_client()


@pytest.fixture
def recorder(app: Flask, runtime: Runtime) -> Iterator[ActivityRecorder]:
    installed = install_activity(app, runtime)
    yield installed
    installed.close()


def from_address(address: str) -> dict[str, str]:
    """What nginx (a trusted proxy on loopback) says about the client."""
    return {"X-Original-Remote-Addr": address}


# Forged client addresses ---------------------------------------------------------------------------------


def test_jwt_auth_records_the_peer_not_a_forwarded_header(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    token = issue(world, "project", world.project, "read_registry")
    client.get(
        "/jwt/auth",
        query_string={"service": "container_registry", "scope": "repository:acme/api:pull"},
        headers={**git_auth(token), "X-Original-Remote-Addr": "192.0.2.1"},
        environ_base={"REMOTE_ADDR": "203.0.113.5"},
    )
    recorder.flush()
    assert {row.event.client_addr for row in activity_rows(world.runtime.db)} == {"203.0.113.5"}


def test_auth_request_believes_the_forwarded_address_only_from_a_trusted_proxy(
    runtime: Runtime, world: World
):
    client = app_for(runtime, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    recorder = install_activity(client.application, runtime)
    token = issue(world, "project", world.project, "read_repository")
    try:
        for peer in ("10.1.2.3", "127.0.0.1"):
            client.get(
                "/internal/auth_request",
                headers={"X-Original-URI": CLONE, **git_auth(token), **from_address("192.0.2.9")},
                environ_base={"REMOTE_ADDR": peer},
            )
        recorder.flush()
        recorded = [row.event.client_addr for row in activity_rows(runtime.db)]
    finally:
        recorder.close()
    # From the trusted proxy, the client it names; from loopback (not trusted here), loopback itself.
    assert recorded == ["192.0.2.9", "127.0.0.1"]


def test_forwarded_addresses_are_normalised(client: FlaskClient, world: World, recorder: ActivityRecorder):
    token = issue(world, "project", world.project, "read_repository")
    for forwarded in ("::ffff:192.0.2.7", "2001:DB8:0:0:0:0:0:1", "not-an-address"):
        nginx(client, CLONE, headers={**git_auth(token), **from_address(forwarded)})
    recorder.flush()
    addresses = [row.event.client_addr for row in activity_rows(world.runtime.db)]
    assert addresses == ["192.0.2.7", "2001:db8::1", "127.0.0.1"]


def test_trusted_proxies_setting(tmp_path):
    base = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    default = Settings.from_env(base)
    assert [str(n) for n in default.trusted_proxies] == ["127.0.0.0/8", "::1/128"]
    chosen = Settings.from_env({**base, "DEPLOY_TOKENS_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1"})
    assert [str(n) for n in chosen.trusted_proxies] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert Settings.from_env({**base, "DEPLOY_TOKENS_TRUSTED_PROXIES": ""}).trusted_proxies == ()
    with pytest.raises(ConfigurationError, match="DEPLOY_TOKENS_TRUSTED_PROXIES"):
        Settings.from_env({**base, "DEPLOY_TOKENS_TRUSTED_PROXIES": "10.0.0.0/33"})


# Brute force ---------------------------------------------------------------------------------------------


def fail(client: FlaskClient, address: str, times: int) -> None:
    wrong = basic("gitlab+deploy-token-1", generate_token())
    for _ in range(times):
        assert nginx(client, CLONE, headers={**wrong, **from_address(address)}).status_code == 401


def test_an_address_is_banned_after_max_retry_failures_even_with_a_valid_token(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    token = issue(world, "project", world.project, "read_repository")
    fail(client, ATTACKER, 9)
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 200
    fail(client, ATTACKER, 1)  # the tenth within the minute
    banned = nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)})
    assert banned.status_code == 403
    assert "WWW-Authenticate" not in banned.headers
    # Other addresses are unaffected.
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(BYSTANDER)}).status_code == 200
    recorder.flush()
    last = [row for row in activity_rows(world.runtime.db) if row.event.client_addr == ATTACKER][-1]
    assert (last.event.reason, last.event.status, last.event.allowed) == ("ip_banned", 403, False)


def test_the_ban_covers_every_auth_endpoint_and_ends_after_ban_time(client: FlaskClient, world: World):
    runtime = world.runtime
    token = issue(world, "project", world.project, "read_repository", "read_registry")
    fail(client, ATTACKER, 10)
    jwt = client.get(
        "/jwt/auth",
        query_string={"service": "container_registry", "scope": "repository:acme/api:pull"},
        headers=git_auth(token),
        environ_base={"REMOTE_ADDR": ATTACKER},
    )
    assert jwt.status_code == 403
    assert jwt.get_json()["errors"][0]["code"] == "DENIED"
    check = client.post(
        "/internal/auth/check",
        json={
            "username": token.token.username,
            "token": token.value,
            "action": "git_read",
            "project": "acme/api",
        },
        environ_base={"REMOTE_ADDR": ATTACKER},
    )
    assert check.get_json()["allowed"] is False
    assert check.get_json()["reason"] == "ip_banned"
    assert isinstance(runtime.clock, FixedClock)
    runtime.clock.set(runtime.clock.now() + timedelta(seconds=3599))
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 403
    runtime.clock.set(runtime.clock.now() + timedelta(seconds=1))
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 200


def test_failures_spread_beyond_find_time_do_not_ban(client: FlaskClient, world: World):
    runtime = world.runtime
    assert isinstance(runtime.clock, FixedClock)
    token = issue(world, "project", world.project, "read_repository")
    for _ in range(4):  # 36 failures, never ten within one minute
        fail(client, ATTACKER, 9)
        runtime.clock.set(runtime.clock.now() + timedelta(seconds=61))
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 200


def test_missing_credentials_and_loopback_never_lead_to_a_ban(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_repository")
    for _ in range(30):  # git's first request of every clone carries no credentials
        assert nginx(client, CLONE, headers=from_address(ATTACKER)).status_code == 401
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 200
    fail(client, "127.0.0.1", 30)  # the resource servers' own address is allowlisted by default
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address("127.0.0.1")}).status_code == 200


def test_a_ban_is_visible_in_metrics(client: FlaskClient, world: World):
    fail(client, ATTACKER, 10)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'deploy_tokens_auth_bans_total{endpoint="auth_request"} 1' in text
    assert "deploy_tokens_auth_banned_addresses 1" in text
    assert 'reason="ip_banned"' not in text  # nothing refused yet
    nginx(client, CLONE, headers=from_address(ATTACKER))
    assert 'reason="ip_banned",result="denied"} 1' in client.get("/metrics").get_data(as_text=True)


def test_ban_settings(tmp_path):
    base = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    assert Settings.from_env(base).auth_bans == BanPolicy()
    chosen = Settings.from_env(
        {
            **base,
            "DEPLOY_TOKENS_BAN_MAXRETRY": "3",
            "DEPLOY_TOKENS_BAN_FINDTIME": "10",
            "DEPLOY_TOKENS_BAN_BANTIME": "20",
            "DEPLOY_TOKENS_BAN_ALLOWLIST": "10.0.0.0/8",
        }
    ).auth_bans
    assert (chosen.max_retry, chosen.find_time, chosen.ban_time) == (3, 10, 20)
    assert chosen.allowlisted("10.9.9.9") and not chosen.allowlisted("127.0.0.1")
    with pytest.raises(ConfigurationError, match="DEPLOY_TOKENS_BAN_FINDTIME"):
        Settings.from_env({**base, "DEPLOY_TOKENS_BAN_FINDTIME": "0"})


def test_max_retry_zero_switches_bans_off(runtime: Runtime, world: World):
    runtime.bans = AddressBans(BanPolicy(max_retry=0), runtime.clock)
    client = app_for(runtime)
    token = issue(world, "project", world.project, "read_repository")
    fail(client, ATTACKER, 50)
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 200


def test_the_memory_ban_list_stays_bounded():
    bans = AddressBans(BanPolicy(max_retry=2), FixedClock(T0), capacity=100)
    now = T0
    for number in range(1000):
        bans.register_failure(f"192.0.2.{number % 250}", now)
        bans.register_failure(f"2001:db8::{number:x}", now)
    assert len(bans._windows) <= 100 and len(bans._banned) <= 100


@pytest.mark.redis
def test_redis_bans_are_shared_by_every_process():
    """Two ban lists with their own connections, as two gunicorn workers (or machines) have them."""
    prefix = f"test-bans-{secrets.token_hex(4)}:"
    clock = FixedClock(T0)
    policy = BanPolicy(max_retry=3)
    first = RedisAddressBans(policy, clock, Redis.from_url(REDIS_URL), prefix=prefix)
    second = RedisAddressBans(policy, clock, Redis.from_url(REDIS_URL), prefix=prefix)
    stop = threading.Event()
    follower = threading.Thread(target=second.follow, args=(stop,), daemon=True)
    follower.start()
    try:
        now = clock.now()
        # Failures counted in both processes add up to one count.
        assert not first.register_failure(ATTACKER, now)
        assert not second.register_failure(ATTACKER, now)
        time.sleep(0.3)  # the follower subscribed and loaded before the ban is published
        assert first.register_failure(ATTACKER, now)
        deadline = time.monotonic() + 5
        while not second.is_banned(ATTACKER, now) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.is_banned(ATTACKER, now)
        assert not second.is_banned(BYSTANDER, now)
        # A process that starts later loads the bans in force.
        third = RedisAddressBans(policy, clock, Redis.from_url(REDIS_URL), prefix=prefix)
        third.reload()
        assert third.is_banned(ATTACKER, now)
        assert not third.is_banned(ATTACKER, now + timedelta(seconds=3600))
    finally:
        stop.set()
        follower.join(timeout=5)
        cleanup = Redis.from_url(REDIS_URL)
        for key in cleanup.scan_iter(f"{prefix}*"):
            cleanup.delete(key)


@pytest.mark.redis
def test_a_runtime_with_redis_shares_its_bans(settings: Settings, clock: FixedClock):
    configured = dataclasses.replace(settings, redis_url=REDIS_URL)
    with Runtime.open(configured, clock=clock) as runtime:
        assert isinstance(runtime.bans, RedisAddressBans)


def test_an_unreachable_redis_never_fails_an_answer(runtime: Runtime, world: World):
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    runtime.bans = RedisAddressBans(BanPolicy(max_retry=3), runtime.clock, dead)
    client = app_for(runtime)
    token = issue(world, "project", world.project, "read_repository")
    fail(client, ATTACKER, 3)  # counted in the process instead
    assert nginx(client, CLONE, headers={**git_auth(token), **from_address(ATTACKER)}).status_code == 403


# Registry names ------------------------------------------------------------------------------------------


def test_registry_grants_only_the_canonical_spelling(client: FlaskClient, world: World):
    token = issue(world, "project", world.project, "read_registry", "write_registry")
    response = registry_token(client, token, "repository:ACME/api:pull,push", "repository:Acme/api/web:pull")
    assert granted(world.runtime, response) == {}
    response = registry_token(client, token, "repository:acme/api:pull,push", "repository:acme/api/web:pull")
    assert granted(world.runtime, response) == {"acme/api": ["pull", "push"], "acme/api/web": ["pull"]}


# Hostile strings in the JSON check -----------------------------------------------------------------------


@BOTH_BACKENDS
@pytest.mark.parametrize(
    "fields",
    [
        {"project": "\ud800"},
        {"project": "acme/api\x00"},
        {"token": "gldt-" + "\ud800" * 30},
        {"token": "gldt-\x00"},
        {"username": "gitlab+deploy-token-1\x1b[31m"},
        {"client_address": "not an address"},
    ],
)
def test_the_json_check_refuses_unstorable_text(
    client: FlaskClient, world: World, recorder: ActivityRecorder, fields: dict[str, str]
):
    token = issue(world, "project", world.project, "read_repository")
    body = {
        "username": token.token.username,
        "token": token.value,
        "action": "git_read",
        "project": "acme/api",
    }
    response = client.post("/internal/auth/check", json={**body, **fields})
    assert response.status_code == 400
    # And the writer still records the next decision.
    assert client.post("/internal/auth/check", json=body).get_json()["allowed"] is True
    recorder.flush()
    assert [row.event.allowed for row in activity_rows(world.runtime.db)] == [True]


def test_the_json_check_believes_client_address_only_from_a_trusted_proxy(
    client: FlaskClient, world: World, recorder: ActivityRecorder
):
    token = issue(world, "project", world.project, "read_repository")
    body = {
        "username": token.token.username,
        "token": token.value,
        "action": "git_read",
        "project": "acme/api",
        "client_address": "192.0.2.44",
    }
    client.post("/internal/auth/check", json=body)  # from loopback: trusted by default
    client.post("/internal/auth/check", json=body, environ_base={"REMOTE_ADDR": "203.0.113.3"})
    recorder.flush()
    assert [row.event.client_addr for row in activity_rows(world.runtime.db)] == ["192.0.2.44", "203.0.113.3"]


def test_a_lone_surrogate_has_a_digest():
    keys = Keyring(b"s" * 40)
    assert len(keys.digest("gldt-\ud800")) == 64


# Hostile URIs still leave a record -----------------------------------------------------------------------


@BOTH_BACKENDS
@pytest.mark.parametrize(
    "uri",
    [
        "/acme/api.git/info/refs%00",
        "/acme/%0a%0d%1b.git/info/refs",
        "/api/v4/projects/acme%2Fapi%ff%fe/packages/generic/a/b/c",
        "/%c0%af.git/info/refs",
    ],
)
def test_hostile_uris_are_refused_and_recorded(
    client: FlaskClient, world: World, recorder: ActivityRecorder, uri: str
):
    token = issue(world, "project", world.project, "read_repository", "write_package_registry")
    response = nginx(client, uri, "PUT", git_auth(token))
    assert response.status_code in (401, 403)
    assert nginx(client, CLONE, headers=git_auth(token)).status_code == 200
    recorder.flush()
    rows = activity_rows(world.runtime.db)
    assert [row.event.status for row in rows] == [response.status_code, 200]
