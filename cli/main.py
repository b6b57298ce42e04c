"""deploy-tokens: issue, check, expire, revoke and audit deploy tokens (README.md, "First steps with the CLI").

Administrative commands act directly on the store that the DEPLOY_TOKENS_* settings select, as the operator:
they are recorded with a system actor named after the OS user (cli:<user>). Results go to stdout, in words or
tables (--json where a program reads them); logs and progress go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cli import directory, operations
from cli.output import holder, holder_name, json_option, operator, print_json, print_table, resolve
from deploy_tokens.runtime import Runtime
from domain.clock import FixedClock, as_utc
from domain.deploy_token import HolderKind
from domain.errors import DomainError
from infrastructure.logs import configure_logging
from infrastructure.settings import DEFAULT_HOST, DEFAULT_PORT, ConfigurationError, Settings
from projections.access import Action
from projections.credentials import TokenRecord

# Commands that may start a new embedded store; every other one refuses to run where there is none (a typo in
# the folder would otherwise create an empty store, with a new secret, and answer from it).
CREATES_STORE = frozenset({"bootstrap", "serve"})
# Commands that run for as long as the process lives: they log at DEPLOY_TOKENS_LOG_LEVEL (INFO by default);
# one-shot commands log warnings and errors only, unless DEPLOY_TOKENS_LOG_LEVEL says otherwise.
LONG_RUNNING = frozenset({"serve", "projector", "worker", "scheduler", "audit-streamer"})


def token_fields(record: TokenRecord, now: datetime) -> dict[str, Any]:
    """GitLab's deploy-token fields, exactly: id, name, username, expires_at, scopes, revoked, expired."""
    return {
        "id": record.token_id,
        "name": record.name,
        "username": record.username,
        "expires_at": record.expires_at.isoformat().replace("+00:00", "Z") if record.expires_at else None,
        "scopes": list(record.scopes),
        "revoked": record.revoked,
        "expired": record.is_expired(now),
    }


def _parse_expiry(text: str | None) -> date | datetime | None:
    if not text:
        return None
    try:
        if "T" in text or " " in text:
            return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"error: --expires-at must be an ISO 8601 date or datetime, got {text!r}") from None


# Commands ------------------------------------------------------------------------------------------------


def cmd_bootstrap(runtime: Runtime, args: argparse.Namespace) -> int:
    user, issued = runtime.directory.bootstrap_admin(username=args.username, email=args.email)
    print(f"Created administrator {user.username} (id {user.user_id}).", file=sys.stderr)
    print("Its personal access token follows; it is shown only now.", file=sys.stderr)
    print(issued.value)
    return 0


def _describe(record: TokenRecord, now: datetime) -> str:
    expires = "never expires" if record.expires_at is None else f"expires {_utc(record.expires_at)}"
    return f"{record.username}, scopes {', '.join(record.scopes)}, {expires}, {record.state(now)}"


def _utc(moment: datetime) -> str:
    return as_utc(moment).strftime("%Y-%m-%d %H:%M UTC")


def cmd_token_create(runtime: Runtime, args: argparse.Namespace) -> int:
    holder_kind, holder_id = holder(args, runtime)
    scopes = [scope for part in args.scopes for scope in part.split(",") if scope]
    issued = runtime.tokens.create_token(
        operator(),
        holder_kind,
        holder_id,
        name=args.name,
        scopes=scopes,
        expires_at=_parse_expiry(args.expires_at),
        username=args.username,
    )
    record = issued.token
    where = holder_name(runtime, holder_kind, holder_id)
    print(f"Created deploy token {record.token_id} ({record.name}) for {where}:", file=sys.stderr)
    print(f"  {_describe(record, runtime.clock.now())}", file=sys.stderr)
    print("Record the token now: it cannot be shown again.", file=sys.stderr)
    print(issued.value)
    return 0


