"""Renaming, transferring and deleting projects and groups (behaviour [holder-id], [old-paths],
[holder-delete], [history-paths]) and unique user emails ([unique-email]), on both backends."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from eventsourcing.persistence import IntegrityError

from deploy_tokens.runtime import Runtime
from deploy_tokens.tokens import IssuedToken
from domain.errors import NotFound, Refused, ValidationError
from domain.projects import Project
from projections.access import Action, Decision, Reason
from projections.audit_directory import holder_path_at
from projections.audit_queries import AuditQuery, audit_events
from projections.chain_queries import verify
from projections.credential_index import CredentialIndex, Resource
from projections.point_in_time import token_state_at, who_could

from ..conftest import POSTGRES_ONLY, T0, World


def issue(world: World, kind: str, holder: int, *scopes: str, name: str = "deploy") -> IssuedToken:
    return world.runtime.tokens.create_token(
        world.admin,
        kind,
        holder,
        name=name,
        scopes=list(scopes or ["read_repository"]),  # type: ignore[arg-type]
    )


def clone(index: CredentialIndex, world: World, token: IssuedToken, path: str) -> Decision:
    """The decision for a Git clone of the project at ``path``."""
    return index.check(
        value=token.value,
        username=token.token.username,
        action=Action.GIT_READ,
        resource=Resource("project", path=path),
        now=world.runtime.clock.now(),
        check_username=True,
    )


def full_path(world: World, project_id: int) -> str:
    project = world.runtime.read.project(project_id)
    assert project is not None
    return project.full_path


# Tokens follow their holder by id ---------------------------------------------------------------------


def test_a_renamed_project_keeps_its_token_at_the_new_path_and_the_old_path_names_nothing(world: World):
    token = issue(world, "project", world.project)
    world.runtime.lifecycle.update_project(world.admin, world.project, name="Api v2", path="api-v2")
    assert full_path(world, world.project) == "acme/api-v2"
    assert clone(world.runtime.index, world, token, "acme/api-v2").allowed
    assert clone(world.runtime.index, world, token, "acme/api").reason == Reason.RESOURCE_NOT_FOUND


def test_a_new_project_at_an_old_path_is_never_reached_by_the_old_projects_token(world: World):
    token = issue(world, "project", world.project)
    world.runtime.lifecycle.update_project(world.admin, world.project, path="moved")
    newcomer = world.runtime.directory.create_project(world.admin, name="api", namespace_id=world.top)
    assert full_path(world, newcomer) == "acme/api"
    assert clone(world.runtime.index, world, token, "acme/api").reason == Reason.OUTSIDE_SCOPE
    assert clone(world.runtime.index, world, token, "acme/moved").allowed


def test_a_group_token_gains_a_project_moved_in_and_loses_it_when_moved_out(world: World):
    group_token = issue(world, "group", world.top)
    elsewhere = world.sibling_project
    assert clone(world.runtime.index, world, group_token, "other/elsewhere").reason == Reason.OUTSIDE_SCOPE
    world.runtime.lifecycle.transfer_project(world.admin, elsewhere, "acme/backend")
    assert clone(world.runtime.index, world, group_token, "acme/backend/elsewhere").allowed
    world.runtime.lifecycle.transfer_project(world.admin, elsewhere, world.sibling)
    assert clone(world.runtime.index, world, group_token, "other/elsewhere").reason == Reason.OUTSIDE_SCOPE


def test_a_transferred_group_takes_everything_below_it_and_tokens_follow_by_id(world: World):
    top_token = issue(world, "group", world.top)
    sub_token = issue(world, "group", world.sub)
    other_token = issue(world, "group", world.sibling)
    project_token = issue(world, "project", world.deep_project)
    world.runtime.lifecycle.transfer_group(world.admin, world.sub, world.sibling)
    moved = "other/backend/services/db"
    assert full_path(world, world.deep_project) == moved
    index = world.runtime.index
    assert clone(index, world, top_token, moved).reason == Reason.OUTSIDE_SCOPE
    assert clone(index, world, sub_token, moved).allowed
    assert clone(index, world, other_token, moved).allowed
    assert clone(index, world, project_token, moved).allowed
    assert clone(index, world, project_token, "acme/backend/services/db").reason == Reason.RESOURCE_NOT_FOUND
    subsub = world.runtime.read.namespace(world.subsub)
    assert subsub is not None
    assert (subsub.full_path, subsub.ancestor_ids) == ("other/backend/services", (world.sibling, world.sub))


def test_a_renamed_group_moves_the_paths_below_it(world: World):
    token = issue(world, "project", world.deep_project)
    world.runtime.lifecycle.update_group(world.admin, world.top, name="Acme Inc", path="acme-inc")
    assert full_path(world, world.deep_project) == "acme-inc/backend/services/db"
    assert clone(world.runtime.index, world, token, "acme-inc/backend/services/db").allowed
    group = world.runtime.read.namespace(world.top)
    assert group is not None and (group.name, group.path) == ("Acme Inc", "acme-inc")
    # The freed path can be taken by a new group, which reaches nothing of the old one.
    newcomer = world.runtime.directory.create_group(world.admin, name="Acme", path="acme")
    newcomer_token = issue(world, "group", newcomer)
    assert clone(world.runtime.index, world, newcomer_token, "acme-inc/api").reason == Reason.OUTSIDE_SCOPE


def test_the_registry_repository_name_follows_the_new_path_exactly(world: World):
    token = issue(world, "project", world.project, "read_registry")

    def pull(path: str) -> Decision:
        return world.runtime.index.check(
            value=token.value,
            username=token.token.username,
            action=Action.REGISTRY_PULL,
            resource=Resource("project", path=path, exact_path=True),
            now=world.runtime.clock.now(),
            check_username=True,
        )

    world.runtime.lifecycle.update_project(world.admin, world.project, path="Api-Image")
    assert pull("acme/Api-Image").allowed
    assert not pull("acme/api").allowed
    assert not pull("acme/api-image").allowed  # registries compare names exactly


# Refusals ---------------------------------------------------------------------------------------------


def test_a_path_another_holder_has_is_refused_and_nothing_changes(world: World):
    world.runtime.directory.create_project(world.admin, name="Taken", path="taken", namespace_id=world.top)
    with pytest.raises(ValidationError) as refused:
        world.runtime.lifecycle.update_project(world.admin, world.project, name="New", path="taken")
    assert refused.value.errors == {"path": ["has already been taken"]}
    project = world.runtime.read.project(world.project)
    assert project is not None and (project.name, project.path) == ("Api", "api")


def test_a_group_cannot_move_below_itself_or_where_its_path_is_taken(world: World):
    lifecycle = world.runtime.lifecycle
    with pytest.raises(Refused, match="Cannot transfer group to one of its subgroup"):
        lifecycle.transfer_group(world.admin, world.top, world.subsub)
    with pytest.raises(Refused, match="already a root group"):
        lifecycle.transfer_group(world.admin, world.top, None)
    clash = world.runtime.directory.create_group(
        world.admin, name="Backend", path="backend", parent_id=world.sibling
    )
    del clash
    with pytest.raises(Refused, match="same path"):
        lifecycle.transfer_group(world.admin, world.sub, world.sibling)
    assert full_path(world, world.deep_project) == "acme/backend/services/db"


def test_only_owners_delete_and_change_paths_maintainers_may_rename(world: World):
    maintainer, owner = world.users["maintainer"], world.users["owner"]
    lifecycle = world.runtime.lifecycle
    lifecycle.update_project(maintainer, world.project, name="Renamed by a maintainer")
    for forbidden in (
        lambda: lifecycle.update_project(maintainer, world.project, path="elsewhere"),
        lambda: lifecycle.delete_project(maintainer, world.project),
        lambda: lifecycle.transfer_project(maintainer, world.project, world.sub),
        lambda: lifecycle.delete_group(world.users["group_maintainer"], world.top),
    ):
        with pytest.raises(Exception) as error:
            forbidden()
        assert type(error.value).__name__ == "PermissionDenied"
    with pytest.raises(NotFound):
        lifecycle.delete_group(world.users["outsider"], world.top)
    lifecycle.update_project(owner, world.project, path="by-the-owner")
    assert full_path(world, world.project) == "acme/by-the-owner"


# Deleting ----------------------------------------------------------------------------------------------


def test_deleting_a_project_deletes_its_tokens_and_frees_its_path(world: World):
    runtime = world.runtime
    token = issue(world, "project", world.project)
    ci = issue(world, "project", world.project, name="gitlab-deploy-token")
    assert runtime.tokens.ci_variables(world.project) is not None
    runtime.lifecycle.delete_project(world.admin, world.project)
    assert runtime.read.project(world.project) is None
    assert clone(runtime.index, world, token, "acme/api").reason == Reason.DELETED
    assert runtime.vault.get(ci.token.token_id) is None
    with pytest.raises(NotFound):
        runtime.tokens.ci_variables(world.project)
    destroyed = [
        row.event_type for row in audit_events(runtime.db, AuditQuery(token_id=token.token.token_id))
    ]
    assert destroyed[-1] == "deploy_token_destroyed"
    again = runtime.directory.create_project(world.admin, name="Api", namespace_id=world.top)
    assert again != world.project and full_path(world, again) == "acme/api"
    newcomer_token = issue(world, "project", again)
    assert clone(runtime.index, world, newcomer_token, "acme/api").allowed


def test_deleting_a_group_takes_its_subgroups_projects_and_tokens(world: World):
    runtime = world.runtime
    tokens = [
        issue(world, "group", world.top),
        issue(world, "group", world.subsub),
        issue(world, "project", world.deep_project),
    ]
    survivor = issue(world, "project", world.sibling_project)
    runtime.lifecycle.delete_group(world.admin, world.top)
    assert runtime.read.namespace(world.top) is None and runtime.read.namespace(world.subsub) is None
    assert runtime.read.project(world.project) is None and runtime.read.project(world.deep_project) is None
    for token in tokens:
        record = runtime.read.token(token.token.token_id)
        assert record is not None and record.deleted_at is not None
        assert clone(runtime.index, world, token, "acme/backend/services/db").reason == Reason.DELETED
    types = {row.event_type for row in audit_events(runtime.db, AuditQuery(namespace_kind="group"))}
    assert {"group_deploy_token_destroyed", "group_destroyed"} <= types
    assert runtime.read.members("group", world.top) == []
    assert clone(runtime.index, world, survivor, "other/elsewhere").allowed
    with pytest.raises(NotFound):
        runtime.directory.create_project(world.admin, name="late", namespace_id=world.sub)
    runtime.directory.create_group(world.admin, name="Acme", path="acme")  # every path is free again


# Another process ---------------------------------------------------------------------------------------


@pytest.fixture
def other_process(world: World) -> Iterator[Runtime]:
    """A second runtime on the same database, its credential index following the log as a server's does."""
    other = Runtime.open(world.runtime.settings, clock=world.runtime.clock)
    stop = threading.Event()
    follower = threading.Thread(target=other.index.follow, args=(stop,), daemon=True)
    follower.start()
    try:
        yield other
    finally:
        stop.set()
        follower.join(timeout=5)
        other.close()


