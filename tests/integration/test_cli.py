"""The console script on a fresh data folder with no configuration (embedded SQLite): results on stdout in words,
tables or ``--json``, logs on stderr; members from the CLI; no command but ``bootstrap``/``serve`` starts a
store; help that cites nothing outside the repository; the README's CLI lines run as written."""

import argparse
import contextlib
import email
import email.utils
import io
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def run(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``deploy-tokens ARGS`` run in ``cwd`` with only ``env`` of the service's settings, as the console script
    would run it (its entry point is ``cli.main:main``), but in this process: a Python start-up per command
    would cost the suite minutes. ``test_a_configuration_error_is_one_line`` runs the script itself."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_logging = {
        name: (logger.handlers[:], logger.level, logger.propagate)
        for name, logger in (
            ("", root),
            *((n, logging.getLogger(n)) for n in ("gunicorn.error", "gunicorn.access")),
        )
    }
    out, err = io.StringIO(), io.StringIO()
    try:
        for key in [key for key in os.environ if key.startswith("DEPLOY_TOKENS_")]:
            del os.environ[key]
        os.environ.update(env or {})
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exit:  # what the interpreter would do with it
                code = exit.code if isinstance(exit.code, int) else 0 if exit.code is None else 1
                if isinstance(exit.code, str):
                    print(exit.code, file=sys.stderr)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        for name, (handlers, level, propagate) in saved_logging.items():
            logger = logging.getLogger(name or None)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate
    return subprocess.CompletedProcess(["deploy-tokens", *args], code, out.getvalue(), err.getvalue())


