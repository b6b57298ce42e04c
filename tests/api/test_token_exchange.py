"""``POST /oauth/token`` (behaviour [federation]): an ID token from a real local issuer exchanged for a deploy
token, every refusal an OAuth error with its reason in the activity record, hostile requests answered 4xx."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.activity import install_activity
from api.app import create_app
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock
from domain.federation import ClaimCondition
from infrastructure.activity import ActivityRecorder, activity_rows
from infrastructure.settings import Settings

from ..conftest import POSTGRES_ONLY, World
from ..oidc_issuer import LocalIssuer, gitlab_ci_claims

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
AUDIENCE = "https://deploy-tokens.example"


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    with LocalIssuer() as running:
        yield running


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The local issuer speaks plain http.
    return dataclasses.replace(settings, oidc_allow_insecure=True)


@pytest.fixture
def recorder(app: Flask, runtime: Runtime) -> Iterator[ActivityRecorder]:
    installed = install_activity(app, runtime)
    yield installed
    installed.close()


@pytest.fixture
def trusted(world: World, issuer: LocalIssuer) -> LocalIssuer:
    world.runtime.trust_policies.set_trusted_issuers(world.admin, [issuer.issuer])
    return issuer


def project_path(world: World, project_id: int | None = None) -> str:
    record = world.runtime.read.project(project_id or world.project)
    assert record is not None
    return record.full_path


def policy(world: World, issuer: LocalIssuer, *, holder: tuple[str, int] | None = None, **terms: Any) -> int:
    kind, holder_id = holder or ("project", world.project)
    conditions = terms.pop(
        "conditions",
        [
            ClaimCondition("project_path", "ci/app"),
            ClaimCondition("ref", "main"),
            ClaimCondition("ref_protected", "true"),
        ],
    )
    record = world.runtime.trust_policies.create_policy(
        world.admin,
        kind,  # type: ignore[arg-type]
        holder_id,
        name=terms.pop("name", "release jobs"),
        issuer=issuer.issuer,
        audience=terms.pop("audience", AUDIENCE),
        conditions=conditions,
        scopes=terms.pop("scopes", ["read_repository", "read_registry"]),
        ttl_seconds=terms.pop("ttl_seconds", 600),
    )
    return record.policy_id


def id_token(issuer: LocalIssuer, clock: FixedClock, **claims: Any) -> str:
    audience = claims.pop("aud", AUDIENCE)
    base = gitlab_ci_claims(project_path="ci/app", ref="main")
    base.update(claims)
    return issuer.mint(base, now=clock.now(), audience=audience)


def exchange(client: FlaskClient, token: str, **extra: str) -> Any:
    form = {"grant_type": GRANT, "subject_token": token, "subject_token_type": JWT, **extra}
    return client.post("/oauth/token", data=form)


def check(client: FlaskClient, username: str, value: str, project: int, action: str = "git_read") -> bool:
    answer = client.post(
        "/internal/auth/check",
        json={"username": username, "token": value, "action": action, "project": project},
    )
    assert answer.status_code == 200, answer.get_json()
    return bool(answer.get_json()["allowed"])


def holder_tokens(world: World) -> list[Any]:
    runtime = world.runtime
    return runtime.read.tokens(
        holder_kind="project",
        holder_id=world.project,
        active_only=False,
        now=runtime.clock.now(),
        per_page=100,
    ).items


def refusal_reasons(world: World, recorder: ActivityRecorder) -> list[str]:
    recorder.flush()
    return [
        row.event.reason for row in activity_rows(world.runtime.db) if row.event.endpoint == "oauth_token"
    ]


# Exchanges that give a token -----------------------------------------------------------------------------


def test_a_matching_id_token_gets_a_short_lived_deploy_token_that_works(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock, recorder: ActivityRecorder
):
    policy_id = policy(world, trusted)
    answer = exchange(client, id_token(trusted, clock))
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.get_json()
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert body["token_type"] == "N_A"
    assert body["access_token"].startswith("gldt-")
    assert body["expires_in"] == 600
    assert body["scope"] == "read_repository read_registry"
    assert body["username"] == f"gitlab+deploy-token-{body['token_id']}"
    assert body["expires_at"] == (clock.now() + timedelta(seconds=600)).isoformat().replace("+00:00", "Z")
    assert check(client, body["username"], body["access_token"], world.project)
    assert not check(client, body["username"], body["access_token"], world.sibling_project)

    token = world.runtime.tokens.token_of(world.admin, "project", world.project, body["token_id"])
    assert token.name == "federated: release jobs"
    created = world.runtime.tokens.history(body["token_id"])[0]["actor"]
    assert created["kind"] == "federated"
    assert created["federation"]["policy_id"] == policy_id
    assert created["federation"]["issuer"] == trusted.issuer
    assert created["federation"]["claims"] == {
        "project_path": "ci/app",
        "ref": "main",
        "ref_protected": "true",
    }
    assert created["username"] == created["federation"]["subject"]
    clock.set(clock.now() + timedelta(seconds=600))
    assert not check(client, body["username"], body["access_token"], world.project)  # the TTL is over
    recorder.flush()
    rows = [row.event for row in activity_rows(world.runtime.db) if row.event.endpoint == "oauth_token"]
    assert [(row.allowed, row.token_id, row.reason, row.status) for row in rows] == [
        (True, body["token_id"], "allowed", 200)
    ]


def test_the_scope_asked_for_narrows_the_token(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock
):
    policy(world, trusted)
    answer = exchange(client, id_token(trusted, clock), scope="read_repository")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["scope"] == "read_repository"
    assert not check(client, body["username"], body["access_token"], world.project, "registry_pull")


def test_resource_chooses_between_holders_that_trust_the_same_job(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock, recorder: ActivityRecorder
):
    policy(world, trusted)
    policy(world, trusted, holder=("project", world.sibling_project))
    ambiguous = exchange(client, id_token(trusted, clock))
    assert ambiguous.status_code == 400
    assert ambiguous.get_json()["error"] == "invalid_target"

    chosen = exchange(client, id_token(trusted, clock), resource=project_path(world, world.sibling_project))
    assert chosen.status_code == 200, chosen.get_json()
    body = chosen.get_json()
    assert check(client, body["username"], body["access_token"], world.sibling_project)
    assert not check(client, body["username"], body["access_token"], world.project)

    unknown = exchange(client, id_token(trusted, clock), resource="no/such/project")
    assert unknown.get_json()["error"] == "invalid_target"
    assert refusal_reasons(world, recorder)[0].startswith("ambiguous_resource: ")


# Refusals ------------------------------------------------------------------------------------------------


def test_an_id_token_is_exchanged_once(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock, recorder: ActivityRecorder
):
    policy(world, trusted)
    token = id_token(trusted, clock)
    assert exchange(client, token).status_code == 200
    again = exchange(client, token)
    assert again.status_code == 400
    assert again.get_json()["error"] == "invalid_request"
    reason = refusal_reasons(world, recorder)[-1]
    assert reason.startswith("replayed: 'project_path:ci/app:") and reason.endswith(
        ": this ID token was exchanged before"
    )
    assert f"of '{trusted.issuer}'" in reason  # whose ID token it was: its subject and issuer
    assert len(holder_tokens(world)) == 1


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "someone-else"}, "audience"),
        ({"ref": "feature"}, "claims not as required: ref"),
        ({"ref_protected": "false"}, "claims not as required: ref_protected"),
        ({"project_path": "ci/app-fork"}, "claims not as required: project_path"),
        ({"project_path": "CI/App"}, "claims not as required: project_path"),  # exact means exact
    ],
)
def test_a_policy_mismatch_is_refused_without_saying_which_condition_failed(
    client: FlaskClient,
    world: World,
    trusted: LocalIssuer,
    clock: FixedClock,
    recorder: ActivityRecorder,
    claims: dict[str, str],
    reason: str,
):
    policy(world, trusted)
    answer = exchange(client, id_token(trusted, clock, **claims))
    assert answer.status_code == 400
    assert answer.get_json() == {
        "error": "invalid_request",
        "error_description": "no trust policy accepts this ID token",
    }
    recorded = refusal_reasons(world, recorder)
    assert len(recorded) == 1 and recorded[0].startswith("no_matching_policy: ") and reason in recorded[0]
    assert holder_tokens(world) == []


def test_scopes_beyond_the_policy_are_refused(client: FlaskClient, world: World, trusted: LocalIssuer, clock):
    policy(world, trusted)
    assert exchange(client, id_token(trusted, clock), scope="write_registry").status_code == 400
    unknown = exchange(client, id_token(trusted, clock), scope="read_repository sudo")
    assert unknown.get_json()["error"] == "invalid_scope"


def test_an_issuer_not_on_the_instance_list_is_refused_before_any_request_to_it(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock, recorder: ActivityRecorder
):
    policy(world, trusted)
    with LocalIssuer() as stranger:
        answer = exchange(client, stranger.mint(gitlab_ci_claims(project_path="ci/app"), now=clock.now()))
        assert answer.status_code == 400
        assert sum(stranger.requests.values()) == 0
    assert refusal_reasons(world, recorder)[0].startswith("issuer_not_allowed: ")


def test_a_deleted_policy_and_a_deleted_project_trust_nobody(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock
):
    policy_id = policy(world, trusted)
    world.runtime.trust_policies.delete_policy(world.admin, "project", world.project, policy_id)
    assert exchange(client, id_token(trusted, clock)).status_code == 400

    policy(world, trusted, holder=("project", world.deep_project))
    world.runtime.lifecycle.delete_project(world.admin, world.deep_project)
    assert exchange(client, id_token(trusted, clock)).status_code == 400


def test_expired_and_future_id_tokens_are_refused_with_the_reason(
    client: FlaskClient, world: World, trusted: LocalIssuer, clock: FixedClock
):
    policy(world, trusted)
    claims = gitlab_ci_claims(project_path="ci/app", ref="main")
    old = trusted.mint(claims, now=clock.now() - timedelta(hours=1), audience=AUDIENCE)
    future = trusted.mint(claims, now=clock.now() + timedelta(hours=1), audience=AUDIENCE)
    for token, word in ((old, "expired"), (future, "not valid before")):
        answer = exchange(client, token)
        assert answer.status_code == 400
        assert answer.get_json()["error"] == "invalid_request"
        assert word in answer.get_json()["error_description"]


def test_an_issuer_that_does_not_answer_is_unavailable_not_an_error(
    client: FlaskClient, world: World, clock: FixedClock, recorder: ActivityRecorder
):
    with LocalIssuer() as down:
        world.runtime.trust_policies.set_trusted_issuers(world.admin, [down.issuer])
        policy(world, down)
        down.fail_with(500)
        answer = exchange(client, id_token(down, clock))
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "temporarily_unavailable"
    assert answer.headers["Retry-After"]
    assert refusal_reasons(world, recorder)[0].startswith("issuer_unavailable: ")


# Hostile requests ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"json": {"grant_type": GRANT, "subject_token": "x", "subject_token_type": JWT}}, "invalid_request"),
        ({"data": {"subject_token": "x", "subject_token_type": JWT}}, "invalid_request"),
        ({"data": {"grant_type": "password", "username": "a", "password": "b"}}, "unsupported_grant_type"),
        ({"data": {"grant_type": GRANT, "subject_token_type": JWT}}, "invalid_request"),
        (
            {"data": {"grant_type": GRANT, "subject_token": "x", "subject_token_type": "saml2"}},
            "invalid_request",
        ),
        (
            {"data": {"grant_type": GRANT, "subject_token": "a\x00b", "subject_token_type": JWT}},
            "invalid_request",
        ),
        (
            {"data": {"grant_type": GRANT, "subject_token": "x" * 17_000, "subject_token_type": JWT}},
            "invalid_request",
        ),
        (
            {"data": {"grant_type": GRANT, "subject_token": "x.y.z", "subject_token_type": JWT}},
            "invalid_request",
        ),
        (
            {"data": {"grant_type": GRANT, "subject_token": "e30.e30.e30", "subject_token_type": JWT}},
            "invalid_request",
        ),
        (
            {
                "data": "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=%ED%A0%80"
                "&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
                "content_type": "application/x-www-form-urlencoded",
            },
            "invalid_request",
        ),
        (
            {
                "data": f"grant_type={GRANT}&grant_type={GRANT}&subject_token=x&subject_token_type={JWT}",
                "content_type": "application/x-www-form-urlencoded",
            },
            "invalid_request",
        ),
        (
            {
                "data": {
                    "grant_type": GRANT,
                    "subject_token": "x",
                    "subject_token_type": JWT,
                    "resource": "a\x00/b",
                }
            },
            "invalid_request",
        ),
    ],
)
def test_malformed_requests_get_an_oauth_error_and_a_record(
    client: FlaskClient,
    world: World,
    trusted: LocalIssuer,
    recorder: ActivityRecorder,
    kwargs: dict[str, Any],
    error: str,
):
    answer = client.post("/oauth/token", headers={"X-Forwarded-For": "203.0.113.9"}, **kwargs)
    assert answer.status_code == 400, answer.data[:200]
    assert answer.get_json()["error"] == error
    recorder.flush()
    rows = [row.event for row in activity_rows(world.runtime.db) if row.event.endpoint == "oauth_token"]
    assert len(rows) == 1 and not rows[0].allowed and rows[0].status == 400
    assert rows[0].client_addr != "203.0.113.9"  # a forwarded header from an untrusted peer is not believed


def test_a_huge_body_is_refused_before_it_is_read(client: FlaskClient, trusted: LocalIssuer):
    answer = client.post(
        "/oauth/token",
        data=b"subject_token=" + b"A" * (64 * 1024 * 1024),
        content_type="application/x-www-form-urlencoded",
    )
    assert 400 <= answer.status_code < 500


# Across processes ----------------------------------------------------------------------------------------


@POSTGRES_ONLY
def test_two_processes_exchanging_one_id_token_at_once_give_one_token(
    world: World, trusted: LocalIssuer, clock: FixedClock, settings: Settings, tmp_path: Path
):
    policy(world, trusted)
    token = id_token(trusted, clock)
    with Runtime.open(settings, clock=clock) as other:
        clients = [create_app(runtime).test_client() for runtime in (world.runtime, other)]
        answers: list[int] = []
        start = threading.Barrier(len(clients))

        def race(client: FlaskClient) -> None:
            start.wait()
            answers.append(exchange(client, token).status_code)

        threads = [threading.Thread(target=race, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(answers) == [200, 400]
    assert len(holder_tokens(world)) == 1
