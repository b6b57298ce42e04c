"""The credential index at scale (issue 16): benchmarks/index_scale.py's rows are the projector's rows, and
the memory an index takes per token in a fresh process stays far below what one record object per token
cost (about 1.1 KB a token)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from benchmarks import index_scale
from deploy_tokens.runtime import Runtime
from infrastructure.db import to_datetime
from projections.credential_tokens import TOKEN_TABLE_COLUMNS

from ..conftest import World

# Checked in a fresh process over 100,000 tokens (half dead). The design takes about 230 bytes a live token
# and 32 a dead one (plus a few MB for the process's first index); one record object per token took 1.1 KB.
TOKENS = 100_000
BOUND_BYTES_PER_TOKEN = 600


def _row(runtime: Runtime, token_id: int) -> dict[str, Any]:
    with runtime.db.read() as cursor:
        row = cursor.execute(
            f"SELECT {', '.join(TOKEN_TABLE_COLUMNS)} FROM cred_tokens WHERE token_id = ?", (token_id,)
        ).fetchone()
    assert row is not None
    return dict(zip(TOKEN_TABLE_COLUMNS, row, strict=True))


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """The columns the index reads, timestamps as instants (SQLite keeps text, PostgreSQL gives datetimes)."""
    moments = ("expires_at", "revoked_at", "deleted_at", "previous_valid_until")
    wanted = ("stream_id", "username", "holder_kind", "holder_id", "scopes", "digest", "previous_digest")
    return {
        **{name: row[name] for name in wanted},
        **{name: to_datetime(row[name]) for name in moments},
    }


def test_the_benchmarks_rows_are_the_projectors_rows(world: World):
    runtime = world.runtime
    now = runtime.clock.now()

    def issue(name: str, **extra: Any) -> Any:
        return runtime.tokens.create_token(
            world.admin,
            "project",
            world.project,
            name=name,
            scopes=["read_repository", "read_registry"],
            **extra,
        ).token

    plain = issue("plain", username="deployer", expires_at=now + timedelta(days=40))
    revoked = issue("revoked")
    runtime.tokens.rotate_token(
        world.admin, "project", world.project, revoked.token_id, grace=timedelta(days=1)
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, revoked.token_id)
    rotated = issue("rotated")
    runtime.tokens.rotate_token(
        world.admin, "project", world.project, rotated.token_id, grace=timedelta(days=1)
    )
    deleted = issue("deleted")
    runtime.tokens.delete_token(world.admin, "project", world.project, deleted.token_id)
    scopes = "read_repository,read_registry"
    expected = {
        plain.token_id: index_scale.TokenFacts(
            plain.token_id,
            "project",
            world.project,
            scopes,
            plain.digest,
            username="deployer",
            expires_at=plain.expires_at,
        ),
        revoked.token_id: index_scale.TokenFacts(
            revoked.token_id,
            "project",
            world.project,
            scopes,
            _row(runtime, revoked.token_id)["digest"],
            revoked_at=now,
            previous_digest="anything",
            previous_valid_until=now,
        ),
        rotated.token_id: index_scale.TokenFacts(
            rotated.token_id,
            "project",
            world.project,
            scopes,
            _row(runtime, rotated.token_id)["digest"],
            previous_digest=rotated.digest,
            previous_valid_until=now + timedelta(days=1),
        ),
        deleted.token_id: index_scale.TokenFacts(
            deleted.token_id,
            "project",
            world.project,
            scopes,
            deleted.digest,
            deleted_at=now,
        ),
    }
    for token_id, facts in expected.items():
        built = dict(
            zip(
                TOKEN_TABLE_COLUMNS,
                index_scale.token_row(facts, created_at=now, creator_id=None, position=0),
                strict=True,
            )
        )
        assert _comparable(built) == _comparable(_row(runtime, token_id))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_fresh_process_holds_many_tokens_in_little_memory(backend: str):
    if backend == "postgres":
        from ..conftest import require_postgres

        require_postgres()
    result = index_scale.run(backend, TOKENS)
    for field in ("backend", "tokens", "index_rss_mb", "ready_s", "decisions_per_s"):
        assert field in result
    assert (result["target_index_rss_mb_at_most"], result["target_ready_s_at_most"]) == (150, 3)
    assert result["live_tokens"] + result["dead_tokens"] == TOKENS
    assert result["dead_tokens"] > TOKENS / 2  # half revoked, and some deleted or expired
    assert result["decisions_per_s"] > 0 and result["unknown_decisions_per_s"] > 0
    assert result["index_rss_mb"] * 1e6 < TOKENS * BOUND_BYTES_PER_TOKEN, result