def cmd_token_list(runtime: Runtime, args: argparse.Namespace) -> int:
    now = runtime.clock.now()
    if args.project is None and args.group is None:
        page = runtime.read.tokens(
            holder_kind=None, holder_id=None, active_only=args.active, now=now, per_page=args.limit
        )
    else:
        holder_kind, holder_id = holder(args, runtime)
        page = runtime.read.tokens(
            holder_kind=holder_kind,
            holder_id=holder_id,
            active_only=args.active,
            now=now,
            per_page=args.limit,
        )
    if args.json:
        print_json([token_fields(record, now) for record in page.items])
        return 0
    rows = [
        (
            record.token_id,
            record.name,
            record.username,
            f"{record.holder_kind} {_holder_path(runtime, record)}",
            ",".join(record.scopes),
            "never" if record.expires_at is None else _utc(record.expires_at),
            "revoked" if record.revoked else ("expired" if record.is_expired(now) else "active"),
        )
        for record in page.items
    ]
    print_table(
        ("id", "name", "username", "holder", "scopes", "expires", "state"), rows, empty="No deploy tokens."
    )
    return 0


def _holder_path(runtime: Runtime, record: TokenRecord) -> str:
    kind: HolderKind = "project" if record.holder_kind == "project" else "group"
    return holder_name(runtime, kind, record.holder_id).split(" ", 1)[1]


def cmd_token_revoke(runtime: Runtime, args: argparse.Namespace) -> int:
    holder_kind, holder_id = holder(args, runtime)
    record = runtime.tokens.revoke_token(operator(), holder_kind, holder_id, args.token_id)
    where = holder_name(runtime, holder_kind, holder_id)
    print(f"Revoked deploy token {record.token_id} ({record.name}) of {where}.")
    return 0


def cmd_token_delete(runtime: Runtime, args: argparse.Namespace) -> int:
    holder_kind, holder_id = holder(args, runtime)
    runtime.tokens.delete_token(operator(), holder_kind, holder_id, args.token_id)
    print(f"Deleted deploy token {args.token_id} of {holder_name(runtime, holder_kind, holder_id)}.")
    return 0


def cmd_history(runtime: Runtime, args: argparse.Namespace) -> int:
    print_json(runtime.tokens.history(args.token_id))
    return 0


def cmd_projections_status(runtime: Runtime, args: argparse.Namespace) -> int:
    rows = runtime.projector.status()
    for row in rows:
        print(f"{row.name:<20} position {row.position:>10}  head {row.head:>10}  lag {row.lag}")
    return 0


