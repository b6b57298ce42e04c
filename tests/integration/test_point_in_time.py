"""Point-in-time answers replay the log: before, between and after a token's events they match its history."""

from __future__ import annotations

from datetime import timedelta

import pytest

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import DeployToken, deploy_token_uuid
from domain.errors import NotFound
from projections.access import Action
from projections.point_in_time import token_state_at, who_could

from ..conftest import T0, World


def _timeline(world: World) -> tuple[World, int]:
    """T0+1h created (read_repository, read_registry) by the maintainer; T0+2h narrowed to read_registry;
    T0+3h revoked by the admin."""
    runtime = world.runtime
    clock = runtime.clock
    clock.set(T0 + timedelta(hours=1))  # type: ignore[attr-defined]
    token_id = runtime.tokens.create_token(
        world.users["maintainer"],
        "project",
        world.project,
        name="deploy",
        scopes=["read_repository", "read_registry"],
    ).token.token_id
    clock.set(T0 + timedelta(hours=2))  # type: ignore[attr-defined]
    token: DeployToken = runtime.store.repository.get(deploy_token_uuid(token_id))
    token.narrow_scopes(["read_registry"], actor=Actor.system("test"), now=clock.now())
    runtime.store.save(token)
    clock.set(T0 + timedelta(hours=3))  # type: ignore[attr-defined]
    runtime.tokens.revoke_token(world.admin, "project", world.project, token_id)
    return world, token_id


def test_token_state_before_between_and_after(runtime: Runtime, world: World):
    _, token_id = _timeline(world)
    with pytest.raises(NotFound):
        token_state_at(runtime.store, token_id, T0 + timedelta(minutes=30))
    created = token_state_at(runtime.store, token_id, T0 + timedelta(hours=1, minutes=30))
    assert (created.scopes, created.revoked) == (("read_repository", "read_registry"), False)
    narrowed = token_state_at(runtime.store, token_id, T0 + timedelta(hours=2, minutes=30))
    assert (narrowed.scopes, narrowed.revoked) == (("read_registry",), False)
    revoked = token_state_at(runtime.store, token_id, T0 + timedelta(hours=4))
    assert revoked.revoked


def test_who_could_clone_at_each_instant(runtime: Runtime, world: World):
    world, token_id = _timeline(world)

    def cloners(hours: float) -> list[tuple[int, str | None]]:
        answers = who_could(
            runtime.store, action=Action.GIT_READ, project=world.project, at=T0 + timedelta(hours=hours)
        )
        return [(answer.token_id, answer.created_by) for answer in answers]

    assert cloners(0.5) == []
    assert cloners(1.5) == [(token_id, "maintainer")]
    assert cloners(2.5) == []  # narrowed to the registry
    assert cloners(3.5) == []


def test_who_could_pull_until_the_revocation(runtime: Runtime, world: World):
    world, token_id = _timeline(world)
    at = T0 + timedelta(hours=2, minutes=59)
    pullers = who_could(runtime.store, action=Action.REGISTRY_PULL, project="acme/api", at=at)
    assert [answer.token_id for answer in pullers] == [token_id]
    later = who_could(
        runtime.store, action=Action.REGISTRY_PULL, project="acme/api", at=T0 + timedelta(hours=3)
    )
    assert later == []
    del world


def test_group_tokens_count_for_projects_below_them(runtime: Runtime, world: World):
    runtime.clock.set(T0 + timedelta(hours=1))  # type: ignore[attr-defined]
    token_id = runtime.tokens.create_token(
        world.admin, "group", world.top, name="g", scopes=["read_repository"]
    ).token.token_id
    answers = who_could(
        runtime.store, action=Action.GIT_READ, project=world.deep_project, at=T0 + timedelta(hours=2)
    )
    assert [(a.token_id, a.created_by) for a in answers] == [(token_id, "root")]
