"""Directory rules through the service (both backends) and the console script: reserved names, and the role
guard on members (nobody acts above their own role; a group keeps an Owner)."""

import threading
from pathlib import Path

import pytest

from deploy_tokens.members import MembersService
from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.errors import PermissionDenied, ValidationError

from ..conftest import World
from .test_cli import run


def levels(world: World, kind: str, source: int) -> dict[str, int]:
    return {user.username: member.access_level for member, user in world.runtime.read.members(kind, source)}


def new_user(world: World, username: str) -> Actor:
    record = world.runtime.directory.register_user(
        world.admin, username=username, email=f"{username}@example.com"
    )
    return Actor.user(record.user_id, record.username)


def uid(actor: Actor) -> int:
    assert actor.user_id is not None
    return actor.user_id


# Reserved names -------------------------------------------------------------------------------------------


def test_bootstrap_refuses_a_reserved_username_and_writes_nothing(runtime: Runtime):
    with pytest.raises(ValidationError) as caught:
        runtime.directory.bootstrap_admin(username="Admin", email="admin@example.com")
    assert caught.value.errors == {"username": ["Admin is a reserved name"]}
    assert not runtime.read.any_admin()
    assert runtime.store.head() == 0
    user, _ = runtime.directory.bootstrap_admin(username="root", email="root@example.com")
    assert user.username == "root"


def test_the_console_script_refuses_reserved_group_paths_and_usernames(tmp_path: Path):
    refused = run(tmp_path, "bootstrap", "--username", "users", "--email", "root@example.com")
    assert refused.returncode == 1
    assert "Username users is a reserved name" in refused.stderr
    assert run(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com").returncode == 0
    group = run(tmp_path, "groups", "create", "--name", "Api", "--path", "api")
    assert group.returncode == 1
    assert "Path api is a reserved name" in group.stderr
    assert "Traceback" not in group.stderr


# The role guard on members ----------------------------------------------------------------------------------


def test_a_maintainer_cannot_demote_or_remove_a_project_owner(world: World):
    maintainer, outsider = world.users["maintainer"], uid(world.users["outsider"])
    world.runtime.members.set_member(world.admin, "project", world.project, outsider, 50)
    with pytest.raises(PermissionDenied):
        world.runtime.members.set_member(maintainer, "project", world.project, outsider, 30)
    with pytest.raises(PermissionDenied):
        world.runtime.members.remove_member(maintainer, "project", world.project, outsider)
    assert levels(world, "project", world.project)["outsider"] == 50


def test_a_members_inherited_role_counts_against_a_maintainer(world: World):
    """The group's Owner is only a Developer of the project directly, but an Owner there through the group."""
    maintainer, owner = world.users["maintainer"], uid(world.users["owner"])
    world.runtime.members.set_member(world.admin, "project", world.project, owner, 30)
    with pytest.raises(PermissionDenied):
        world.runtime.members.set_member(maintainer, "project", world.project, owner, 10)
    with pytest.raises(PermissionDenied):
        world.runtime.members.remove_member(maintainer, "project", world.project, owner)
    assert levels(world, "project", world.project)["owner"] == 30


def test_the_last_owner_of_a_group_can_be_neither_removed_nor_demoted_even_by_an_admin(world: World):
    solo = new_user(world, "solo")
    group = world.runtime.directory.create_group(solo, name="Solo", path="solo-team")
    for attempt in (
        lambda: world.runtime.members.remove_member(world.admin, "group", group, uid(solo)),
        lambda: world.runtime.members.set_member(world.admin, "group", group, uid(solo), 40),
        lambda: world.runtime.members.remove_member(solo, "group", group, uid(solo)),
        lambda: world.runtime.members.set_member(solo, "group", group, uid(solo), 30),
    ):
        with pytest.raises(PermissionDenied) as caught:
            attempt()
        assert caught.value.reason.startswith("403 Forbidden")
    assert levels(world, "group", group) == {"solo": 50}
    # With a second Owner, either may go.
    world.runtime.members.set_member(solo, "group", group, uid(world.users["outsider"]), 50)
    world.runtime.members.set_member(world.admin, "group", group, uid(solo), 40)
    assert levels(world, "group", group) == {"solo": 40, "outsider": 50}


def test_owners_of_a_parent_group_keep_a_subgroup_owned(world: World):
    system = Actor.system("test")
    lead = new_user(world, "lead")
    parent = world.runtime.directory.create_group(
        system, name="Holding", path="holding"
    )  # no Owner: created by a process
    child = world.runtime.directory.create_group(system, name="Unit", path="unit", parent_id=parent)
    world.runtime.members.set_member(system, "group", child, uid(lead), 50)
    with pytest.raises(PermissionDenied):
        world.runtime.members.remove_member(world.admin, "group", child, uid(lead))
    world.runtime.members.set_member(system, "group", parent, uid(world.users["outsider"]), 50)
    world.runtime.members.remove_member(world.admin, "group", child, uid(lead))
    assert levels(world, "group", child) == {}


def race_self_demotions(members: MembersService, group: int, owners: list[Actor]) -> list[str]:
    """Each Owner steps down to Maintainer at the same moment, on a thread of its own."""
    start = threading.Barrier(len(owners))
    outcomes: list[str] = []
    lock = threading.Lock()

    def demote(owner: Actor) -> None:
        start.wait()
        try:
            members.set_member(owner, "group", group, uid(owner), 40)
            outcome = "demoted"
        except PermissionDenied:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=demote, args=(owner,)) for owner in owners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return sorted(outcomes)


def test_concurrent_demotions_of_the_last_two_owners_leave_one(world: World):
    """Each demotion alone is allowed; together they would orphan the group, so exactly one may win."""
    system = Actor.system("test")
    owners = [new_user(world, "first"), new_user(world, "second")]
    for round_number in range(5):
        group = world.runtime.directory.create_group(
            system, name=f"Pair {round_number}", path=f"pair-{round_number}"
        )
        for owner in owners:
            world.runtime.members.set_member(system, "group", group, uid(owner), 50)
        assert race_self_demotions(world.runtime.members, group, owners) == ["demoted", "refused"]
        assert sorted(levels(world, "group", group).values()) == [40, 50]
