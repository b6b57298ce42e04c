"""Directory commands of the console script: users, groups, projects and their members.

Members decide who is mailed before a project's deploy token expires (its Owners and Maintainers, directly
or through a group, docs/behaviour.md [notifications]); the rules on who may add whom are the service's
(``deploy_tokens/members.py``), applied here to the operator, who holds every role.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.output import holder_name, json_option, operator, print_json, print_table, resolve, user
from deploy_tokens.runtime import Runtime
from domain.deploy_token import HolderKind
from domain.membership import AccessLevel

LEVELS = {level.name.lower(): int(level) for level in AccessLevel if level is not AccessLevel.NO_ACCESS}


def access_level(text: str) -> int:
    """``guest``, ``reporter``, ``developer``, ``maintainer``, ``owner`` or GitLab's number (10 to 50)."""
    key = text.strip().lower()
    if key in LEVELS:
        return LEVELS[key]
    if key.isascii() and key.isdigit() and int(key) in LEVELS.values():
        return int(key)
    raise argparse.ArgumentTypeError(
        f"expected one of {', '.join(LEVELS)} (or 10, 20, 30, 40, 50), got {text!r}"
    )


def level_name(level: int) -> str:
    try:
        return AccessLevel(level).name.capitalize()
    except ValueError:
        return str(level)


# Users ----------------------------------------------------------------------------------------------------


def cmd_user_create(runtime: Runtime, args: argparse.Namespace) -> int:
    created = runtime.directory.register_user(
        operator(),
        username=args.username,
        email=args.email,
        name=args.name,
        is_admin=args.admin,
        is_auditor=args.auditor,
    )
    roles = [role for role, held in (("administrator", args.admin), ("auditor", args.auditor)) if held]
    role = " and ".join(roles) or "user"
    print(f"Created {role} {created.username} <{created.email}> (id {created.user_id}).")
    return 0


def cmd_user_list(runtime: Runtime, args: argparse.Namespace) -> int:
    users = runtime.read.users()
    auditors = runtime.directory.auditor_ids(u.user_id for u in users)
    if args.json:
        print_json(
            [
                {
                    "id": u.user_id,
                    "username": u.username,
                    "name": u.name,
                    "email": u.email,
                    "is_admin": u.is_admin,
                    "is_auditor": u.user_id in auditors,
                    "state": u.state,
                }
                for u in users
            ]
        )
        return 0
    rows = [
        (
            u.user_id,
            u.username,
            u.email,
            "yes" if u.is_admin else "",
            "yes" if u.user_id in auditors else "",
            u.state,
        )
        for u in users
    ]
    print_table(("id", "username", "email", "admin", "auditor", "state"), rows, empty="No users.")
    return 0


# Groups and projects ----------------------------------------------------------------------------------------


def cmd_group_create(runtime: Runtime, args: argparse.Namespace) -> int:
    parent = resolve(runtime, "group", args.parent) if args.parent else None
    group_id = runtime.directory.create_group(operator(), name=args.name, path=args.path, parent_id=parent)
    print(f"Created {holder_name(runtime, 'group', group_id)} (id {group_id}).")
    return 0


def cmd_project_create(runtime: Runtime, args: argparse.Namespace) -> int:
    namespace = resolve(runtime, "group", args.namespace)
    project_id = runtime.directory.create_project(
        operator(), name=args.name, path=args.path, namespace_id=namespace
    )
    print(f"Created {holder_name(runtime, 'project', project_id)} (id {project_id}).")
    return 0


# Members --------------------------------------------------------------------------------------------------


def _source(runtime: Runtime, args: argparse.Namespace) -> tuple[HolderKind, int]:
    kind: HolderKind = args.source_kind
    return kind, resolve(runtime, kind, getattr(args, kind))


def cmd_member_add(runtime: Runtime, args: argparse.Namespace) -> int:
    kind, source_id = _source(runtime, args)
    member = user(runtime, args.user)
    runtime.members.add_member(operator(), kind, source_id, member.user_id, args.access_level)
    where = holder_name(runtime, kind, source_id)
    print(f"Added {member.username} to {where} as {level_name(args.access_level)}.")
    return 0


