"""HTTP to somebody else's server, bounded in time whatever it does: what the audit streamer's deliveries
(``audit_delivery``, behaviour [audit-streaming]) and the OIDC verifier's fetches (``oidc``, behaviour
[federation]) share. Each caller keeps its own rules (which schemes and addresses, how much of the answer,
what a failure is called); this module only makes the exchange safe to wait on.

One deadline covers the whole exchange: name resolution, connecting, the TLS handshake and the answer's body.
A deadline per step would let a slow resolver, a slow handshake and a slow answer add up to many times what the
caller can afford (a gunicorn thread, a streamer's lease). The system resolver has no timeout of its own, so
``resolve_within`` runs it in a thread of its own, left behind if it takes too long.

A name is looked up once. ``PinnedConnection`` connects to the address that look-up gave (and that the caller
may have checked), never to whatever a second look-up would say: a rebinding DNS server could answer it
differently, and lead a request checked as public to this machine or a private network. TLS still verifies the
certificate against the URL's host name, and the Host header names it.

Socket timeouts bound each read, not the whole answer: a server that trickles its answer a byte at a time never
lets one time out. ``deadline_watchdog`` ends such an answer when the deadline passes, by shutting the socket
down, which wakes the thread blocked reading it (closing it would not).
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator


@functools.cache
def default_tls() -> ssl.SSLContext:
    """The system's trusted certificates and host name checks (loaded once: it reads the CA bundle)."""
    return ssl.create_default_context()


class PinnedConnection(http.client.HTTPSConnection):
    """HTTP or HTTPS to ``address``, the one the name was resolved to, whatever it resolves to by the time it
    connects. TLS (``tls``, or ``default_tls()``) verifies the certificate against ``host``."""

    def __init__(
        self,
        host: str,
        address: str,
        port: int,
        *,
        secure: bool,
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._tls = tls or default_tls()
        super().__init__(host, port, timeout=timeout, context=self._tls)
        self._address = address
        self._secure = secure
        self.default_port = 443 if secure else 80  # the Host header names a port only when it is not this

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self.host) if self._secure else sock


def resolve_within(host: str, port: int, seconds: float, *, thread_name: str) -> str:
    """The first address ``host`` resolves to, within ``seconds``: the resolver's ``OSError`` when it fails,
    ``TimeoutError`` when it has not answered by then (its thread, named ``thread_name``, is left behind)."""
    found: list[str] = []
    failed: list[OSError] = []

    def resolve() -> None:
        try:
            found.append(str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]))
        except OSError as error:
            failed.append(error)
        except (UnicodeError, ValueError) as error:  # a name IDNA cannot encode (a label over 63 characters)
            failed.append(OSError(f"the host name cannot be resolved: {type(error).__name__}"))

    resolver = threading.Thread(target=resolve, name=thread_name, daemon=True)
    resolver.start()
    resolver.join(max(seconds, 0.0))
    if failed:
        raise failed[0]
    if not found:
        raise TimeoutError
    return found[0]


def connect_within(
    host: str, address: str, port: int, *, secure: bool, deadline: float, tls: ssl.SSLContext | None = None
) -> PinnedConnection:
    """A ``PinnedConnection`` to ``address``, connected (TLS included) before ``deadline``
    (``time.monotonic()``); what is left of the deadline then bounds each read. ``TimeoutError`` when nothing
    is left to connect with."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    connection = PinnedConnection(host, address, port, secure=secure, timeout=remaining, tls=tls)
    connection.connect()
    return connection


@contextlib.contextmanager
def deadline_watchdog(sock: socket.socket, deadline: float) -> Iterator[None]:
    """Within the block, ``sock`` is shut down when ``deadline`` (``time.monotonic()``) passes: a read blocked
    on it ends then, with an error or an early end of the answer."""
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), _shutdown, (sock,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it, which closing would not
