"""The service (on SQLite): permissions (behaviour [manage]), lifecycle, CI variables, history."""

from datetime import date, timedelta

import pytest

from domain.errors import NotFound, PermissionDenied, Unauthenticated, ValidationError

from ..conftest import World

# Permission and lifecycle rules of the services: the same on either backend, whose persistence and projections
# the other integration modules run on both.
pytestmark = pytest.mark.parametrize("backend", ["sqlite"])


def test_project_maintainer_creates_a_project_token(world: World):
    issued = world.runtime.tokens.create_token(
        world.users["maintainer"], "project", world.project, name="deploy", scopes=["read_repository"]
    )
    assert issued.token.holder_kind == "project"
    assert issued.token.username == f"gitlab+deploy-token-{issued.token.token_id}"


@pytest.mark.parametrize("role", ["developer", "reporter", "guest"])
def test_below_maintainer_cannot_create_a_project_token(world: World, role: str):
    with pytest.raises(PermissionDenied):
        world.runtime.tokens.create_token(
            world.users[role], "project", world.project, name="x", scopes=["read_repository"]
        )


def test_a_stranger_does_not_even_see_the_project(world: World):
    with pytest.raises(NotFound):
        world.runtime.tokens.create_token(
            world.users["outsider"], "project", world.project, name="x", scopes=["read_repository"]
        )


def test_group_owner_creates_a_group_token(world: World):
    issued = world.runtime.tokens.create_token(
        world.users["owner"], "group", world.top, name="g", scopes=["read_registry"]
    )
    assert issued.token.holder_kind == "group"


def test_group_maintainer_cannot_create_a_group_token(world: World):
    with pytest.raises(PermissionDenied):
        world.runtime.tokens.create_token(
            world.users["group_maintainer"], "group", world.top, name="g", scopes=["read_registry"]
        )


def test_group_maintainer_may_read_group_tokens(world: World):
    world.runtime.tokens.check_token_reader(world.users["group_maintainer"], "group", world.top)


def test_group_roles_are_inherited_by_subgroups_and_their_projects(world: World):
    world.runtime.tokens.create_token(
        world.users["owner"], "group", world.subsub, name="g", scopes=["read_registry"]
    )
    world.runtime.tokens.create_token(
        world.users["owner"], "project", world.deep_project, name="p", scopes=["read_registry"]
    )


def test_group_owner_has_no_rights_on_a_sibling_group(world: World):
    with pytest.raises(NotFound):
        world.runtime.tokens.create_token(
            world.users["owner"], "group", world.sibling, name="g", scopes=["read_registry"]
        )


def test_revoke_needs_the_same_role_as_create(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_registry"]
    )
    with pytest.raises(PermissionDenied):
        world.runtime.tokens.revoke_token(
            world.users["group_maintainer"], "group", world.top, issued.token.token_id
        )
    assert world.runtime.tokens.revoke_token(
        world.users["owner"], "group", world.top, issued.token.token_id
    ).revoked


def test_revoking_twice_is_harmless_and_records_one_event(world: World):
    token_id = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    assert [entry["event"] for entry in world.runtime.tokens.history(token_id)] == [
        "Created",
        "Scoped",
        "Revoked",
    ]


def test_another_holders_token_id_is_not_found(world: World):
    token_id = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id
    with pytest.raises(NotFound):
        world.runtime.tokens.revoke_token(world.admin, "project", world.deep_project, token_id)
    with pytest.raises(NotFound):
        world.runtime.tokens.token_of(world.admin, "group", world.top, token_id)


def test_deleted_tokens_vanish_from_lists_but_keep_their_history(world: World):
    read = world.runtime.read
    token_id = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    ).token.token_id
    world.runtime.tokens.delete_token(world.admin, "project", world.project, token_id)
    page = read.tokens(
        holder_kind="project", holder_id=world.project, active_only=False, now=world.runtime.clock.now()
    )
    assert token_id not in [record.token_id for record in page.items]
    with pytest.raises(NotFound):
        world.runtime.tokens.delete_token(world.admin, "project", world.project, token_id)
    assert world.runtime.tokens.history(token_id)[-1]["event"] == "Deleted"


def test_active_filter_drops_revoked_and_expired_tokens(world: World):
    runtime = world.runtime
    keep = runtime.tokens.create_token(
        world.admin, "project", world.project, name="keep", scopes=["read_repository"]
    )
    gone = runtime.tokens.create_token(
        world.admin, "project", world.project, name="gone", scopes=["read_repository"]
    )
    soon = runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="soon",
        scopes=["read_repository"],
        expires_at=runtime.clock.now() + timedelta(days=1),
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, gone.token.token_id)
    later = runtime.clock.now() + timedelta(days=2)
    active = runtime.read.tokens(holder_kind="project", holder_id=world.project, active_only=True, now=later)
    everything = runtime.read.tokens(
        holder_kind="project", holder_id=world.project, active_only=False, now=later
    )
    assert [r.token_id for r in active.items] == [keep.token.token_id]
    assert {r.token_id for r in everything.items} == {
        keep.token.token_id,
        gone.token.token_id,
        soon.token.token_id,
    }


def test_token_ids_are_sequential_integers(world: World):
    ids = [
        world.runtime.tokens.create_token(
            world.admin, "project", world.project, name=f"t{i}", scopes=["read_repository"]
        ).token.token_id
        for i in range(5)
    ]
    assert ids == list(range(ids[0], ids[0] + 5))


