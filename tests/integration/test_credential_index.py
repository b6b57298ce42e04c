"""The in-memory credential index: fresh after own writes, fails closed when stale, recovers by itself."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.token_values import generate_token
from projections.access import Action, Reason
from projections.credential_index import CredentialIndex, Resource, StaleIndex

from ..conftest import World


def git_check(index: CredentialIndex, world: World, value: str, username: str, project_id: int):
    return index.check(
        value=value,
        username=username,
        action=Action.GIT_READ,
        resource=Resource("project", project_id),
        now=world.runtime.clock.now(),
        check_username=True,
    )


def test_the_revoking_process_denies_at_once(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    assert git_check(runtime.index, world, issued.value, issued.token.username, world.project).allowed
    runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
    decision = git_check(runtime.index, world, issued.value, issued.token.username, world.project)
    assert (decision.allowed, decision.reason) == (False, Reason.REVOKED)


def test_projects_created_after_a_group_token_are_covered_at_once(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_repository"]
    )
    later = runtime.directory.create_project(world.admin, name="Later", namespace_id=world.subsub)
    assert git_check(runtime.index, world, issued.value, issued.token.username, later).allowed


def test_resources_resolve_by_path_case_insensitively(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    decision = runtime.index.check(
        value=issued.value,
        username=issued.token.username,
        action=Action.GIT_READ,
        resource=Resource("project", path="ACME/api"),
        now=runtime.clock.now(),
        check_username=True,
    )
    assert decision.allowed


def test_malformed_values_are_rejected_before_any_lookup(world: World):
    decision = git_check(world.runtime.index, world, "gldt-not-a-real-token", "x", world.project)
    assert decision.reason is Reason.MALFORMED_TOKEN


def test_credentials_that_could_not_be_read_are_malformed_and_none_at_all_are_missing(world: World):
    def check(unreadable: bool) -> Reason:
        return world.runtime.index.check(
            value=None,
            unreadable=unreadable,
            username=None,
            action=Action.GIT_READ,
            resource=Resource("project", world.project),
            now=world.runtime.clock.now(),
            check_username=True,
        ).reason

    assert check(unreadable=True) is Reason.MALFORMED_TOKEN
    assert check(unreadable=False) is Reason.NO_CREDENTIALS


def test_a_mistyped_value_is_malformed_and_an_unissued_one_unknown(world: World):
    issued = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    value = issued.value
    mistyped = value[:10] + ("A" if value[10] != "A" else "B") + value[11:]  # same shape, checksum fails
    decision = git_check(world.runtime.index, world, mistyped, issued.token.username, world.project)
    assert decision.reason is Reason.MALFORMED_TOKEN
    unissued = generate_token()  # a valid checksum, but no such token
    decision = git_check(world.runtime.index, world, unissued, issued.token.username, world.project)
    assert decision.reason is Reason.UNKNOWN_TOKEN


def test_rotated_secret_works_only_during_grace(world: World):
    runtime = world.runtime
    old = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    new = runtime.tokens.rotate_token(
        world.admin, "project", world.project, old.token.token_id, grace=timedelta(hours=1)
    )
    username = old.token.username
    assert git_check(runtime.index, world, old.value, username, world.project).allowed
    assert git_check(runtime.index, world, new.value, username, world.project).allowed
    runtime.clock.set(runtime.clock.now() + timedelta(hours=1))  # type: ignore[attr-defined]
    assert git_check(runtime.index, world, old.value, username, world.project).reason is Reason.UNKNOWN_TOKEN
    assert git_check(runtime.index, world, new.value, username, world.project).allowed


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fails_closed_when_the_projection_stalls_and_recovers_without_restart(world: World):
    runtime = world.runtime
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    ticks = FakeMonotonic()
    index = CredentialIndex(runtime.db, runtime.store, runtime.keys, max_staleness=2.0, monotonic=ticks)
    index.refresh()
    assert git_check(index, world, issued.value, issued.token.username, world.project).allowed

    # A write the projections have not seen: as if the writer crashed before catching up and the
    # projector is down. The log's head moves past the projection's position.
    token = runtime.store.repository.get(deploy_token_uuid(issued.token.token_id))
    assert isinstance(token, DeployToken)
    token.revoke(actor=Actor.system("test"), now=runtime.clock.now())
    runtime.store.save(token)

    ticks.now += 1.0
    assert git_check(index, world, issued.value, issued.token.username, world.project).allowed  # within bound
    ticks.now += 1.5
    with pytest.raises(StaleIndex):
        git_check(index, world, issued.value, issued.token.username, world.project)

    runtime.projector.catch_up()  # the projector comes back
    decision = git_check(index, world, issued.value, issued.token.username, world.project)
    assert (decision.allowed, decision.reason) == (False, Reason.REVOKED)


def test_another_process_denies_a_revoked_token_through_its_follower(pg_runtime: Runtime):
    world = World(pg_runtime)
    other = Runtime.open(pg_runtime.settings, clock=pg_runtime.clock)
    stop = threading.Event()
    follower = threading.Thread(target=other.index.follow, args=(stop,), daemon=True)
    follower.start()
    try:
        issued = pg_runtime.tokens.create_token(
            world.admin, "project", world.project, name="t", scopes=["read_repository"]
        )
        deadline = time.monotonic() + 10
        while not git_check(other.index, world, issued.value, issued.token.username, world.project).allowed:
            assert time.monotonic() < deadline, "the other process never saw the new token"
            time.sleep(0.01)
        pg_runtime.tokens.revoke_token(world.admin, "project", world.project, issued.token.token_id)
        while git_check(other.index, world, issued.value, issued.token.username, world.project).allowed:
            assert time.monotonic() < deadline, "the other process never saw the revocation"
            time.sleep(0.01)
    finally:
        stop.set()
        follower.join(timeout=5)
        other.close()
