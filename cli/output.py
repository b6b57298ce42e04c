"""What every command of the console script shares: the operator it acts as, how it names projects, groups and
users, and how it prints (sentences and tables for people on stdout, ``--json`` for programs)."""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from deploy_tokens.runtime import Runtime
from domain.actors import Actor
from domain.deploy_token import HolderKind
from projections.directory import UserRecord


def operator() -> Actor:
    """Administrative commands act as the operator, recorded as ``cli:<os user>``."""
    return Actor.system(f"cli:{getpass.getuser()}")


def _json_default(value: object) -> str:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=_json_default))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, empty: str) -> None:
    """Columns aligned on the widest cell; ``empty`` (a sentence) when there is no row."""
    if not rows:
        print(empty)
        return
    cells = [[str(header).upper() for header in headers]]
    cells += [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def resolve(runtime: Runtime, kind: str, reference: str) -> int:
    """Projects and groups are named by id or by full path, as in the API."""
    if reference.isdigit():
        return int(reference)
    if kind == "project":
        project = runtime.read.project_by_path(reference)
        if project is None:
            raise SystemExit(f"error: project {reference!r} not found")
        return project.project_id
    namespace = runtime.read.namespace_by_path(reference)
    if namespace is None or namespace.kind != "group":
        raise SystemExit(f"error: group {reference!r} not found")
    return namespace.namespace_id


def holder(args: argparse.Namespace, runtime: Runtime) -> tuple[HolderKind, int]:
    """The project or group that ``--project``/``--group`` names."""
    if args.project is not None:
        return "project", resolve(runtime, "project", args.project)
    return "group", resolve(runtime, "group", args.group)


def holder_name(runtime: Runtime, kind: HolderKind, holder_id: int) -> str:
    """``project acme/web`` or ``group acme`` (the id when the path is not known)."""
    if kind == "project":
        project = runtime.read.project(holder_id)
        return f"project {project.full_path if project else holder_id}"
    namespace = runtime.read.namespace(holder_id)
    return f"group {namespace.full_path if namespace else holder_id}"


def user(runtime: Runtime, reference: str) -> UserRecord:
    """A user by id or username."""
    found = (
        runtime.read.user(int(reference)) if reference.isdigit() else runtime.read.user_by_username(reference)
    )
    if found is None:
        raise SystemExit(f"error: user {reference!r} not found")
    return found


def json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
