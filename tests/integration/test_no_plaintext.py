"""behaviour [value]: after tokens are issued, no token value appears in any table or file the service wrote."""

import logging
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from deploy_tokens.runtime import Runtime

from ..conftest import World


def _issue_everything(world: World) -> list[str]:
    secrets = [world.admin_token]
    secrets.append(
        world.runtime.tokens.create_token(
            world.admin, "project", world.project, name="p", scopes=["read_repository"]
        ).value
    )
    secrets.append(
        world.runtime.tokens.create_token(
            world.admin, "group", world.top, name="g", scopes=["read_registry"]
        ).value
    )
    ci = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="gitlab-deploy-token", scopes=["read_repository"]
    )
    secrets.append(ci.value)
    rotated = world.runtime.tokens.create_token(
        world.admin, "project", world.project, name="r", scopes=["read_repository"]
    )
    secrets.append(rotated.value)
    secrets.append(
        world.runtime.tokens.rotate_token(
            world.admin, "project", world.project, rotated.token.token_id, grace=timedelta(hours=1)
        ).value
    )
    secrets.append(
        world.runtime.directory.create_personal_access_token(
            world.admin, world.users["owner"].user_id, name="x", scopes=["api"]
        ).value
    )
    world.runtime.tokens.revoke_token(world.admin, "project", world.project, rotated.token.token_id)
    return secrets


def _all_table_text(runtime: Runtime) -> str:
    location = runtime.settings.database
    if location.dialect == "sqlite":
        return ""
    chunks = []
    with psycopg.connect(location.conninfo(), autocommit=True) as connection:
        tables = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (location.schema,)
        ).fetchall()
        assert len(tables) >= 5
        for (table,) in tables:
            for row in connection.execute(f'SELECT * FROM "{location.schema}"."{table}"').fetchall():
                for value in row:
                    chunks.append(
                        bytes(value).decode("latin-1")
                        if isinstance(value, (bytes, memoryview))
                        else str(value)
                    )
    return "\n".join(chunks)


def test_no_secret_in_database_files_or_logs(world: World, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    secrets = _issue_everything(world)
    runtime = world.runtime
    assert world.runtime.tokens.ci_variables(world.project) is not None  # the vault works: ciphertext only
    files = [path for path in Path(runtime.settings.data_dir).rglob("*") if path.is_file()]
    if runtime.settings.database.dialect == "sqlite":
        assert any(path.name.startswith("deploy-tokens.sqlite3") for path in files)
    blobs = [path.read_bytes() for path in files]
    table_text = _all_table_text(runtime)
    for secret in secrets:
        body = secret.split("-", 1)[1].encode()
        for path, blob in zip(files, blobs, strict=True):
            assert secret.encode() not in blob, f"token value found in {path}"
            assert body not in blob, f"token body found in {path}"
        assert secret not in table_text
        assert secret not in caplog.text
