"""The suite's own layers: unit tests import nothing that serves, connects or spawns; API tests use the Flask
test client and never the end-to-end harness of real servers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
NO_IO_IN_UNIT = {
    "socket",
    "subprocess",
    "multiprocessing",
    "http.server",
    "socketserver",
    "aiosmtpd",
    "werkzeug.serving",
    "psycopg",
    "redis",
    "rq",
    "urllib.request",
}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            modules.add(base)
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    return modules


def forbidden(modules: set[str], names: set[str]) -> set[str]:
    return {m for m in modules if any(m == n or m.startswith(n + ".") for n in names)}


@pytest.mark.parametrize("path", sorted((TESTS / "unit").glob("*.py")), ids=lambda p: p.name)
def test_unit_tests_import_no_server_socket_or_subprocess(path: Path) -> None:
    if path.name == "conftest.py":
        return  # the guard itself patches socket and subprocess
    assert not forbidden(imported_modules(path), NO_IO_IN_UNIT | {"tests.e2e", "..e2e"})


@pytest.mark.parametrize("path", sorted((TESTS / "api").glob("*.py")), ids=lambda p: p.name)
def test_api_tests_do_not_use_the_end_to_end_harness(path: Path) -> None:
    assert not forbidden(imported_modules(path), {"tests.e2e", "..e2e"})