def soon(index: CredentialIndex, world: World, token: IssuedToken, path: str, allowed: bool) -> float:
    """Seconds until the other process gives the expected answer; fails past the staleness bound."""
    started = time.monotonic()
    while clone(index, world, token, path).allowed != allowed:
        assert time.monotonic() - started < index.max_staleness, f"{path}: still not {allowed}"
        time.sleep(0.005)
    return time.monotonic() - started


def test_another_process_follows_renames_transfers_and_deletions(world: World, other_process: Runtime):
    lifecycle, index = world.runtime.lifecycle, other_process.index
    project_token = issue(world, "project", world.project)
    group_token = issue(world, "group", world.sibling)
    soon(index, world, project_token, "acme/api", True)
    lifecycle.update_project(world.admin, world.project, path="renamed")
    soon(index, world, project_token, "acme/renamed", True)
    soon(index, world, project_token, "acme/api", False)
    lifecycle.transfer_project(world.admin, world.project, world.sibling)
    soon(index, world, group_token, "other/renamed", True)
    lifecycle.transfer_project(world.admin, world.project, world.top)
    soon(index, world, group_token, "acme/renamed", False)
    lifecycle.transfer_group(world.admin, world.sub, world.sibling)
    soon(index, world, group_token, "other/backend/services/db", True)
    lifecycle.delete_group(world.admin, world.sibling)
    soon(index, world, group_token, "other/backend/services/db", False)
    lifecycle.delete_project(world.admin, world.project)
    soon(index, world, project_token, "acme/renamed", False)
    assert clone(index, world, project_token, "acme/renamed").reason == Reason.DELETED


