"""Everything the service writes into its data folder is private to its user: folders 0700, files 0600,
whatever the umask (SQLite database with its -wal/-shm, generated secret, Maildir and mails)."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deploy_tokens.expiry_mail import ExpiryNotice, Recipient, compose
from deploy_tokens.runtime import Runtime
from infrastructure.activity import ActivityEvent, activity_rows
from infrastructure.db import private_sqlite_file
from infrastructure.mail import mailer_from_url
from infrastructure.settings import Settings


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    yield int(request.param)
    os.umask(previous)


def open_modes(root: Path) -> dict[str, str]:
    """Every folder and file under ``root`` (itself included) that group or others may use."""
    found = {}
    for path in (root, *root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077:
            found[str(path.relative_to(root.parent))] = oct(mode)
    return found


def send_expiry_mail(data_dir: Path) -> None:
    notice = ExpiryNotice(
        token_id=1,
        token_name="ci-pull",
        namespace_kind="project",
        namespace_path="acme/api",
        expires_at=datetime.now(UTC) + timedelta(days=7),
        interval_days=7,
        days_left=7,
        settings_url="https://gitlab.example.com/acme/api/-/settings/repository",
        recipients=(Recipient("Ann Owner", "ann@example.com"),),
    )
    mailer_from_url(None, data_dir=data_dir).send(
        compose(notice, sender="noreply@example.com", domain="example.com")
    )


@contextmanager
def use_the_service(data_dir: Path) -> Iterator[Path]:
    """Start the embedded service on ``data_dir``, write a user, a token and activity, send a mail; yields
    while the database is still open (so that its -wal and -shm files exist)."""
    settings = Settings.from_env({"DEPLOY_TOKENS_DATA_DIR": str(data_dir)})
    with Runtime.open(settings) as runtime:
        runtime.directory.bootstrap_admin(username="root", email="root@example.com")
        runtime.activity.record(
            ActivityEvent(
                datetime.now(UTC), 1, None, "check", "api", None, None, True, "allowed", 200, None, None
            )
        )
        runtime.activity.flush()
        assert len(activity_rows(runtime.db)) == 1
        send_expiry_mail(data_dir)
        yield data_dir


def test_a_fresh_data_folder_and_everything_in_it_are_private(tmp_path: Path, umask: int) -> None:
    data_dir = tmp_path / "data"
    with use_the_service(data_dir) as used:
        names = {path.name for path in used.iterdir()}
        assert {"secret_key", "deploy-tokens.sqlite3", "deploy-tokens.sqlite3-wal", "maildir"} <= names
        assert len(list((used / "maildir" / "new").iterdir())) == 1
        assert open_modes(used) == {}
    assert open_modes(data_dir) == {}


def test_an_existing_data_folder_is_tightened_only_when_it_is_the_services_own(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # what an older version left behind: 0755 folders, 0644 files
    try:
        data_dir = tmp_path / "data"
        data_dir.mkdir()
        (data_dir / "secret_key").write_text("an-older-version-wrote-this-secret-0123456789abcdef")
        (data_dir / "maildir" / "new").mkdir(parents=True)
        shared = tmp_path / "shared"
        shared.mkdir()
        (shared / "someone-elses-file").write_text("not ours")
        # Left open, like a process that died: its -wal and -shm files stay behind, 0644 too.
        with closing(sqlite3.connect(data_dir / "deploy-tokens.sqlite3")) as old_database:
            old_database.execute("PRAGMA journal_mode=WAL")
            old_database.execute("CREATE TABLE leftover (x)")
            old_database.commit()
            assert "data/deploy-tokens.sqlite3-wal" in open_modes(data_dir)

            with use_the_service(data_dir) as used:
                assert open_modes(used) == {}
        # Pointed at a folder that holds other things, the service leaves the folder and what it did not
        # write as they were; what it writes there is private all the same.
        with use_the_service(shared):
            assert open_modes(shared) == {"shared": "0o755", "shared/someone-elses-file": "0o644"}
    finally:
        os.umask(previous)


def _locks_held_on(path: Path) -> list[str]:
    """This process's POSIX locks on ``path``, as the kernel lists them (without the line's ordinal, which
    moves as other processes take and drop locks)."""
    inode = f":{path.stat().st_ino}"
    return [
        " ".join(fields[1:])
        for fields in map(str.split, Path("/proc/locks").read_text().splitlines())
        if fields[4] == str(os.getpid()) and fields[5].endswith(inode)
    ]


def test_making_sure_the_file_is_private_keeps_sqlites_locks(tmp_path: Path) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds on it: SQLite's shared lock is
    # what keeps another process from deleting the WAL this one reads.
    path = tmp_path / "deploy-tokens.sqlite3"
    private_sqlite_file(path)
    with closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (a INTEGER)")
        connection.execute("BEGIN")
        connection.execute("SELECT * FROM t").fetchall()
        held = _locks_held_on(path)
        assert held  # the reader's shared lock

        private_sqlite_file(path)  # as each new thread's connection does

        assert _locks_held_on(path) == held
        connection.execute("COMMIT")
