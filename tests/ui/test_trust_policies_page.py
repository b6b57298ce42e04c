"""The Trust policies section of a holder's Deploy tokens page (behaviour [federation], [ui]): a read-only
listing for whoever sees the tokens, every value of a policy escaped (claims are whatever a maintainer typed)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from domain.deploy_token import HolderKind
from domain.federation import ClaimCondition
from projections.trust_policies import TrustPolicyRecord

from ..conftest import World
from .conftest import GROUP_SETTINGS, PROJECT_SETTINGS, WebClient

GITLAB = "https://gitlab.example.com"
SignIn = Callable[..., WebClient]


@pytest.fixture(autouse=True)
def trusted_issuers(world: World) -> None:
    world.runtime.trust_policies.set_trusted_issuers(world.admin, [GITLAB])


def add_policy(
    world: World,
    kind: HolderKind,
    holder: int,
    name: str,
    *,
    audience: str = "https://deploy-tokens.example.com",
    conditions: tuple[ClaimCondition, ...] = (
        ClaimCondition("project_path", "acme/api"),
        ClaimCondition("ref", "release/**", "glob"),
    ),
) -> TrustPolicyRecord:
    return world.runtime.trust_policies.create_policy(
        world.admin,
        kind,
        holder,
        name=name,
        issuer=GITLAB,
        audience=audience,
        conditions=conditions,
        scopes=["read_registry", "read_repository"],
        ttl_seconds=1800,
    )


def section(html: str) -> str:
    found = re.search(r'<section class="settings" id="js-trust-policies".*?</section>', html, re.S)
    assert found, "the page has no Trust policies section"
    return found.group(0)


def test_the_section_lists_each_policy_with_its_terms(signed_in: SignIn, world: World):
    add_policy(world, "project", world.project, "deploy from release branches")
    add_policy(world, "project", world.deep_project, "a policy of another project")
    listing = section(signed_in("maintainer").get(PROJECT_SETTINGS).text)
    assert '<h2 id="trust-policies-heading">Trust policies</h2>' in listing
    assert "deploy from release branches" in listing
    assert "a policy of another project" not in listing
    assert f'<td class="monospace">{GITLAB}</td>' in listing
    assert '<td class="monospace">https://deploy-tokens.example.com</td>' in listing
    assert "<code>project_path</code> is <code>acme/api</code>" in listing
    assert "<code>ref</code> matches <code>release/**</code>" in listing
    assert "<li><code>read_repository</code></li><li><code>read_registry</code></li>" in listing
    assert "30 minutes" in listing
    assert f"/api/v4/projects/{world.project}/deploy_token_trust_policies" in listing


def test_an_empty_state_when_there_is_none(signed_in: SignIn, world: World):
    listing = section(signed_in("owner").get(GROUP_SETTINGS).text)
    assert "This group has no trust policies" in listing
    assert 'id="trust-policies"' not in listing


def test_a_deleted_policy_leaves_the_list(signed_in: SignIn, world: World):
    policy = add_policy(world, "group", world.top, "release deployer")
    web = signed_in("owner")
    assert "release deployer" in section(web.get(GROUP_SETTINGS).text)
    world.runtime.trust_policies.delete_policy(world.admin, "group", world.top, policy.policy_id)
    listing = section(web.get(GROUP_SETTINGS).text)
    assert "release deployer" not in listing and "This group has no trust policies" in listing


def test_everything_a_maintainer_typed_is_escaped(signed_in: SignIn, world: World):
    add_policy(
        world,
        "project",
        world.project,
        "<script>alert('name')</script>",
        audience="<b>aud</b>",
        conditions=(
            ClaimCondition("project_path", "<script>alert(1)</script>"),
            ClaimCondition("ref", '"><img src=x onerror=alert(2)>', "glob"),
        ),
    )
    page = signed_in("maintainer").get(PROJECT_SETTINGS).text
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>aud</b>" not in page
    listing = section(page)
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in listing
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in listing
    assert "<code>&#34;&gt;&lt;img src=x onerror=alert(2)&gt;</code>" in listing
    assert "&lt;b&gt;aud&lt;/b&gt;" in listing


@pytest.mark.parametrize(
    ("role", "url"),
    [
        ("maintainer", PROJECT_SETTINGS),
        ("group_maintainer", PROJECT_SETTINGS),
        ("owner", GROUP_SETTINGS),
        ("admin", GROUP_SETTINGS),
    ],
)
def test_whoever_sees_the_tokens_sees_the_policies(signed_in: SignIn, world: World, role: str, url: str):
    if url == GROUP_SETTINGS:
        add_policy(world, "group", world.top, "visible policy")
    else:
        add_policy(world, "project", world.project, "visible policy")
    page = signed_in(role).get(url)
    assert page.status_code == 200
    assert "visible policy" in section(page.text)


def test_an_auditor_reads_the_policies_of_a_holder_they_are_no_member_of(web: WebClient, world: World):
    add_policy(world, "group", world.sibling, "audited policy")
    record = world.runtime.directory.register_user(
        world.admin, username="audrey", email="audrey@example.com", is_auditor=True
    )
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, record.user_id, name="audit", scopes=["api"]
    )
    web.sign_in(issued.value)
    page = web.get("/groups/other/-/settings/repository")
    assert page.status_code == 200
    assert "audited policy" in section(page.text)


@pytest.mark.parametrize(("role", "status"), [("developer", 403), ("outsider", 404)])
def test_who_may_not_see_the_tokens_sees_no_policy(signed_in: SignIn, world: World, role: str, status: int):
    add_policy(world, "project", world.project, "hidden policy")
    page = signed_in(role).get(PROJECT_SETTINGS)
    assert page.status_code == status
    assert "hidden policy" not in page.text and "Trust policies" not in page.text
