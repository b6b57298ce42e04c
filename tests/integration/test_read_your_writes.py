"""Read-your-writes after a command (docs/architecture.md, "Events reach the read models"): the process that
wrote catches every read model up in one transaction before it answers (``Projector.catch_up_with``), with
the events it has just stored, and whatever others stored before them."""

from __future__ import annotations

from datetime import date

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import DeployToken
from infrastructure.db import Database

from ..conftest import World, save_unprojected


def _tables(db: Database, runtime: Runtime) -> dict[str, list[tuple[object, ...]]]:
    tables = {table for projection in runtime.projector.projections.values() for table in projection.tables}
    with db.read() as cursor:
        return {
            table: sorted(cursor.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
            for table in sorted(tables)
        }


def _stored_elsewhere(runtime: Runtime, project: int, first_id: int, count: int) -> list[int]:
    """Tokens another process saved and nobody has projected yet."""
    actor = Actor.system("another-process")
    now = runtime.clock.now()
    for number in range(first_id, first_id + count):
        save_unprojected(
            runtime,
            DeployToken.issue(
                token_id=number,
                name=f"elsewhere-{number}",
                username=None,
                holder_kind="project",
                holder_id=project,
                scopes=["read_registry"],
                expires_at=None,
                digest=f"{number:064x}",
                actor=actor,
                now=now,
            ),
        )
    return list(range(first_id, first_id + count))


def test_a_created_token_is_answered_as_the_read_models_hold_it(runtime: Runtime):
    world = World(runtime)
    project_token = runtime.tokens.create_token(
        world.users["maintainer"], "project", world.project, name="deploy", scopes=["read_repository"]
    )
    group_token = runtime.tokens.create_token(
        world.admin,
        "group",
        world.top,
        name="gitlab-deploy-token",
        scopes=["read_registry", "read_repository"],
        expires_at=date(2030, 1, 1),
        username="ci-bot",
    )
    for issued in (project_token, group_token):
        assert issued.token == runtime.read.token(issued.token.token_id)
    listed = runtime.read.tokens(
        holder_kind="group", holder_id=world.top, active_only=True, now=runtime.clock.now()
    ).items
    assert [record.token_id for record in listed] == [group_token.token.token_id]
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


def test_a_command_also_projects_what_others_stored_before_it(runtime: Runtime):
    world = World(runtime)
    runtime.projector.batch_size = 3  # more than one batch of others' events is waiting
    others = _stored_elsewhere(runtime, world.project, 1000, 5)
    issued = runtime.tokens.create_token(
        world.admin, "project", world.project, name="mine", scopes=["read_repository"]
    )
    for token_id in [*others, issued.token.token_id]:
        record = runtime.read.token(token_id)
        assert record is not None and record.is_active(runtime.clock.now())
    assert runtime.projector.positions() == dict.fromkeys(runtime.projector.projections, runtime.store.head())


def test_read_models_kept_by_commands_equal_a_rebuild(runtime: Runtime):
    world = World(runtime)
    tokens = [
        runtime.tokens.create_token(
            world.admin, "project", world.project, name=f"t{number}", scopes=["read_repository"]
        )
        for number in range(4)
    ]
    _stored_elsewhere(runtime, world.project, 2000, 2)
    runtime.tokens.revoke_token(world.admin, "project", world.project, tokens[1].token.token_id)
    runtime.tokens.rotate_token(world.admin, "project", world.project, tokens[2].token.token_id)
    runtime.tokens.delete_token(world.admin, "project", world.project, tokens[3].token.token_id)
    kept = _tables(runtime.db, runtime)
    for name in runtime.projector.projections:
        runtime.projector.rebuild(name)
    assert _tables(runtime.db, runtime) == kept
