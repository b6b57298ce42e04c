"""OIDC federation end to end (behaviour [federation]): a CI job's ID token, signed by a real issuer that
publishes its keys over HTTP, is exchanged at ``POST /oauth/token`` over HTTP as the job snippets of
``docs/federation.md`` do (curl with ``--data-urlencode``, or any HTTP client), and the deploy token it gives is
used by the real clients: git through nginx, skopeo through docker-registry, twine and pip through the package
stack. Then what must stop it does: its TTL, a revocation, the policy's deletion, and every ID token that is
not the one a policy trusts (replayed, another audience, another branch, another issuer, expired).

One local issuer, two projects with one policy each (GitLab-CI-style claims on one, GitHub-Actions-style on
the other), made once for the module through the HTTP API with python-gitlab.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, cast

import gitlab
import jwt
import pytest
from gitlab.v4.objects import Group, Project

from deploy_tokens.runtime import Runtime

from ..oidc_issuer import LocalIssuer, github_actions_claims, gitlab_ci_claims
from .conftest import Directory, Token
from .harness import OffsetClock, Stack, run
from .test_git import clone
from .test_packages import pip_install, tiny_package, twine_upload
from .test_registry import pull, push

pytestmark = pytest.mark.e2e

AUDIENCE: Final = "https://deploy-tokens.e2e.example"
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
NO_POLICY: Final = "no trust policy accepts this ID token"
GITLAB_TTL: Final = 600
GITHUB_TTL: Final = 300
GITLAB_SCOPES: Final = (
    "read_repository",
    "read_registry",
    "write_registry",
    "read_package_registry",
    "write_package_registry",
)


@dataclass(frozen=True)
class Answer:
    """What ``/oauth/token`` answered: the status and the JSON body."""

    status: int
    body: dict[str, Any]

    def token(self, holder: Project) -> Token:
        """The deploy token of a successful exchange, as the conftest's tokens are (its revoke included)."""
        assert self.status == 200, self.body
        return Token(self.body["token_id"], self.body["username"], self.body["access_token"], holder)


def exchange_with_curl(service: str, id_token: str, work: Path, **parameters: str) -> Answer:
    """As the GitLab CI snippet does it: curl, every parameter form-encoded with ``--data-urlencode``."""
    form = {"grant_type": GRANT_TYPE, "subject_token_type": JWT_TOKEN_TYPE, "subject_token": id_token}
    arguments = [
        argument
        for name, value in {**form, **parameters}.items()
        for argument in ("--data-urlencode", f"{name}={value}")
    ]
    body = work / "exchange.json"
    done = run(
        [
            "curl",
            "-sS",
            "--noproxy",
            "*",
            "-o",
            str(body),
            "-w",
            "%{http_code}",
            *arguments,
            f"{service}/oauth/token",
        ],
        cwd=work,
    )
    assert done.returncode == 0, done.stderr
    return Answer(int(done.stdout), json.loads(body.read_text()))