def run_process(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script in a process of its own: the whole of its output, its exit status."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    return subprocess.run(
        [str(Path(sys.executable).with_name("deploy-tokens")), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = run(cwd, *args, env=env)
    assert done.returncode == 0, done.stderr
    return done


def test_cli_bootstraps_creates_tokens_and_prints_history(tmp_path: Path):
    boot = ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    assert re.fullmatch(r"glpat-[A-Za-z0-9_-]+", boot.stdout.strip().splitlines()[-1])
    assert (tmp_path / "var" / "deploy-tokens.sqlite3").exists()
    assert oct((tmp_path / "var" / "secret_key").stat().st_mode & 0o777) == "0o600"

    assert (
        ok(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme").stdout
        == "Created group acme (id 2).\n"
    )
    project = ok(tmp_path, "projects", "create", "--name", "Web", "--namespace", "acme")
    assert project.stdout == "Created project acme/web (id 1).\n"
    project_token = ok(
        tmp_path,
        "tokens",
        "create",
        "--project",
        "acme/web",
        "--name",
        "deploy",
        "--scopes",
        "read_repository,read_registry",
        "--expires-at",
        "2099-01-01",
    )
    assert re.fullmatch(r"gldt-[A-Za-z0-9_-]{20,}", project_token.stdout.strip())  # the value alone on stdout
    assert project_token.stderr.splitlines() == [
        "Created deploy token 1 (deploy) for project acme/web:",
        "  gitlab+deploy-token-1, scopes read_repository, read_registry, expires 2099-01-01 00:00 UTC, active",
        "Record the token now: it cannot be shown again.",
    ]
    ok(tmp_path, "tokens", "create", "--group", "acme", "--name", "pkg", "--scopes", "read_package_registry")

    listing = json.loads(ok(tmp_path, "tokens", "list", "--json").stdout)
    assert [(t["id"], t["name"], t["scopes"]) for t in listing] == [
        (1, "deploy", ["read_repository", "read_registry"]),
        (2, "pkg", ["read_package_registry"]),
    ]
    assert listing[0]["expires_at"] == "2099-01-01T00:00:00Z"
    table = ok(tmp_path, "tokens", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "USERNAME", "HOLDER", "SCOPES", "EXPIRES", "STATE"]
    assert table[1].split() == [
        "1",
        "deploy",
        "gitlab+deploy-token-1",
        "project",
        "acme/web",
        "read_repository,read_registry",
        "2099-01-01",
        "00:00",
        "UTC",
        "active",
    ]

    revoked = ok(tmp_path, "tokens", "revoke", "--project", "acme/web", "1")
    assert revoked.stdout == "Revoked deploy token 1 (deploy) of project acme/web.\n"
    assert ok(tmp_path, "tokens", "list", "--active").stdout.splitlines()[1].split()[:2] == ["2", "pkg"]
    history = json.loads(ok(tmp_path, "history", "1").stdout)
    assert [entry["event"] for entry in history] == ["Created", "Scoped", "Revoked"]
    assert history[0]["actor"]["kind"] == "system"


def test_second_bootstrap_is_refused(tmp_path: Path):
    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    again = run(tmp_path, "bootstrap", "--username", "other", "--email", "other@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert again.stdout == ""


def test_validation_errors_are_clear_and_nonzero(tmp_path: Path):
    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    ok(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme")
    bad = run(tmp_path, "tokens", "create", "--group", "acme", "--name", "x", "--scopes", "write_repository")
    assert bad.returncode == 1
    assert "Scopes does not have a valid value" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_commands_refuse_to_run_where_there_is_no_store(tmp_path: Path):
    """A command run from the wrong folder, or with a mistyped data folder, says so instead of starting an
    empty store (with a new secret) and answering from it."""
    for args, env in (
        (("tokens", "list"), {}),
        (("schedule",), {}),
        (("projector",), {}),
        (("worker",), {}),
        (("history", "1"), {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "typo")}),
    ):
        refused = run(tmp_path, *args, env=env)
        assert refused.returncode == 2, (args, refused.stderr)
        assert refused.stdout == ""
        (line,) = refused.stderr.splitlines()
        assert line.startswith("error: no deploy-tokens store in the data folder ")
        assert "deploy-tokens bootstrap" in line
    assert list(tmp_path.iterdir()) == [], "a refused command created files"

    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    assert ok(tmp_path, "tokens", "list").stdout == "No deploy tokens.\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run(elsewhere, "tokens", "list").returncode == 2
    found = ok(elsewhere, "tokens", "list", env={"DEPLOY_TOKENS_DATA_DIR": str(tmp_path / "var")})
    assert found.stdout == "No deploy tokens.\n"


def test_a_configuration_error_is_one_line(tmp_path: Path):
    env = {"DEPLOY_TOKENS_DATABASE_URL": "postgresql://127.0.0.1:5432/x"}  # PostgreSQL needs a shared secret
    for args in (("bootstrap", "--username", "a", "--email", "a@example.com"), ("serve",), ("worker",)):
        done = run_process(tmp_path, *args, env=env)  # the console script's whole output, as a process
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            "configuration error: DEPLOY_TOKENS_SECRET_KEY is required with PostgreSQL: every process must share it"
        ]


def test_the_worker_and_the_scheduler_need_redis(tmp_path: Path):
    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    for process in ("worker", "scheduler"):
        done = run(tmp_path, process)
        assert done.returncode == 2
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"configuration error: DEPLOY_TOKENS_REDIS_URL is required by the {process}")


def test_members_from_the_cli_receive_the_expiry_mails(tmp_path: Path):
    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    ok(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme")
    ok(tmp_path, "projects", "create", "--name", "Web", "--namespace", "acme")
    assert ok(tmp_path, "users", "create", "--username", "alice", "--email", "alice@example.com").stdout == (
        "Created user alice <alice@example.com> (id 3).\n"
    )
    ok(tmp_path, "users", "create", "--username", "bob", "--email", "bob@example.com")
    added = ok(
        tmp_path,
        "projects",
        "members",
        "add",
        "--project",
        "acme/web",
        "--user",
        "alice",
        "--access-level",
        "maintainer",
    )
    assert added.stdout == "Added alice to project acme/web as Maintainer.\n"
    ok(tmp_path, "groups", "members", "add", "--group", "acme", "--user", "bob", "--access-level", "50")
    ok(tmp_path, "projects", "members", "add", "--project", "1", "--user", "4", "--access-level", "developer")

    table = ok(tmp_path, "projects", "members", "list", "--project", "acme/web").stdout.splitlines()
    assert [row.split() for row in table] == [
        ["ID", "USERNAME", "EMAIL", "ROLE", "STATE"],
        ["3", "alice", "alice@example.com", "Maintainer", "active"],
        ["4", "bob", "bob@example.com", "Developer", "active"],
    ]
    group = json.loads(ok(tmp_path, "groups", "members", "list", "--group", "acme", "--json").stdout)
    assert [(m["username"], m["access_level"]) for m in group] == [("bob", 50)]

    twice = run(
        tmp_path,
        "projects",
        "members",
        "add",
        "--project",
        "acme/web",
        "--user",
        "alice",
        "--access-level",
        "guest",
    )
    assert (twice.returncode, twice.stderr.strip()) == (1, "error: Member already exists")
    bad_level = run(
        tmp_path,
        "projects",
        "members",
        "add",
        "--project",
        "acme/web",
        "--user",
        "bob",
        "--access-level",
        "boss",
    )
    assert (
        bad_level.returncode == 2
        and "expected one of guest, reporter, developer, maintainer, owner" in bad_level.stderr
    )
    nobody = run(tmp_path, "projects", "members", "remove", "--project", "acme/web", "--user", "carol")
    assert (nobody.returncode, nobody.stderr.strip()) == (1, "error: user 'carol' not found")
    removed = ok(tmp_path, "projects", "members", "remove", "--project", "acme/web", "--user", "bob")
    assert removed.stdout == "Removed bob from project acme/web.\n"

    # A token 20 days from expiry: the daily scan mails the project's Maintainer and the group's Owner.
    ok(
        tmp_path,
        "tokens",
        "create",
        "--project",
        "acme/web",
        "--name",
        "deploy",
        "--scopes",
        "read_repository",
        "--expires-at",
        "2030-01-21",
    )
    scan = json.loads(ok(tmp_path, "expiry-scan", "--now", "2030-01-01T02:00:00Z").stdout)
    assert scan["emails"] == [{"token_id": 1, "interval": 30, "outcome": "sent"}]
    (mail_file,) = (tmp_path / "var" / "maildir" / "new").iterdir()
    message = email.message_from_bytes(mail_file.read_bytes())
    recipients = sorted(address for _, address in email.utils.getaddresses([message["To"]]))
    assert recipients == ["alice@example.com", "bob@example.com"]

    schedule = ok(tmp_path, "schedule").stdout
    assert "Scheduler:   in-process (deploy-tokens serve; no DEPLOY_TOKENS_REDIS_URL)" in schedule
    assert "tokens examined 1, expired 0" in schedule
    assert "mails due 1: sent 1, no one to mail 0, not needed 0, failed attempts 0" in schedule
    status = json.loads(ok(tmp_path, "schedule", "--json").stdout)
    assert status["shape"] == "embedded"
    assert (status["last_run"]["source"], status["last_run"]["status"], status["last_run"]["mails_sent"]) == (
        "cli",
        "succeeded",
        1,
    )
    assert status["last_success"]["scan_id"] == status["last_run"]["scan_id"]


def test_logs_go_to_stderr_and_only_when_asked(tmp_path: Path):
    ok(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    ok(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme")
    quiet = ok(tmp_path, "tokens", "create", "--group", "acme", "--name", "a", "--scopes", "read_repository")
    assert "{" not in quiet.stderr  # no JSON log line among the words
    chatty = run(
        tmp_path,
        *("tokens", "create", "--group", "acme", "--name", "b", "--scopes", "read_repository"),
        env={"DEPLOY_TOKENS_LOG_LEVEL": "INFO"},
    )
    assert chatty.returncode == 0
    logs = [json.loads(line) for line in chatty.stderr.splitlines() if line.startswith("{")]
    assert any(entry["message"] == "deploy token created" for entry in logs)
    assert re.fullmatch(r"gldt-[A-Za-z0-9_-]+\n", chatty.stdout)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


def test_help_cites_nothing_outside_the_repository():
    texts = [parser.format_help() for parser in _parsers(build_parser())]
    assert len(texts) > 30
    for text in texts:
        assert not re.search(r"spec(ification)?\b|SPEC|§|shared/|https?://", text, re.IGNORECASE), text
        for cited in re.findall(r"\b[\w./-]+\.(?:md|py)\b", text):
            assert (ROOT / cited).exists(), f"help cites {cited}, which is not in the repository"


def readme_cli_lines() -> list[list[str]]:
    """The commands of the README's "First steps with the CLI" block, as a shell would split them."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## First steps with the CLI\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "deploy-tokens":
            commands.append(words[1:])
    return commands


def test_the_readme_cli_lines_run_as_written(tmp_path: Path):
    commands = readme_cli_lines()
    assert len(commands) >= 15
    for args in commands:
        done = run(tmp_path, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr
