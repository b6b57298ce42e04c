"""The auth decision, table-driven: every scope against every action, every boundary
(behaviour [reach] to [api-routes])."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from domain.scopes import SCOPES
from projections.access import REQUIRED_SCOPES, Action, AuthRequest, Reason, decide
from projections.credentials import NamespaceRecord, ProjectRecord, TokenRecord

NOW = datetime(2026, 1, 10, 12, tzinfo=UTC)

TOP = NamespaceRecord(1, "group", "Acme", "acme", "acme", None, (), True, NOW)
SUB = NamespaceRecord(2, "group", "Sub", "sub", "acme/sub", 1, (1,), True, NOW)
SUBSUB = NamespaceRecord(3, "group", "Deep", "deep", "acme/sub/deep", 2, (1, 2), True, NOW)
SIBLING = NamespaceRecord(4, "group", "Other", "other", "other", None, (), True, NOW)
PROJECT = ProjectRecord(10, "Api", "api", "acme/api", 1, "group", (1,), True, True, NOW)
DEEP_PROJECT = ProjectRecord(11, "Db", "db", "acme/sub/deep/db", 3, "group", (1, 2, 3), True, True, NOW)
SIBLING_PROJECT = ProjectRecord(12, "X", "x", "other/x", 4, "group", (4,), True, True, NOW)
PERSONAL_PROJECT = ProjectRecord(13, "Mine", "mine", "alice/mine", 99, "user", (), True, True, NOW)


def token(scopes, *, holder_kind="project", holder_id=10, **overrides) -> TokenRecord:
    record = TokenRecord(
        token_id=5,
        name="t",
        username="gitlab+deploy-token-5",
        holder_kind=holder_kind,
        holder_id=holder_id,
        scopes=tuple(scope for scope in SCOPES if scope in scopes),
        expires_at=None,
        revoked_at=None,
        deleted_at=None,
        digest="d",
        previous_digest=None,
        previous_valid_until=None,
        created_at=NOW,
        creator_id=1,
    )
    return replace(record, **overrides)


def check(
    action, tok, target, *, username="gitlab+deploy-token-5", check_username=True, external=False, now=NOW
):
    return decide(
        AuthRequest(action, username, check_username), tok, target, external_authorization=external, now=now
    )


PROJECT_ACTIONS = [
    Action.GIT_READ,
    Action.REGISTRY_PULL,
    Action.REGISTRY_PUSH,
    Action.PACKAGE_READ,
    Action.PACKAGE_WRITE,
]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("action", PROJECT_ACTIONS)
def test_single_scope_against_every_project_action(scope, action):
    """With one scope, only the actions whose every required scope is that scope are allowed."""
    decision = check(action, token({scope}), PROJECT)
    assert decision.allowed == (REQUIRED_SCOPES[action] == {scope})
    if not decision.allowed:
        assert decision.reason is Reason.INSUFFICIENT_SCOPE


def test_required_scopes_table_matches_the_spec():
    assert {
        Action.GIT_READ: {"read_repository"},
        Action.REGISTRY_PULL: {"read_registry"},
        Action.REGISTRY_PUSH: {"read_registry", "write_registry"},
        Action.PACKAGE_READ: {"read_package_registry"},
        Action.PACKAGE_WRITE: {"write_package_registry"},
    } == REQUIRED_SCOPES


def test_push_needs_read_and_write_registry():
    assert not check(Action.REGISTRY_PUSH, token({"write_registry"}), PROJECT).allowed
    assert check(Action.REGISTRY_PUSH, token({"read_registry", "write_registry"}), PROJECT).allowed


@pytest.mark.parametrize("action", [Action.GIT_WRITE, Action.REGISTRY_DELETE])
def test_push_to_git_and_registry_delete_are_never_granted(action):
    decision = check(action, token(set(SCOPES)), PROJECT)
    assert (decision.allowed, decision.reason) == (False, Reason.NEVER_GRANTED)


def test_other_api_routes_never_accept_deploy_tokens():
    decision = check(Action.API, token(set(SCOPES)), PROJECT)
    assert (decision.allowed, decision.reason) == (False, Reason.API_NOT_ALLOWED)


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ({"read_registry"}, True),
        ({"write_registry"}, True),
        ({"read_repository"}, False),
        ({"read_package_registry", "write_package_registry"}, False),
        ({"read_virtual_registry"}, False),
    ],
)
def test_registry_login_needs_a_registry_scope(scopes, allowed):
    assert check(Action.REGISTRY_LOGIN, token(scopes), None).allowed is allowed


def test_expiry_boundary_is_exactly_the_instant():
    expires = datetime(2026, 2, 1, tzinfo=UTC)
    tok = token({"read_repository"}, expires_at=expires)
    assert check(Action.GIT_READ, tok, PROJECT, now=expires - timedelta(microseconds=1)).allowed
    denied = check(Action.GIT_READ, tok, PROJECT, now=expires)
    assert (denied.allowed, denied.reason) == (False, Reason.EXPIRED)


def test_revoked_and_deleted_tokens_are_refused():
    assert (
        check(Action.GIT_READ, token({"read_repository"}, revoked_at=NOW), PROJECT).reason is Reason.REVOKED
    )
    assert (
        check(Action.GIT_READ, token({"read_repository"}, deleted_at=NOW), PROJECT).reason is Reason.DELETED
    )


def test_unknown_token_is_refused():
    assert check(Action.GIT_READ, None, PROJECT).reason is Reason.UNKNOWN_TOKEN


def test_username_must_match_exactly_where_the_protocol_logs_in():
    tok = token({"read_repository"})
    assert (
        check(Action.GIT_READ, tok, PROJECT, username="GITLAB+deploy-token-5").reason
        is Reason.USERNAME_MISMATCH
    )
    assert check(Action.GIT_READ, tok, PROJECT, username=None).reason is Reason.USERNAME_MISMATCH


def test_package_endpoints_ignore_the_username():
    tok = token({"read_package_registry"})
    assert check(Action.PACKAGE_READ, tok, PROJECT, username="anything", check_username=False).allowed


def test_project_token_reaches_only_its_project():
    tok = token({"read_repository"})
    assert check(Action.GIT_READ, tok, PROJECT).allowed
    assert check(Action.GIT_READ, tok, DEEP_PROJECT).reason is Reason.OUTSIDE_SCOPE


@pytest.mark.parametrize(
    ("holder", "target", "allowed"),
    [
        (1, PROJECT, True),  # own group
        (1, DEEP_PROJECT, True),  # two subgroups down
        (2, DEEP_PROJECT, True),
        (3, PROJECT, False),  # never the parent
        (2, PROJECT, False),
        (1, SIBLING_PROJECT, False),  # never a sibling
        (1, PERSONAL_PROJECT, False),  # never a user namespace
    ],
)
def test_group_token_reaches_its_group_and_subgroups_only(holder, target, allowed):
    tok = token({"read_repository"}, holder_kind="group", holder_id=holder)
    assert check(Action.GIT_READ, tok, target).allowed is allowed


def test_external_authorization_blocks_git_and_packages_but_not_the_registry():
    tok = token(set(SCOPES))
    for action in (Action.GIT_READ, Action.PACKAGE_READ, Action.PACKAGE_WRITE):
        assert check(action, tok, PROJECT, external=True).reason is Reason.EXTERNAL_AUTHORIZATION
    assert check(Action.REGISTRY_PULL, tok, PROJECT, external=True).allowed
    assert check(Action.REGISTRY_PUSH, tok, PROJECT, external=True).allowed


def test_disabled_repository_refuses_clone():
    project = replace(PROJECT, repository_enabled=False)
    assert check(Action.GIT_READ, token({"read_repository"}), project).reason is Reason.REPOSITORY_DISABLED


def test_disabled_registry_refuses_pull_and_push():
    project = replace(PROJECT, container_registry_enabled=False)
    tok = token({"read_registry", "write_registry"})
    assert check(Action.REGISTRY_PULL, tok, project).reason is Reason.REGISTRY_DISABLED
    assert check(Action.REGISTRY_PUSH, tok, project).reason is Reason.REGISTRY_DISABLED


def test_group_package_endpoint_exact_group_only_when_asked():
    tok = token({"read_package_registry"}, holder_kind="group", holder_id=1)
    subgroup_request = AuthRequest(Action.PACKAGE_READ, None, False, exact_group_only=True)
    assert not decide(subgroup_request, tok, SUB, external_authorization=False, now=NOW).allowed
    assert decide(subgroup_request, tok, TOP, external_authorization=False, now=NOW).allowed


@pytest.mark.parametrize(
    ("scopes", "allowed"),
    [
        ({"read_registry", "write_registry"}, True),
        ({"read_virtual_registry", "write_virtual_registry"}, True),
        ({"read_registry"}, False),
        ({"read_virtual_registry"}, False),
        ({"read_registry", "write_virtual_registry"}, False),
    ],
)
def test_dependency_proxy_scope_pairs(scopes, allowed):
    tok = token(scopes, holder_kind="group", holder_id=1)
    assert check(Action.DEPENDENCY_PROXY_READ, tok, SUB).allowed is allowed


def test_dependency_proxy_refuses_project_tokens():
    tok = token({"read_registry", "write_registry"})
    assert check(Action.DEPENDENCY_PROXY_READ, tok, TOP).reason is Reason.GROUP_TOKEN_REQUIRED


def test_dependency_proxy_needs_the_proxy_enabled():
    tok = token({"read_registry", "write_registry"}, holder_kind="group", holder_id=1)
    disabled = replace(SUB, dependency_proxy_enabled=False)
    assert check(Action.DEPENDENCY_PROXY_READ, tok, disabled).reason is Reason.DEPENDENCY_PROXY_DISABLED


def test_dependency_proxy_never_reaches_a_parent_group():
    tok = token({"read_registry", "write_registry"}, holder_kind="group", holder_id=2)
    assert check(Action.DEPENDENCY_PROXY_READ, tok, TOP).reason is Reason.OUTSIDE_SCOPE


def test_missing_resource_is_refused():
    assert check(Action.GIT_READ, token({"read_repository"}), None).reason is Reason.RESOURCE_NOT_FOUND
