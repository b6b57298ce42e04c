"""``/metrics`` of a four-worker gunicorn (the Procfile's ``web``) reports the sum over every worker on every
scrape: auth checks spread over the workers, then repeated scrapes (each on a new connection, so any worker
answers) all show the exact totals, also after a worker was replaced."""

from __future__ import annotations

import base64
import os
import signal
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from api.metrics import WorkerFilesCollector
from deploy_tokens.runtime import Runtime

from ..conftest import World
from .web_process import WebProcess, request, runtime_dir, web_environment, web_process

__all__ = ["runtime_dir"]  # the fixture

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# One round of checks; rounds repeat until more than one worker has counted (the kernel picks the worker).
ALLOWED, DENIED, NGINX = 12, 5, 3
MAX_ROUNDS = 40
CLIENTS = 8
SCRAPES = 12


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = request(port, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in found, f"{key} twice in one scrape"
            found[key] = sample.value
    return found


def totals(found: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    """The figures the test checks, by name (labels folded into the name where they matter)."""
    result: dict[str, float] = defaultdict(float)
    for (name, labels), value in found.items():
        label = dict(labels)
        if name == "deploy_tokens_auth_decisions_total":
            result[f"decisions {label['endpoint']} {label['result']} {label['reason']}"] += value
        elif name == "deploy_tokens_auth_decision_duration_seconds_count":
            result[f"duration count {label['endpoint']}"] += value
        elif name == "deploy_tokens_auth_decision_duration_seconds_bucket" and label["le"] == "+Inf":
            result[f"duration +Inf {label['endpoint']}"] += value
        elif not labels:
            result[name] = value
    return result


def expected(rounds: int) -> dict[str, float]:
    allowed, denied, nginx = ALLOWED * rounds, DENIED * rounds, NGINX * rounds
    return {
        "decisions check allowed allowed": allowed,
        "decisions check denied username_mismatch": denied,
        "decisions auth_request allowed allowed": nginx,
        "duration count check": allowed + denied,
        "duration +Inf check": allowed + denied,
        "duration count auth_request": nginx,
        "deploy_tokens_credential_index_tokens": 1,
        "deploy_tokens_projection_status_up": 1,
    }


def check_round(world: World, token: str, username: str, web: WebProcess) -> None:
    """One round, sent by several clients at once so that several workers are busy and more than one accepts."""
    body = {"token": token, "action": "git_read", "project": "acme/api"}
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    headers = {
        "Authorization": f"Basic {basic}",
        "X-Original-URI": "/acme/api.git/info/refs?service=git-upload-pack",
        "X-Original-Method": "GET",
    }

    def one(number: int) -> int:
        if number < ALLOWED + DENIED:
            name = username if number < ALLOWED else "someone-else"
            status, _, answer = request(web.port, "POST", "/internal/auth/check", {**body, "username": name})
            assert status == 200, answer
            return status
        return request(web.port, "GET", "/internal/auth_request", headers=headers)[0]

    with ThreadPoolExecutor(CLIENTS) as clients:
        assert set(clients.map(one, range(ALLOWED + DENIED + NGINX))) == {200}


def check_until_two_workers_counted(world: World, token: str, username: str, web: WebProcess) -> int:
    (folder,) = web.metrics_folders()
    for rounds in range(1, MAX_ROUNDS + 1):
        check_round(world, token, username, web)
        if len(list(folder.glob("counter_*.db"))) >= 2:
            return rounds
    raise AssertionError(f"{MAX_ROUNDS} rounds of concurrent checks all went to one worker")


def assert_exact_totals(web: WebProcess, rounds: int) -> None:
    wanted = expected(rounds)
    for _ in range(SCRAPES):
        seen = totals(samples(web.port))
        assert {name: seen.get(name) for name in wanted} == wanted


def test_every_scrape_of_a_four_worker_gunicorn_reports_the_exact_totals(
    pg_runtime: Runtime, postgres_schema: str, tmp_path: Path, runtime_dir: Path
) -> None:
    world = World(pg_runtime)
    issued = pg_runtime.tokens.create_token(
        world.admin, "project", world.project, name="ci", scopes=["read_repository"]
    )
    # The subject is how the workers' counts add up, not freshness: a loaded machine must not turn an expected
    # answer into "unavailable" (tests/faults holds the staleness bound).
    env = web_environment(
        postgres_schema,
        tmp_path,
        runtime_dir,
        WEB_CONCURRENCY="4",
        WEB_THREADS="2",
        DEPLOY_TOKENS_AUTH_MAX_STALENESS="60",
    )
    with web_process(env, tmp_path) as web:
        web.wait_workers(4)
        # The checks go to more than one worker: each that counted keeps its own file.
        rounds = check_until_two_workers_counted(world, issued.value, issued.token.username, web)
        (folder,) = web.metrics_folders()
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert_exact_totals(web, rounds)

        # A replaced worker takes nothing away: its counts stay in the folder and keep adding up.
        victim = web.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        web.wait_workers(4, replacing=victim)
        web.wait_ready()
        assert_exact_totals(web, rounds)
        assert samples(web.port)[("deploy_tokens_activity_queue_depth", ())] >= 0
    assert web.metrics_folders() == [], "the instance removes its metrics folder when it stops"


def test_a_file_a_killed_worker_left_empty_does_not_fail_the_scrape(tmp_path: Path) -> None:
    name = "deploy_tokens_auth_decisions"
    counts = MmapedDict(str(tmp_path / "counter_101.db"))
    counts.write_value(mmap_key(name, f"{name}_total", ["endpoint"], ["nginx"], "Auth decisions."), 3.0, 0.0)
    counts.close()
    (tmp_path / "counter_102.db").touch()  # created and never sized: its worker was killed in between

    registry = CollectorRegistry()
    WorkerFilesCollector(registry, tmp_path)
    exposition = generate_latest(registry).decode()

    assert f'{name}_total{{endpoint="nginx"}} 3.0' in exposition.splitlines()
