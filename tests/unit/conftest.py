"""Unit tests do no I/O: a socket or a child process started from here fails the test that started it, so a
test that needs a server or a tool goes to ``tests/integration`` or ``tests/e2e`` instead."""

from __future__ import annotations

import socket
import subprocess
from typing import NoReturn

import pytest


def _refuse(*_: object, **__: object) -> NoReturn:
    raise AssertionError("tests/unit does no I/O: move this test to tests/integration or tests/e2e")


@pytest.fixture(autouse=True)
def no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse)
