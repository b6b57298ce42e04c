"""Reserved paths and reserved deploy-token usernames, enforced by the domain when a name is chosen."""

from datetime import UTC, datetime

import pytest

from domain.actors import Actor
from domain.deploy_token import DeployToken
from domain.errors import ValidationError
from domain.groups import Group
from domain.projects import Project
from domain.users import User, UserNamespace

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
ACTOR = Actor.user(1, "root", is_admin=True)


def found_group(path: str, parent: Group | None = None, group_id: int = 2) -> Group:
    return Group.found(group_id=group_id, name="G", path=path, parent=parent, actor=ACTOR, now=NOW)


def errors_of(build) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        build()
    return caught.value.errors


@pytest.mark.parametrize(
    "path",
    [
        "api",
        "API",
        "admin",
        "groups",
        "users",
        "jwt",
        "internal",
        "help",
        "explore",
        "projects",
        "dashboard",
        "assets",
        "uploads",
        "oauth",
        "v2",
        "metrics",
        "favicon.ico",
        "static",
        ".well-known",
        "robots.txt",
        "snippets",
        "Search",
    ],
)
def test_top_level_group_paths_that_routes_own_are_reserved(path: str):
    assert errors_of(lambda: found_group(path)) == {"path": [f"{path} is a reserved name"]}


def test_top_level_names_are_reserved_at_the_top_only():
    top = found_group("acme")
    with pytest.raises(ValidationError):
        found_group("api")
    assert found_group("api", parent=top, group_id=3).full_path == "acme/api"


@pytest.mark.parametrize("username", ["api", "Admin", "users", "metrics", "favicon.ico", "V2", "help"])
def test_usernames_that_routes_own_are_reserved(username: str):
    errors = errors_of(
        lambda: User.register(
            user_id=5,
            namespace_id=5,
            username=username,
            email="someone@example.com",
            name=None,
            is_admin=False,
            actor=ACTOR,
            now=NOW,
        )
    )
    assert errors == {"username": [f"{username} is a reserved name"]}


def found_project(path: str | None, name: str = "P") -> Project:
    return Project.found(
        project_id=9,
        name=name,
        path=path,
        namespace=found_group("acme"),
        repository_enabled=True,
        container_registry_enabled=True,
        actor=ACTOR,
        now=NOW,
    )


@pytest.mark.parametrize(
    "path",
    [
        "info",
        "git-upload-pack",
        "git-receive-pack",
        "objects",
        "HEAD",
        "head",
        "badges",
        "blob",
        "tree",
        "raw",
        "refs",
        "edit",
        "new",
        "wikis",
        "Files",
    ],
)
def test_project_paths_that_git_and_ui_routes_own_are_reserved(path: str):
    assert errors_of(lambda: found_project(path)) == {"path": [f"{path} is a reserved name"]}


def test_a_project_path_derived_from_its_name_is_checked_too():
    assert errors_of(lambda: found_project(None, name="HEAD")) == {"path": ["head is a reserved name"]}


def test_a_project_in_a_user_namespace_is_checked_too():
    namespace = UserNamespace.open(namespace_id=4, user_id=4, path="alice", now=NOW)
    errors = errors_of(
        lambda: Project.found(
            project_id=9,
            name="P",
            path="info",
            namespace=namespace,
            repository_enabled=True,
            container_registry_enabled=True,
            actor=ACTOR,
            now=NOW,
        )
    )
    assert errors == {"path": ["info is a reserved name"]}


def test_a_reserved_path_recorded_before_the_rule_still_replays():
    """Only choosing a path is checked: the events of a group named ``api`` before the rule still load."""
    legacy = Group.Created(
        originator_id=found_group("acme").id,
        originator_version=1,
        timestamp=NOW,
        originator_topic="deploy_tokens:Group",
        group_id=2,
        name="Api",
        path="api",
        parent_id=None,
        full_path="api",
        ancestor_ids=[],
        actor=ACTOR.as_event_data(),
    )
    replayed = legacy.mutate(None)
    assert isinstance(replayed, Group) and replayed.full_path == "api"
    with pytest.raises(ValidationError):
        found_group("api")


def issue_token(username: str | None) -> DeployToken:
    return DeployToken.issue(
        token_id=7,
        name="deploy",
        username=username,
        holder_kind="project",
        holder_id=3,
        scopes=["read_repository"],
        expires_at=None,
        digest="d" * 64,
        actor=ACTOR,
        now=NOW,
    )


@pytest.mark.parametrize(
    "username",
    [
        "gitlab+deploy-token-7",
        "gitlab+deploy-token-8",
        "GitLab+Deploy-Token-123456",
        "gitlab+deploy-token-007",
    ],
)
def test_custom_usernames_shaped_like_a_default_are_refused(username: str):
    errors = errors_of(lambda: issue_token(username))
    assert list(errors) == ["username"]
    assert "gitlab+deploy-token-<id>" in errors["username"][0]


def test_only_the_default_shape_is_reserved_for_deploy_token_usernames():
    with pytest.raises(ValidationError):
        issue_token("gitlab+deploy-token-1")
    for near_miss in (
        "gitlab+deploy-token-x",
        "gitlab+deploy-token-",
        "my-gitlab+deploy-token-1",
        "deploy-token-1",
    ):
        assert issue_token(near_miss).username == near_miss
    assert issue_token("").username == "gitlab+deploy-token-7"
