"""A free loopback port, for servers a test starts (SMTP sinks, docker-registry, nginx, the service)."""

from __future__ import annotations

import socket


def free_port() -> int:
    # Servers such as aiosmtpd's Controller cannot probe their own readiness on port 0, so pick one up front.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
