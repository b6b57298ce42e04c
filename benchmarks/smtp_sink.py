"""An SMTP server for the benchmarks: aiosmtpd on loopback in a process of its own, so that the server's work
does not compete with the measured client for this process's interpreter lock (as a real relay would not).

It accepts every message and appends the message's Message-ID to a file, one line each, before answering
``250``, so a benchmark can check what arrived and how often. Run ``python -m benchmarks.smtp_sink PORT FILE``;
it prints ``ready`` once it listens and stops when its standard input closes.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from aiosmtpd.controller import Controller

# Only the header block is searched: the generator folds nothing as short as an expiry mail's Message-ID.
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


class RecordingHandler:
    def __init__(self, log: TextIO) -> None:
        self.log = log

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content: bytes = envelope.original_content or envelope.content
        headers = content.split(b"\r\n\r\n", 1)[0]
        found = _MESSAGE_ID.search(headers)
        self.log.write((found.group(1).decode() if found else "<none>") + "\n")
        self.log.flush()
        return "250 OK"


def serve(port: int, path: Path) -> None:
    with path.open("a", encoding="ascii") as log:
        controller = Controller(RecordingHandler(log), hostname="127.0.0.1", port=port)
        controller.start()
        try:
            print("ready", flush=True)
            sys.stdin.read()  # until the benchmark closes the pipe (or dies)
        finally:
            controller.stop()


@dataclass(frozen=True)
class RunningSink:
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=10"

    def received(self) -> Counter[str]:
        """How many times each Message-ID arrived so far."""
        return Counter(self.log.read_text(encoding="ascii").split())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_sink(log: Path) -> Iterator[RunningSink]:
    """The server in a child process, listening on a free loopback port, logging to ``log``."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.smtp_sink", str(port), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError("the benchmark SMTP server did not start")
        yield RunningSink(port, log)
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