def cmd_projections_rebuild(runtime: Runtime, args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list(runtime.projector.projections)
    for name in names:
        if name not in runtime.projector.projections:
            raise SystemExit(
                f"error: unknown projection {name!r}; known: {', '.join(runtime.projector.projections)}"
            )

        def progress(position: int, head: int, name: str = name) -> None:
            width = 40
            done = int(width * position / head) if head else width
            sys.stderr.write(f"\r{name:<20} [{'#' * done}{'.' * (width - done)}] {position}/{head}")
            sys.stderr.flush()

        applied = runtime.projector.rebuild(name, progress)
        sys.stderr.write("\n")
        print(f"{name}: rebuilt from {applied} events")
    return 0


def _instant(text: str) -> datetime:
    try:
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise SystemExit(f"error: expected an ISO 8601 instant, got {text!r}") from None


def cmd_token_state(runtime: Runtime, args: argparse.Namespace) -> int:
    from projections.point_in_time import token_state_at

    print_json(token_state_at(runtime.store, args.token_id, _instant(args.at)).as_dict())
    return 0


def cmd_who_could(runtime: Runtime, args: argparse.Namespace) -> int:
    from projections.point_in_time import who_could

    project: int | str = int(args.project) if args.project.isdigit() else args.project
    answers = who_could(runtime.store, action=Action(args.action), project=project, at=_instant(args.at))
    print_json([answer.as_dict() for answer in answers])
    return 0


def cmd_export(runtime: Runtime, args: argparse.Namespace) -> int:
    """Stream an export to a file and write its manifest beside it (``FILE.manifest.json``)."""
    from deploy_tokens.exports import Export, ExportRequest

    runtime.projector.catch_up()
    namespace_kind, namespace_id = None, None
    if args.project or args.group:
        namespace_kind = "project" if args.project else "group"
        namespace_id = resolve(runtime, namespace_kind, args.project or args.group)
    request = ExportRequest(
        dataset=args.dataset,
        format=args.format,
        token_id=args.token_id,
        namespace_kind=namespace_kind,
        namespace_id=namespace_id,
        since=_instant(args.since) if args.since else None,
        until=_instant(args.until) if args.until else None,
        upto=args.upto,
        actor_username=args.actor,
        event_type=args.event_type,
    )
    try:
        export = Export(runtime.db, request, runtime.keys.chain_key)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    total = export.count()

    def progress(rows: int) -> None:
        width = 40
        done = int(width * rows / total) if total else width
        sys.stderr.write(f"\rexport [{'#' * done}{'.' * (width - done)}] {rows}/{total} rows")
        sys.stderr.flush()

    output = Path(args.output)
    with output.open("wb") as handle:
        for chunk in export.chunks(progress):
            handle.write(chunk)
    sys.stderr.write("\n")
    manifest_path = output.with_name(output.name + ".manifest.json")
    manifest_path.write_text(export.manifest.as_json() + "\n")
    print(manifest_path)
    return 0


def cmd_audit_verify(runtime: Runtime, args: argparse.Namespace) -> int:
    """Recompute the hash chain over the stored log; exit 1 and name the first bad position if tampered."""
    from projections.chain_queries import parse_head, verify

    runtime.projector.catch_up()
    expected = parse_head(Path(args.head).read_text()) if args.head else None
    result = verify(
        runtime.db,
        runtime.store.recorder.select_notifications,
        runtime.keys.chain_key,
        expected_head=expected,
    )
    print_json(result.as_dict())
    return 0 if result.ok else 1


def cmd_audit_export_log(runtime: Runtime, args: argparse.Namespace) -> int:
    """The stored log up to the chain head, plus the head, for an auditor to verify with no access to us."""
    from projections.chain_queries import chain_head, export_head, log_lines

    runtime.projector.catch_up()
    head = chain_head(runtime.db, runtime.keys.chain_key)
    output = Path(args.output)
    with output.open("w") as handle:
        for line in log_lines(runtime.store.recorder.select_notifications, upto=head.position):
            handle.write(line + "\n")
    head_path = output.with_name(output.name + ".head.json")
    head_path.write_text(export_head(head) + "\n")
    print(head_path)
    return 0


def cmd_audit_verify_file(runtime: Runtime | None, args: argparse.Namespace) -> int:
    from projections.chain_queries import parse_head, verify_log_lines

    with Path(args.log).open() as lines:
        result = verify_log_lines(lines, parse_head(Path(args.head).read_text()))
    print_json(result.as_dict())
    return 0 if result.ok else 1


def cmd_audit_head(runtime: Runtime, args: argparse.Namespace) -> int:
    """Print the chain head (position, chain hash, signature) for an auditor to keep."""
    from projections.chain_queries import chain_head, export_head

    runtime.projector.catch_up()
    print(export_head(chain_head(runtime.db, runtime.keys.chain_key)))
    return 0


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Runs without an opened runtime here: the serving process opens its own after forking."""
    from cli.serve import serve

    serve(settings, bind=_serve_bind(settings, args.host, args.port))
    return 0


def _serve_bind(settings: Settings, host: str | None, port: int | None) -> str:
    """``--host``/``--port`` over the settings' bind address (``DEPLOY_TOKENS_BIND``, ``PORT``)."""
    if host is None and port is None:
        return settings.bind
    default_host, default_port = DEFAULT_HOST, DEFAULT_PORT
    if not settings.bind.startswith("unix:"):
        configured_host, _, configured_port = settings.bind.rpartition(":")
        default_host, default_port = configured_host.strip("[]"), int(configured_port)
    chosen = host or default_host
    return f"[{chosen}]:{port or default_port}" if ":" in chosen else f"{chosen}:{port or default_port}"


# Parser --------------------------------------------------------------------------------------------------


def _holder_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--project", help="project id or full path")
    group.add_argument("--group", help="group id or full path")


def build_parser() -> argparse.ArgumentParser:
    assert __doc__ is not None
    summary, _, details = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(
        prog="deploy-tokens",
        description=summary,
        epilog=details.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="the all-in-one service: API, projector and daily scan in one process (make run)"
    )
    serve.add_argument(
        "--host",
        help="address to listen on (default: DEPLOY_TOKENS_BIND's, else 127.0.0.1: this machine only)",
    )
    serve.add_argument("--port", type=int, help="port to listen on (default: PORT, else 8080)")
    serve.set_defaults(handler=cmd_serve, opens="settings")

    bootstrap = commands.add_parser("bootstrap", help="create the first admin; prints its access token last")
    bootstrap.add_argument("--username", required=True)
    bootstrap.add_argument("--email", required=True)
    bootstrap.set_defaults(handler=cmd_bootstrap)

    tokens = commands.add_parser("tokens", help="create, list, revoke and delete deploy tokens")
    token_commands = tokens.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="issue a token; prints its value last, once")
    _holder_options(create)
    create.add_argument("--name", required=True)
    create.add_argument("--scopes", required=True, action="append", help="comma-separated; may repeat")
    create.add_argument("--expires-at", help="ISO 8601 date (expires 00:00 UTC) or datetime")
    create.add_argument("--username", help="custom username (default gitlab+deploy-token-{id})")
    create.set_defaults(handler=cmd_token_create)
    listing = token_commands.add_parser("list", help="list tokens of a project, a group, or all")
    _holder_options(listing, required=False)
    listing.add_argument("--active", action="store_true", help="only tokens neither revoked nor expired")
    listing.add_argument("--limit", type=int, default=100)
    json_option(listing)
    listing.set_defaults(handler=cmd_token_list)
    for name, handler, help_text in (
        ("revoke", cmd_token_revoke, "revoke a token (idempotent)"),
        ("delete", cmd_token_delete, "delete a token (its history stays)"),
    ):
        sub = token_commands.add_parser(name, help=help_text)
        _holder_options(sub)
        sub.add_argument("token_id", type=int)
        sub.set_defaults(handler=handler)

    history = commands.add_parser("history", help="a token's full event history, as JSON")
    history.add_argument("token_id", type=int)
    history.set_defaults(handler=cmd_history)

    directory.add_parsers(commands)

    projections = commands.add_parser("projections", help="read-model status and rebuilds")
    projection_commands = projections.add_subparsers(dest="projection_command", required=True)
    projection_commands.add_parser(
        "status", help="each projection's position against the log head"
    ).set_defaults(handler=cmd_projections_status)
    rebuild = projection_commands.add_parser("rebuild", help="rebuild from event 0, in batches")
    rebuild.add_argument("name", nargs="?", help="one projection (default: all of them)")
    rebuild.set_defaults(handler=cmd_projections_rebuild)
    operations.add_parsers(commands)

    audit = commands.add_parser("audit", help="tamper evidence: the hash chain over the event log")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="recompute the chain; name the first modified position")
    verify.add_argument(
        "--head", help="a chain head exported earlier (JSON file) that the log must still match"
    )
    verify.set_defaults(handler=cmd_audit_verify)
    audit_commands.add_parser("head", help="print the signed chain head to keep").set_defaults(
        handler=cmd_audit_head
    )

    export = commands.add_parser("export", help="compliance export (CSV or JSON Lines) with a manifest")
    export.add_argument("--dataset", choices=["lifecycle", "usage", "usage_set_aside"], required=True)
    export.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    export.add_argument(
        "--output", required=True, help="file to write; the manifest goes to FILE.manifest.json"
    )
    export.add_argument("--token-id", type=int)
    export_namespace = export.add_mutually_exclusive_group()
    export_namespace.add_argument("--project", help="only tokens held by this project (id or full path)")
    export_namespace.add_argument("--group", help="only tokens held by this group (id or full path)")
    export.add_argument("--since", help="ISO 8601 instant, inclusive")
    export.add_argument("--until", help="ISO 8601 instant, exclusive")
    export.add_argument("--actor", help="lifecycle only: events by this username")
    export.add_argument(
        "--event-type", help="lifecycle only: events of this audit type (deploy_token_revoked, ...)"
    )
    export.add_argument(
        "--upto", type=int, help="last row key included (from an earlier manifest), to reproduce it"
    )
    export.set_defaults(handler=cmd_export)

    export_log = audit_commands.add_parser(
        "export-log", help="the stored log and its chain head, to verify offline"
    )
    export_log.add_argument("--output", required=True)
    export_log.set_defaults(handler=cmd_audit_export_log)
    verify_file = audit_commands.add_parser(
        "verify-file", help="offline: check an exported log against a kept chain head (no database needed)"
    )
    verify_file.add_argument("log")
    verify_file.add_argument("--head", required=True)
    verify_file.set_defaults(handler=cmd_audit_verify_file, opens="nothing")

    state = commands.add_parser("token-state", help="a token's state as of a past instant, by replay")
    state.add_argument("token_id", type=int)
    state.add_argument("--at", required=True, help="ISO 8601 instant (UTC when no offset)")
    state.set_defaults(handler=cmd_token_state)

    could = commands.add_parser(
        "who-could", help="which tokens could do ACTION on PROJECT at an instant, and who created them"
    )
    could.add_argument("--project", required=True, help="project id or full path")
    could.add_argument("--action", required=True, choices=[a.value for a in Action if a is not Action.API])
    could.add_argument("--at", required=True, help="ISO 8601 instant (UTC when no offset)")
    could.set_defaults(handler=cmd_who_could)

    return parser