def cmd_member_list(runtime: Runtime, args: argparse.Namespace) -> int:
    kind, source_id = _source(runtime, args)
    members = runtime.members.members(operator(), kind, source_id)
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "id": u.user_id,
                "username": u.username,
                "email": u.email,
                "access_level": m.access_level,
                "state": u.state,
            }
            for m, u in members
        ]
        print_json(rows)
        return 0
    table = [(u.user_id, u.username, u.email, level_name(m.access_level), u.state) for m, u in members]
    empty = f"No direct members of {holder_name(runtime, kind, source_id)}."
    print_table(("id", "username", "email", "role", "state"), table, empty=empty)
    return 0


def cmd_member_remove(runtime: Runtime, args: argparse.Namespace) -> int:
    kind, source_id = _source(runtime, args)
    member = user(runtime, args.user)
    runtime.members.remove_member(operator(), kind, source_id, member.user_id)
    print(f"Removed {member.username} from {holder_name(runtime, kind, source_id)}.")
    return 0


def _members_parser(commands: Any, kind: HolderKind) -> None:
    members = commands.add_parser(
        "members", help=f"the {kind}'s direct members (Owners and Maintainers get expiry mails)"
    )
    member_commands = members.add_subparsers(dest=f"{kind}_member_command", required=True)
    add = member_commands.add_parser("add", help=f"add a user to the {kind} with a role")
    listing = member_commands.add_parser("list", help=f"the {kind}'s direct members")
    remove = member_commands.add_parser("remove", help=f"remove a user from the {kind}")
    for sub in (add, listing, remove):
        sub.add_argument(f"--{kind}", required=True, help=f"{kind} id or full path")
        sub.set_defaults(source_kind=kind)
    for sub in (add, remove):
        sub.add_argument("--user", required=True, help="user id or username")
    add.add_argument(
        "--access-level",
        required=True,
        type=access_level,
        help="guest, reporter, developer, maintainer or owner (or 10 to 50)",
    )
    json_option(listing)
    add.set_defaults(handler=cmd_member_add)
    listing.set_defaults(handler=cmd_member_list)
    remove.set_defaults(handler=cmd_member_remove)


def add_parsers(commands: Any) -> None:
    """``users``, ``groups`` and ``projects`` with their subcommands."""
    users = commands.add_parser("users", help="directory: users (members of groups and projects)")
    user_commands = users.add_subparsers(dest="user_command", required=True)
    create = user_commands.add_parser("create", help="register a user")
    create.add_argument("--username", required=True)
    create.add_argument("--email", required=True, help="where expiry mails go")
    create.add_argument("--name", help="display name (default: the username)")
    create.add_argument("--admin", action="store_true", help="an instance administrator")
    create.add_argument(
        "--auditor", action="store_true", help="reads every audit record and token, changes nothing"
    )
    create.set_defaults(handler=cmd_user_create)
    listing = user_commands.add_parser("list", help="every user")
    json_option(listing)
    listing.set_defaults(handler=cmd_user_list)

    groups = commands.add_parser("groups", help="directory: groups and their members")
    group_commands = groups.add_subparsers(dest="group_command", required=True)
    group_create = group_commands.add_parser("create", help="create a group (or a subgroup with --parent)")
    group_create.add_argument("--name", required=True)
    group_create.add_argument("--path", required=True)
    group_create.add_argument("--parent", help="parent group id or full path")
    group_create.set_defaults(handler=cmd_group_create)
    _members_parser(group_commands, "group")

    projects = commands.add_parser("projects", help="directory: projects and their members")
    project_commands = projects.add_subparsers(dest="project_command", required=True)
    project_create = project_commands.add_parser("create", help="create a project in a group")
    project_create.add_argument("--name", required=True)
    project_create.add_argument("--path", help="default: from the name")
    project_create.add_argument("--namespace", required=True, help="group id or full path")
    project_create.set_defaults(handler=cmd_project_create)
    _members_parser(project_commands, "project")