def test_validation_errors_write_nothing(world: World):
    runtime = world.runtime
    head = runtime.store.head()
    with pytest.raises(ValidationError):
        runtime.tokens.create_token(world.admin, "project", world.project, name="", scopes=["nope"])
    assert runtime.store.head() == head


def test_expiry_date_is_stored_as_midnight_utc(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="t",
        scopes=["read_repository"],
        expires_at=date(2026, 6, 1),
    )
    assert issued.token.expires_at is not None
    assert issued.token.expires_at.isoformat() == "2026-06-01T00:00:00+00:00"


def test_record_expiry_only_after_the_instant(world: World):
    runtime = world.runtime
    token_id = runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="t",
        scopes=["read_repository"],
        expires_at=date(2026, 2, 1),
    ).token.token_id
    assert not runtime.tokens.record_expiry(token_id)
    runtime.clock.set(runtime.clock.now().replace(year=2026, month=2, day=1, hour=0, minute=0))  # type: ignore[attr-defined]
    assert runtime.tokens.record_expiry(token_id)
    assert not runtime.tokens.record_expiry(token_id)
    assert [e["event"] for e in runtime.tokens.history(token_id)][-1] == "Expired"


def test_ci_variables_come_from_the_projects_own_gitlab_deploy_token(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="gitlab-deploy-token", scopes=["read_repository"]
    )
    assert world.runtime.tokens.ci_variables(world.project) == (issued.token.username, issued.value)


def test_group_ci_token_reaches_only_direct_child_projects(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "group", world.top, name="gitlab-deploy-token", scopes=["read_registry"]
    )
    assert world.runtime.tokens.ci_variables(world.project) == (issued.token.username, issued.value)
    assert world.runtime.tokens.ci_variables(world.deep_project) is None


def test_ci_token_value_is_destroyed_on_revoke(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="gitlab-deploy-token", scopes=["read_repository"]
    )
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
    assert world.runtime.tokens.ci_variables(world.project) is None
    assert world.runtime.vault.get(issued.token.token_id) is None


def test_ci_token_value_is_destroyed_on_delete_and_on_expiry(world: World):
    runtime = world.runtime
    deleted = runtime.tokens.create_token(
        world.admin, "project", world.project, name="gitlab-deploy-token", scopes=["read_repository"]
    )
    runtime.tokens.delete_token(world.admin, "project", world.project, deleted.token.token_id)
    assert runtime.vault.get(deleted.token.token_id) is None
    expiring = runtime.tokens.create_token(
        world.admin,
        "project",
        world.project,
        name="gitlab-deploy-token",
        scopes=["read_repository"],
        expires_at=runtime.clock.now() + timedelta(days=1),
    )
    runtime.clock.set(runtime.clock.now() + timedelta(days=1))  # type: ignore[attr-defined]
    assert runtime.tokens.record_expiry(expiring.token.token_id)
    assert runtime.vault.get(expiring.token.token_id) is None


def test_blocked_users_cannot_authenticate(world: World):
    issued = world.runtime.directory.create_personal_access_token(
        world.admin, world.users["developer"].user_id, name="p", scopes=["api"]
    )
    assert world.runtime.access.authenticate(issued.value).user.username == "developer"
    world.runtime.directory.set_user_blocked(world.admin, world.users["developer"].user_id, True)
    with pytest.raises(Unauthenticated):
        world.runtime.access.authenticate(issued.value)


def test_deploy_tokens_never_authenticate_the_management_api(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    with pytest.raises(Unauthenticated):
        world.runtime.access.authenticate(issued.value)


def test_only_admins_create_users(world: World):
    with pytest.raises(PermissionDenied):
        world.runtime.directory.register_user(world.users["owner"], username="eve", email="eve@example.com")


def test_usernames_and_paths_are_unique_case_insensitively(world: World):
    with pytest.raises(ValidationError):
        world.runtime.directory.register_user(world.admin, username="ROOT", email="r2@example.com")
    with pytest.raises(ValidationError):
        world.runtime.directory.create_group(world.admin, name="dup", path="ACME")


def test_bootstrap_refuses_a_second_admin(world: World):
    from domain.errors import Conflict

    with pytest.raises(Conflict):
        world.runtime.directory.bootstrap_admin(username="root2", email="r2@example.com")


def test_history_has_version_time_actor_and_changes(world: World):
    token_id = world.runtime.tokens.create_token(
        world.admin.with_address("198.51.100.7"),
        "project",
        world.project,
        name="t",
        scopes=["read_repository"],
    ).token.token_id
    first = world.runtime.tokens.history(token_id)[0]
    assert first["version"] == 1
    assert first["actor"]["username"] == "root"
    assert first["actor"]["address"] == "198.51.100.7"
    assert first["changes"]["name"] == "t"
    assert "digest" not in first["changes"]


def test_projects_created_later_appear_under_their_group(world: World):
    read = world.runtime.read
    project_id = world.runtime.directory.create_project(world.admin, name="Later", namespace_id=world.sub)
    project = read.project(project_id)
    assert project is not None
    assert project.full_path == "acme/backend/later"
    assert project.group_ids == (world.top, world.sub)
