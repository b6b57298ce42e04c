"""The console script on a fresh data folder with no configuration (embedded SQLite)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("DEPLOY_TOKENS_")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_bootstraps_creates_tokens_and_prints_history(tmp_path: Path):
    boot = run(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    assert boot.returncode == 0, boot.stderr
    assert re.fullmatch(r"glpat-[A-Za-z0-9_-]+", boot.stdout.strip().splitlines()[-1])
    assert (tmp_path / "var" / "deploy-tokens.sqlite3").exists()
    assert oct((tmp_path / "var" / "secret_key").stat().st_mode & 0o777) == "0o600"

    assert run(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme").returncode == 0
    assert run(tmp_path, "projects", "create", "--name", "Web", "--namespace", "acme").returncode == 0
    project_token = run(
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
    assert project_token.returncode == 0, project_token.stderr
    assert re.fullmatch(r"gldt-[A-Za-z0-9_-]{20,}", project_token.stdout.strip().splitlines()[-1])
    group_token = run(
        tmp_path, "tokens", "create", "--group", "acme", "--name", "pkg", "--scopes", "read_package_registry"
    )
    assert group_token.returncode == 0, group_token.stderr

    listing = json.loads(run(tmp_path, "tokens", "list").stdout)
    assert [(t["id"], t["name"], t["scopes"]) for t in listing] == [
        (1, "deploy", ["read_repository", "read_registry"]),
        (2, "pkg", ["read_package_registry"]),
    ]
    assert listing[0]["expires_at"] == "2099-01-01T00:00:00Z"

    assert run(tmp_path, "tokens", "revoke", "--project", "acme/web", "1").returncode == 0
    history = json.loads(run(tmp_path, "history", "1").stdout)
    assert [entry["event"] for entry in history] == ["Created", "Scoped", "Revoked"]
    assert history[0]["actor"]["kind"] == "system"


def test_second_bootstrap_is_refused(tmp_path: Path):
    assert run(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com").returncode == 0
    again = run(tmp_path, "bootstrap", "--username", "other", "--email", "other@example.com")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert again.stdout == ""


def test_validation_errors_are_clear_and_nonzero(tmp_path: Path):
    run(tmp_path, "bootstrap", "--username", "root", "--email", "root@example.com")
    run(tmp_path, "groups", "create", "--name", "Acme", "--path", "acme")
    bad = run(tmp_path, "tokens", "create", "--group", "acme", "--name", "x", "--scopes", "write_repository")
    assert bad.returncode == 1
    assert "Scopes does not have a valid value" in bad.stderr
    assert "Traceback" not in bad.stderr