def _missing_store(args: argparse.Namespace) -> str | None:
    """Why this command must not run here (no embedded store, and it would not create one), or None."""
    if args.command in CREATES_STORE or getattr(args, "opens", "runtime") == "nothing":
        return None
    try:
        data_dir, database = Settings.locate()
    except ConfigurationError:
        return None  # reported by Settings.from_env, with the variable's name
    if not database.store_missing:
        return None
    where = (
        f"the data folder {data_dir}"
        if database.sqlite_path is not None and database.sqlite_path.parent == data_dir
        else f"{database.sqlite_path}"
    )
    return (
        f"error: no deploy-tokens store in {where} (DEPLOY_TOKENS_DATA_DIR, default ./var of the current "
        "directory). Run this where the service keeps its data, set DEPLOY_TOKENS_DATA_DIR or "
        "DEPLOY_TOKENS_DATABASE_URL, or create a store with `deploy-tokens bootstrap`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    refusal = _missing_store(args)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
    except ConfigurationError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    one_shot = args.command not in LONG_RUNNING and not settings.log_level_set
    configure_logging("WARNING" if one_shot else settings.log_level)
    opens = getattr(args, "opens", "runtime")
    try:
        if opens == "nothing":  # offline: needs no database
            offline: int = args.handler(None, args)
            return offline
        if opens == "settings":
            direct: int = args.handler(settings, args)
            return direct
        clock = None
        if getattr(args, "now", None):
            try:
                clock = FixedClock(as_utc(datetime.fromisoformat(args.now.replace("Z", "+00:00"))))
            except (ValueError, OverflowError):  # OverflowError: no such instant in UTC (year 9999, -01:00)
                print(f"error: --now must be an ISO 8601 instant, got {args.now!r}", file=sys.stderr)
                return 2
        runtime = Runtime.open(settings, clock=clock)
        try:
            status: int = args.handler(runtime, args)
            return status
        finally:
            runtime.close()
    except DomainError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ConfigurationError as error:  # a setting only this command needs
        print(f"configuration error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