def exchange_with_urllib(service: str, id_token: str, **parameters: str) -> Answer:
    """Any other HTTP client: a form-encoded POST (urllib's default content type for a body)."""
    form = {"grant_type": GRANT_TYPE, "subject_token_type": JWT_TOKEN_TYPE, "subject_token": id_token}
    request = urllib.request.Request(
        f"{service}/oauth/token", data=urllib.parse.urlencode({**form, **parameters}).encode(), method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return Answer(int(response.status), json.load(response))
    except urllib.error.HTTPError as error:
        return Answer(error.code, json.load(error))


@dataclass(frozen=True)
class Federation:
    """The module's set-up: the trusted issuer, the service's URL, and two projects with a policy each."""

    issuer: LocalIssuer
    service: str
    group: Group
    web: Project  # its policy: GitLab CI claims, every scope the clients below need
    lib: Project  # its policy: GitHub Actions claims, read_repository only
    gitlab_policy: dict[str, Any]
    github_policy: dict[str, Any]

    def gitlab_id_token(self, audience: str = AUDIENCE, **claims: Any) -> str:
        """An ID token of a GitLab CI job of ``web`` on its protected main branch (``claims`` override)."""
        path = self.web.path_with_namespace
        base = gitlab_ci_claims(path, project_id=self.web.id, namespace_id=self.group.id)
        return self.issuer.mint({**base, **claims}, audience=audience)

    def github_id_token(self, **options: Any) -> str:
        """An ID token of a GitHub Actions job of ``lib``, a push to main unless ``options`` say otherwise."""
        return self.issuer.mint(
            github_actions_claims(self.lib.path_with_namespace, **options), audience=AUDIENCE
        )


def listed(gl: gitlab.Gitlab, path: str, **query: Any) -> list[dict[str, Any]]:
    """A GET of the API that answers a JSON array (python-gitlab types it as a dict or a response)."""
    answer = gl.http_get(path, query_data=query)
    assert isinstance(answer, list)
    return cast(list[dict[str, Any]], answer)


def create_policy(gl: gitlab.Gitlab, project: Project, **attributes: Any) -> dict[str, Any]:
    """``POST /projects/:id/deploy_token_trust_policies`` (python-gitlab has no manager for it)."""
    created = gl.http_post(f"/projects/{project.id}/deploy_token_trust_policies", post_data=attributes)
    assert isinstance(created, dict)
    return created


@pytest.fixture(scope="module")
def federation(
    gl: gitlab.Gitlab, directory: Directory, e2e_service: tuple[str, Runtime], local_issuer: LocalIssuer
) -> Federation:
    settings = gl.http_put(
        "/application/settings", post_data={"deploy_token_oidc_issuers": [local_issuer.issuer]}
    )
    assert isinstance(settings, dict) and settings["deploy_token_oidc_issuers"] == [local_issuer.issuer]
    group = directory.group("ci")
    web, lib = directory.project("web", group), directory.project("lib", group)
    gitlab_policy = create_policy(
        gl,
        web,
        name="deploy from main",
        issuer=local_issuer.issuer,
        audience=AUDIENCE,
        claims={
            "project_path": web.path_with_namespace,
            "ref": "main",
            "ref_type": "branch",
            "ref_protected": "true",
        },
        scopes=list(GITLAB_SCOPES),
        ttl_seconds=GITLAB_TTL,
    )
    repository = lib.path_with_namespace
    github_policy = create_policy(
        gl,
        lib,
        name="release workflow",
        issuer=local_issuer.issuer,
        audience=AUDIENCE,
        claims={"repository": repository, "ref": "refs/heads/main"},
        claim_patterns={"job_workflow_ref": f"{repository}/.github/workflows/*.yml@refs/heads/main"},
        scopes=["read_repository"],
        ttl_seconds=GITHUB_TTL,
    )
    return Federation(local_issuer, e2e_service[0], group, web, lib, gitlab_policy, github_policy)


def test_a_gitlab_ci_job_token_works_with_git_the_registry_and_packages(
    stack: Stack,
    gl: gitlab.Gitlab,
    directory: Directory,
    federation: Federation,
    e2e_service: tuple[str, Runtime],
    work: Path,
) -> None:
    web = federation.web
    id_token = federation.gitlab_id_token()
    before = datetime.now(UTC)
    answer = exchange_with_curl(federation.service, id_token, work, resource=web.path_with_namespace)
    assert answer.status == 200, answer.body
    assert answer.body["token_type"] == "N_A"
    assert answer.body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert answer.body["expires_in"] == GITLAB_TTL
    assert answer.body["scope"] == " ".join(GITLAB_SCOPES)
    expires_at = datetime.fromisoformat(answer.body["expires_at"])
    assert (
        before + timedelta(seconds=GITLAB_TTL - 1)
        <= expires_at
        <= datetime.now(UTC) + timedelta(seconds=GITLAB_TTL)
    )
    token = answer.token(web)

    code, stderr = clone(stack, web, work, token.username, token.value)
    assert code == 0, stderr
    code, stderr = push(stack, web, token, work)
    assert code == 0, stderr
    code, stderr = pull(stack, web, token, work)
    assert code == 0, stderr
    wheel = tiny_package(work / "dist", directory.unique("federated"))
    uploaded = twine_upload(stack, web, token, wheel, work)
    assert uploaded.returncode == 0, uploaded.stdout + uploaded.stderr
    installed = pip_install(stack, web, token, wheel, work)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # An auditor sees who got it: the job's subject, vouched for by the issuer under the policy.
    claims = jwt.decode(id_token, options={"verify_signature": False})
    row = next(
        row
        for row in listed(gl, "/audit_events", token_id=token.id)
        if row["event_type"] == "deploy_token_created"
    )
    assert (row["actor_kind"], row["actor_username"], row["target_name"]) == (
        "federated",
        claims["sub"],
        "federated: deploy from main",
    )
    assert row["details"]["federation"] == {
        "issuer": federation.issuer.issuer,
        "subject": claims["sub"],
        "policy_id": federation.gitlab_policy["id"],
        "jti": claims["jti"],
        "claims": {name: claims[name] for name in ("project_path", "ref", "ref_protected", "ref_type")},
    }
    e2e_service[1].activity.flush()
    assert ("oauth_token", "token_exchange", True, "allowed") in {
        (use["endpoint"], use["action"], use["allowed"], use["reason"])
        for use in listed(gl, f"/deploy_tokens/{token.id}/activity")
    }


def test_a_github_actions_job_token_gets_only_what_its_policy_grants(
    stack: Stack, gl: gitlab.Gitlab, federation: Federation, work: Path
) -> None:
    lib, web = federation.lib, federation.web
    answer = exchange_with_urllib(federation.service, federation.github_id_token())
    assert answer.status == 200, answer.body
    assert (answer.body["scope"], answer.body["expires_in"]) == ("read_repository", GITHUB_TTL)
    token = answer.token(lib)
    code, stderr = clone(stack, lib, work, token.username, token.value)
    assert code == 0, stderr
    code, stderr = clone(stack, web, work, token.username, token.value)
    assert code != 0 and "403" in stderr  # a deploy token of lib, not of its sibling
    created = next(
        row
        for row in listed(gl, "/audit_events", token_id=token.id)
        if row["event_type"] == "deploy_token_created"
    )
    vouched = created["details"]["federation"]
    assert vouched["policy_id"] == federation.github_policy["id"]
    assert sorted(vouched["claims"]) == ["job_workflow_ref", "ref", "repository"]  # the pattern's claim too

    more = exchange_with_urllib(
        federation.service, federation.github_id_token(), scope="read_repository write_registry"
    )
    assert (more.status, more.body) == (400, {"error": "invalid_request", "error_description": NO_POLICY})
    pull_request = federation.github_id_token(ref="refs/pull/7/merge", event_name="pull_request")
    refused = exchange_with_urllib(federation.service, pull_request)
    assert (refused.status, refused.body) == (
        400,
        {"error": "invalid_request", "error_description": NO_POLICY},
    )


def test_the_token_stops_working_after_its_ttl(
    stack: Stack, federation: Federation, e2e_clock: OffsetClock, work: Path
) -> None:
    web = federation.web
    token = exchange_with_curl(federation.service, federation.gitlab_id_token(), work).token(web)
    assert clone(stack, web, work, token.username, token.value)[0] == 0
    with e2e_clock.advanced(timedelta(seconds=GITLAB_TTL + 1)):  # the service's clock only; no sleep
        code, stderr = clone(stack, web, work, token.username, token.value)
    assert code != 0 and "Authentication failed" in stderr
    assert clone(stack, web, work, token.username, token.value)[0] == 0  # clock back: valid again


def test_id_tokens_a_policy_does_not_trust_give_no_token(federation: Federation, work: Path) -> None:
    web = federation.web
    service = federation.service
    replayed = federation.gitlab_id_token()
    assert exchange_with_curl(service, replayed, work).status == 200
    tokens_before = len(web.deploytokens.list(get_all=True))
    now = datetime.now(UTC)
    elsewhere = "http://127.0.0.1:9/not-trusted"  # never asked: refused before anything is fetched
    refusals = {
        "replayed": (replayed, "exchanged before"),
        "another audience": (federation.gitlab_id_token(audience="https://someone-else.example"), NO_POLICY),
        "another branch": (federation.gitlab_id_token(ref="feature", ref_protected="false"), NO_POLICY),
        "another issuer": (federation.gitlab_id_token(iss=elsewhere), "is not trusted"),
        "expired": (
            federation.issuer.mint(
                gitlab_ci_claims(web.path_with_namespace),
                audience=AUDIENCE,
                now=now - timedelta(hours=1),
                lifetime=timedelta(minutes=5),
            ),
            "expired",
        ),
    }
    for case, (id_token, why) in refusals.items():
        answer = exchange_with_curl(service, id_token, work)
        assert (answer.status, answer.body["error"]) == (400, "invalid_request"), (case, answer.body)
        assert why in answer.body["error_description"], (case, answer.body)
        assert "access_token" not in answer.body, case
    assert len(web.deploytokens.list(get_all=True)) == tokens_before


def test_an_id_token_signed_after_the_issuer_rotates_its_keys_still_exchanges(
    federation: Federation, e2e_service: tuple[str, Runtime], monkeypatch: pytest.MonkeyPatch, work: Path
) -> None:
    """A new ``kid`` makes the service fetch the JWKS again. That refetch is rate limited to one every 10
    seconds per issuer (proven by the verifier's own tests); here the limit is lifted rather than slept out."""
    issuer = federation.issuer
    assert exchange_with_curl(federation.service, federation.gitlab_id_token(), work).status == 200
    monkeypatch.setattr(e2e_service[1].token_exchange.verifier, "min_refresh_interval", timedelta(0))
    fetched = issuer.requests[issuer.jwks_path]
    issuer.rotate()  # the old key leaves the JWKS
    answer = exchange_with_curl(federation.service, federation.gitlab_id_token(), work)
    assert answer.status == 200, answer.body
    assert issuer.requests[issuer.jwks_path] == fetched + 1


def test_revoking_the_federated_token_stops_git_at_once(
    stack: Stack, federation: Federation, work: Path
) -> None:
    web = federation.web
    token = exchange_with_curl(federation.service, federation.gitlab_id_token(), work).token(web)
    assert clone(stack, web, work, token.username, token.value)[0] == 0
    token.revoke()  # python-gitlab; the next command follows at once, no sleep
    code, stderr = clone(stack, web, work, token.username, token.value)
    assert code != 0 and "Authentication failed" in stderr


def test_deleting_the_policy_stops_new_exchanges(
    stack: Stack, gl: gitlab.Gitlab, federation: Federation, work: Path
) -> None:
    web = federation.web
    staging = "https://deploy-tokens.e2e.example/staging"
    policy = create_policy(
        gl,
        web,
        name="staging",
        issuer=federation.issuer.issuer,
        audience=staging,
        claims={"project_id": str(web.id), "ref": "main"},
        scopes=["read_repository"],
    )
    assert policy["ttl_seconds"] == 900  # the default
    token = exchange_with_curl(federation.service, federation.gitlab_id_token(staging), work).token(web)
    gl.http_delete(f"/projects/{web.id}/deploy_token_trust_policies/{policy['id']}")
    refused = exchange_with_curl(federation.service, federation.gitlab_id_token(staging), work)
    assert (refused.status, refused.body["error_description"]) == (400, NO_POLICY)
    code, stderr = clone(stack, web, work, token.username, token.value)
    assert code == 0, stderr  # a token the policy gave lives out its TTL