# Concurrency -------------------------------------------------------------------------------------------


def test_a_creation_built_on_a_group_that_moved_since_cannot_be_saved(world: World):
    """The mechanism behind the race below, step by step: creating in a group records ``ChildAdded`` there,
    at the version the creation loaded; a move in between has taken that version, so the save is refused and
    the service builds again on the moved group."""
    runtime, now = world.runtime, world.runtime.clock.now()
    stale = runtime.access.group(world.subsub)
    runtime.lifecycle.transfer_group(world.admin, world.sub, world.sibling)
    project = Project.found(
        project_id=999,
        name="late",
        path=None,
        namespace=stale,
        repository_enabled=True,
        container_registry_enabled=True,
        actor=world.admin,
        now=now,
    )
    assert project.full_path == "acme/backend/services/late"  # what a stale creation would record
    stale.add_child("project", 999, actor=world.admin, now=now)
    with pytest.raises(IntegrityError):
        runtime.store.save(project, stale)
    created = runtime.directory.create_project(world.admin, name="late", namespace_id=world.subsub)
    assert full_path(world, created) == "other/backend/services/late"


# Real concurrency is PostgreSQL's: SQLite serialises every writer of the file (as test_concurrency.py).


@POSTGRES_ONLY
def test_projects_created_while_their_group_moves_land_below_its_new_path(world: World):
    """A creation that loaded the group before a move commits after it conflicts and decides again, so no
    project is ever left at a path (or below groups) its group no longer has."""
    runtime, errors, created = world.runtime, [], []
    start = threading.Barrier(5)

    def create(worker: int) -> None:
        start.wait()
        try:
            for number in range(4):
                created.append(
                    runtime.directory.create_project(
                        world.admin, name=f"p{worker}-{number}", namespace_id=world.subsub
                    )
                )
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    def move() -> None:
        start.wait()
        try:
            for parent in (world.sibling, world.top, world.sibling, None):
                runtime.lifecycle.transfer_group(world.admin, world.sub, parent)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)] + [threading.Thread(target=move)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(created) == 16
    for project_id in created:
        project = runtime.access.project(project_id)
        assert project.full_path == f"backend/services/{project.path}"
        assert project.group_ids == (world.sub, world.subsub)
        assert full_path(world, project_id) == project.full_path


# History, point in time, chain, rebuild ----------------------------------------------------------------


def _moves(world: World) -> tuple[IssuedToken, int]:
    """T0+1h a project token; T0+2h the project renamed; T0+3h its group transferred; T0+4h deleted."""
    clock, lifecycle = world.runtime.clock, world.runtime.lifecycle
    clock.set(T0 + timedelta(hours=1))  # type: ignore[attr-defined]
    token = issue(world, "project", world.deep_project)
    clock.set(T0 + timedelta(hours=2))  # type: ignore[attr-defined]
    lifecycle.update_project(world.admin, world.deep_project, path="database")
    clock.set(T0 + timedelta(hours=3))  # type: ignore[attr-defined]
    lifecycle.transfer_group(world.admin, world.sub, world.sibling)
    clock.set(T0 + timedelta(hours=4))  # type: ignore[attr-defined]
    lifecycle.delete_group(world.admin, world.sibling)
    return token, token.token.token_id


def test_a_tokens_state_at_an_instant_says_where_its_holder_was(world: World):
    _, token_id = _moves(world)
    store = world.runtime.store

    def at(hours: float) -> tuple[str | None, bool]:
        state = token_state_at(store, token_id, T0 + timedelta(hours=hours))
        return state.holder_path, state.holder_deleted

    assert at(1.5) == ("acme/backend/services/db", False)
    assert at(2.5) == ("acme/backend/services/database", False)
    assert at(3.5) == ("other/backend/services/database", False)
    assert at(4.5) == ("other/backend/services/database", True)


def test_who_could_takes_a_path_as_it_was_at_the_instant(world: World):
    _, token_id = _moves(world)
    store = world.runtime.store
    then = who_could(
        store, action=Action.GIT_READ, project="acme/backend/services/db", at=T0 + timedelta(hours=1.5)
    )
    assert [(answer.token_id, answer.holder_path) for answer in then] == [
        (token_id, "acme/backend/services/db")
    ]
    with pytest.raises(NotFound):
        who_could(
            store, action=Action.GIT_READ, project="acme/backend/services/db", at=T0 + timedelta(hours=2.5)
        )
    by_id = who_could(store, action=Action.GIT_READ, project=world.deep_project, at=T0 + timedelta(hours=3.5))
    assert [(answer.token_id, answer.holder_path) for answer in by_id] == [
        (token_id, "other/backend/services/database")
    ]
    with pytest.raises(NotFound):  # deleted by then
        who_could(store, action=Action.GIT_READ, project=world.deep_project, at=T0 + timedelta(hours=5))


def test_the_trail_keeps_each_path_and_one_row_per_move(world: World):
    token, _ = _moves(world)
    db = world.runtime.db
    rows = audit_events(db, AuditQuery(namespace_kind="project", namespace_id=world.deep_project, limit=None))
    moves = [
        (row.event_type, row.details.get("previous_full_path"), row.details.get("full_path")) for row in rows
    ]
    assert ("project_path_updated", "acme/backend/services/db", "acme/backend/services/database") in moves
    assert (
        "project_path_updated",
        "acme/backend/services/database",
        "other/backend/services/database",
    ) in moves
    assert rows[-1].event_type == "project_destroyed"
    created = audit_events(db, AuditQuery(token_id=token.token.token_id))[0]
    destroyed = audit_events(db, AuditQuery(token_id=token.token.token_id))[-1]
    assert holder_path_at(db, "project", world.deep_project, created.position) == (
        "acme/backend/services/db",
        False,
    )
    assert holder_path_at(db, "project", world.deep_project, destroyed.position) == (
        "other/backend/services/database",
        False,
    )


def test_the_chain_verifies_and_rebuilds_give_the_same_rows_after_moves_and_deletions(world: World):
    _moves(world)
    runtime = world.runtime
    runtime.projector.catch_up()
    assert verify(runtime.db, runtime.store.recorder.select_notifications, runtime.keys.chain_key).ok
    for name in ("credential_lookup", "directory", "audit_trail"):
        projection = runtime.projector.projections[name]
        before = _rows(runtime, projection.tables)
        runtime.projector.rebuild(name)
        assert _rows(runtime, projection.tables) == before, name


def _rows(runtime: Runtime, tables: tuple[str, ...]) -> dict[str, list[tuple[object, ...]]]:
    with runtime.db.read() as cursor:
        return {
            table: sorted(tuple(row) for row in cursor.execute(f"SELECT * FROM {table}").fetchall())
            for table in tables
        }


# Unique emails -----------------------------------------------------------------------------------------


def test_an_email_another_user_has_is_refused_in_any_case(world: World):
    directory = world.runtime.directory
    with pytest.raises(ValidationError) as taken:
        directory.register_user(world.admin, username="twin", email="Guest@Example.com")
    assert taken.value.errors == {"email": ["has already been taken"]}
    outsider = world.users["outsider"].user_id
    assert outsider is not None
    with pytest.raises(ValidationError):
        directory.update_user(world.admin, outsider, email="GUEST@example.com")
    assert directory.update_user(world.admin, outsider, email="new@example.com").email == "new@example.com"
    # The old address is free again; the new one is not.
    directory.register_user(world.admin, username="heir", email="outsider@example.com")
    with pytest.raises(ValidationError):
        directory.register_user(world.admin, username="late", email="NEW@example.com")


@POSTGRES_ONLY
def test_concurrent_registrations_with_one_email_make_one_user(world: World):
    outcomes: list[str] = []
    start = threading.Barrier(4)

    def register(number: int) -> None:
        start.wait()
        try:
            world.runtime.directory.register_user(
                world.admin, username=f"racer{number}", email="same@example.com"
            )
            outcomes.append("created")
        except ValidationError as error:
            outcomes.append(str(error.errors))

    threads = [threading.Thread(target=register, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created"] + ["{'email': ['has already been taken']}"] * 3
