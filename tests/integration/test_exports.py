"""Compliance exports: streamed, reproducible, with a manifest whose SHA-256 matches the content."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime

from deploy_tokens.activity import ActivityEvent
from deploy_tokens.exports import Export, ExportRequest
from deploy_tokens.runtime import Runtime

from ..conftest import World


def _world_with_activity(runtime: Runtime) -> tuple[World, int, int]:
    world = World(runtime)
    service = runtime.service
    first = service.create_token(
        world.admin, "project", world.project, name="a", scopes=["read_repository"]
    ).token
    second = service.create_token(world.admin, "group", world.top, name="b", scopes=["read_registry"]).token
    service.revoke_token(world.admin, "project", world.project, first.token_id)
    for number in range(7):
        token = first if number % 2 else second
        runtime.activity.record(
            ActivityEvent(
                occurred_at=datetime(2026, 1, 10, 12, number, tzinfo=UTC),
                token_id=token.token_id,
                token_ref=None,
                endpoint="auth_request",
                action="git_read",
                resource_kind="project",
                resource_ref="acme/api",
                allowed=bool(number % 3),
                reason="allowed" if number % 3 else "revoked",
                status=200,
                client_addr="192.0.2.9",
                user_agent="git/2.39",
            )
        )
    runtime.activity.flush()
    return world, first.token_id, second.token_id


def _run(runtime: Runtime, request: ExportRequest) -> tuple[bytes, Export]:
    export = Export(runtime.db, request, runtime.keys.chain_key)
    content = b"".join(export.chunks())
    return content, export


def test_manifest_hash_and_count_match_the_content(runtime: Runtime):
    _world_with_activity(runtime)
    content, export = _run(runtime, ExportRequest("usage", "csv"))
    manifest = export.manifest
    assert manifest.sha256 == hashlib.sha256(content).hexdigest()
    assert manifest.bytes == len(content)
    rows = list(csv.reader(io.StringIO(content.decode())))
    assert rows[0][:3] == ["id", "occurred_at", "token_id"]
    assert manifest.rows == len(rows) - 1 == 7
    assert manifest.chain_head["position"] == runtime.store.head()


def test_re_running_with_the_manifest_bound_gives_the_same_bytes(runtime: Runtime):
    world, _, _ = _world_with_activity(runtime)
    content, export = _run(runtime, ExportRequest("lifecycle", "jsonl"))
    runtime.service.create_group(world.admin, name="Z", path="z")
    again, _ = _run(runtime, ExportRequest("lifecycle", "jsonl", upto=export.manifest.upto))
    assert again == content
    grown, _ = _run(runtime, ExportRequest("lifecycle", "jsonl"))
    assert grown != content


def test_filters_by_token_and_namespace(runtime: Runtime):
    world, first, second = _world_with_activity(runtime)
    content, export = _run(runtime, ExportRequest("usage", "jsonl", token_id=first))
    rows = [json.loads(line) for line in content.decode().splitlines()]
    assert {row["token_id"] for row in rows} == {first} and export.manifest.rows == 3
    by_group, _ = _run(
        runtime, ExportRequest("usage", "jsonl", namespace_kind="group", namespace_id=world.top)
    )
    assert {json.loads(line)["token_id"] for line in by_group.decode().splitlines()} == {second}
    lifecycle, _ = _run(runtime, ExportRequest("lifecycle", "jsonl", token_id=first))
    types = [json.loads(line)["event_type"] for line in lifecycle.decode().splitlines()]
    assert types == ["deploy_token_created", "deploy_token_scoped", "deploy_token_revoked"]


def test_time_range_is_half_open(runtime: Runtime):
    _world_with_activity(runtime)
    request = ExportRequest(
        "usage",
        "jsonl",
        since=datetime(2026, 1, 10, 12, 2, tzinfo=UTC),
        until=datetime(2026, 1, 10, 12, 5, tzinfo=UTC),
    )
    content, export = _run(runtime, request)
    minutes = [json.loads(line)["occurred_at"][14:16] for line in content.decode().splitlines()]
    assert minutes == ["02", "03", "04"]
    assert export.manifest.filters["since"].startswith("2026-01-10T12:02")


def test_exports_hold_no_token_values(runtime: Runtime):
    world = World(runtime)
    value = runtime.service.create_token(
        world.admin, "project", world.project, name="s", scopes=["read_repository"]
    ).value
    for dataset in ("lifecycle", "usage"):
        for kind in ("csv", "jsonl"):
            content, _ = _run(runtime, ExportRequest(dataset, kind))  # type: ignore[arg-type]
            assert value.encode() not in content


def test_set_aside_activity_rows_are_exported_for_auditors(runtime: Runtime):
    _, first, _ = _world_with_activity(runtime)
    unwritable = ActivityEvent(
        occurred_at=datetime(2026, 1, 10, 13, 0, tzinfo=UTC),
        token_id=2**63,  # beyond BIGINT: this row cannot be stored as it is
        token_ref=None,
        endpoint="auth_request",
        action="git_read",
        resource_kind="project",
        resource_ref="acme/api",
        allowed=False,
        reason="unknown_token",
        status=401,
        client_addr="192.0.2.9",
        user_agent="git/2.39",
    )
    runtime.activity.record(unwritable)
    runtime.activity.flush()
    content, export = _run(runtime, ExportRequest("usage_set_aside", "jsonl"))
    rows = [json.loads(line) for line in content.decode().splitlines()]
    assert export.manifest.rows == 1
    assert [sorted(row) for row in rows] == [["error", "id", "row_json", "set_aside_at"]]
    assert json.loads(rows[0]["row_json"])["token_id"] == 2**63
    try:
        Export(runtime.db, ExportRequest("usage_set_aside", token_id=first), runtime.keys.chain_key)
    except ValueError as error:
        assert "time only" in str(error)
    else:
        raise AssertionError("a token filter on set-aside rows must be refused")
