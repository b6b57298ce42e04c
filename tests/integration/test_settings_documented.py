"""Every environment variable the service reads is in the README's settings table, and every row of the table is
read: by ``Settings.from_env`` (recorded as it reads them) or, for the one the web process sets itself, by the
module that sets it. Nothing else in the service's packages reads the process environment."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure import settings as settings_module
from infrastructure.settings import ConfigurationError, Settings

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cli", "api", "workers", "deploy_tokens", "projections", "domain", "infrastructure")
SETTINGS_FILE = ROOT / "infrastructure" / "settings.py"
# Files besides the settings that touch the process environment, and why.
OTHER_READERS = {
    # names the web workers' metrics folder (PROMETHEUS_MULTIPROC_DIR) for them, and removes it at exit
    ROOT / "api" / "gunicorn_conf.py": {"PROMETHEUS_MULTIPROC_DIR"},
}
ENV_NAME = re.compile(r"\A(DEPLOY_TOKENS_[A-Z0-9_]+|PORT|WEB_[A-Z_]+|PROMETHEUS_[A-Z_]+)\Z")


class RecordingEnvironment(dict[str, str]):
    """An environment that remembers every name asked for."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.asked.add(key)
        return super().__contains__(key)


def documented() -> set[str]:
    """The first column of the table under the README's "Configuration" heading."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `([A-Z0-9_]+)` \|", section, re.MULTILINE)
    assert len(names) == len(set(names)), "a variable is listed twice"
    return set(names)


def python_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def process_environment_uses(path: Path) -> list[int]:
    """Lines that use ``os.environ``, ``os.getenv`` or ``os.putenv`` (a WSGI environ is something else)."""
    lines = []
    names = ("environ", "getenv", "putenv", "environb")
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        attribute = isinstance(node, ast.Attribute) and node.attr in names
        if attribute and isinstance(node.value, ast.Name) and node.value.id == "os":  # type: ignore[attr-defined]
            lines.append(node.lineno)  # type: ignore[attr-defined]
        imported = isinstance(node, ast.ImportFrom) and node.module == "os"
        if imported and any(alias.name in names for alias in node.names):  # type: ignore[attr-defined]
            lines.append(node.lineno)  # type: ignore[attr-defined]
    return lines


def string_constants(path: Path) -> set[str]:
    return {
        node.value
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ENV_NAME.match(node.value)
    }


def test_only_the_settings_read_the_process_environment() -> None:
    readers = {path for path in python_files() if process_environment_uses(path)}
    assert SETTINGS_FILE in readers
    unexpected = readers - {SETTINGS_FILE, *OTHER_READERS}
    assert not unexpected, (
        f"read the environment outside infrastructure/settings.py: {sorted(map(str, unexpected))}"
    )


def test_every_variable_read_is_documented_and_every_documented_one_is_read(tmp_path: Path) -> None:
    env = RecordingEnvironment(
        {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    )
    Settings.from_env(env)
    read_by_settings = {name for name in env.asked if ENV_NAME.match(name)}
    # Also what is named in the settings' source (a read behind a branch the defaults do not take).
    named_in_settings = string_constants(SETTINGS_FILE)
    named_elsewhere = {name for names in OTHER_READERS.values() for name in names}
    for path, names in OTHER_READERS.items():
        assert names <= string_constants(path) | {settings_module.METRICS_DIR_ENV}, path
    read = read_by_settings | named_in_settings | named_elsewhere
    table = documented()
    assert read - table == set(), "read by the code, missing from the README's settings table"
    assert table - read == set(), "in the README's settings table, read by nothing"
    assert read_by_settings >= table - named_elsewhere, "documented but never read by Settings.from_env"


def test_a_malformed_web_setting_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    base = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    for name, value in (
        ("PORT", "80a"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("WEB_CONCURRENCY", "0"),
        ("WEB_THREADS", "many"),
        ("DEPLOY_TOKENS_BIND", "0.0.0.0:http"),
        ("DEPLOY_TOKENS_BIND", "[::1"),
        ("DEPLOY_TOKENS_BIND", "unix:"),
        ("DEPLOY_TOKENS_BIND", "a b"),
    ):
        with pytest.raises(ConfigurationError, match=name):
            Settings.from_env({**base, name: value})


@pytest.mark.parametrize(
    ("env", "bind"),
    [
        ({}, "127.0.0.1:8080"),
        ({"PORT": "5000"}, "127.0.0.1:5000"),  # a process manager's PORT never opens the service to others
        ({"DEPLOY_TOKENS_BIND": "0.0.0.0"}, "0.0.0.0:8080"),
        ({"DEPLOY_TOKENS_BIND": "0.0.0.0", "PORT": "5000"}, "0.0.0.0:5000"),
        ({"DEPLOY_TOKENS_BIND": "10.0.0.5:9000", "PORT": "5000"}, "10.0.0.5:9000"),
        ({"DEPLOY_TOKENS_BIND": "::"}, "[::]:8080"),
        ({"DEPLOY_TOKENS_BIND": "[::1]:9000"}, "[::1]:9000"),
        ({"DEPLOY_TOKENS_BIND": "unix:/run/deploy-tokens.sock"}, "unix:/run/deploy-tokens.sock"),
    ],
)
def test_bind_address(tmp_path: Path, env: dict[str, str], bind: str) -> None:
    base = {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    assert Settings.from_env({**base, **env}).bind == bind


def test_web_defaults(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {"DEPLOY_TOKENS_DATA_DIR": str(tmp_path), "DEPLOY_TOKENS_SECRET_KEY": "k" * 40}
    )
    assert (settings.web_concurrency, settings.web_threads, settings.metrics_dir) == (4, 8, None)
    assert not settings.log_level_set
