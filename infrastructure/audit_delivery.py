"""Delivering audit events to streaming destinations (behaviour [audit-streaming]): one HTTP POST, bounded in
time whatever the receiver does, its signature, and each destination's delivery position.

``post_event`` sends one event and says whether the destination acknowledged it (any 2xx). The whole
exchange (connect, send, the answer's status line and headers) has one deadline: a receiver that accepts and
never answers, or trickles its answer a byte at a time, is cut off when the deadline passes. Redirects are
not followed (a 3xx is a failure): the destination is the URL an administrator gave.

``DeliveryPositions`` keeps, per destination, the log position up to which events were acknowledged (like a
projection's tracking row), counts of deliveries and failed attempts, and a lease: one streamer delivers to a
destination at a time, wherever it runs. A lease is renewed with every attempt and while waiting to retry;
one held by a process that died on this machine is taken over at once, any other once it runs out.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from infrastructure.outbound_http import PinnedConnection, connect_within, deadline_watchdog, resolve_within

if TYPE_CHECKING:  # the settings import this module's policy, and the database module the settings
    from infrastructure.db import Cursor, Database

SIGNATURE_HEADER: Final = "X-Deploy-Tokens-Signature"
TOKEN_HEADER: Final = "X-Gitlab-Event-Streaming-Token"
EVENT_TYPE_HEADER: Final = "X-Gitlab-Audit-Event-Type"
EVENT_ID_HEADER: Final = "X-Deploy-Tokens-Audit-Event-Id"
USER_AGENT: Final = "deploy-tokens-audit-streaming"
_OWN_HEADERS: Final = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "Connection": "close"}
_ANSWER_BYTES: Final = 64 * 1024  # of a receiver's answer, read and dropped; the status is what counts


@dataclass(frozen=True)
class DeliveryPolicy:
    """How long one attempt may take, and the waits between attempts (doubling from ``first_retry`` up to
    ``max_retry``)."""

    timeout: float = 10.0
    first_retry: float = 1.0
    max_retry: float = 300.0
    allow_insecure: bool = False  # http, and addresses on this machine or a private network

    def backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th consecutive failed attempt (1, 2, ...)."""
        doubled: float = self.first_retry * 2.0 ** min(max(failures - 1, 0), 32)
        return min(doubled, self.max_retry)

    @property
    def lease(self) -> float:
        """How long a streamer holds a destination without renewing: several attempts' worth."""
        return max(30.0, 3 * self.timeout)


def signature(body: bytes, verification_token: str) -> str:
    """The ``X-Deploy-Tokens-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the exact body, keyed
    with the destination's verification token."""
    return "sha256=" + hmac.new(verification_token.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt: acknowledged (a 2xx) or not, and why not, in words fit for logs and metrics."""

    acknowledged: bool
    status: int | None = None
    error: str | None = None


AddressRule = Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]


def _resolved(host: str, port: int, allowed: AddressRule | None, seconds: float) -> str:
    """The address to connect to: the first the name resolves to, within ``seconds`` (``TimeoutError``), which
    ``allowed`` must accept (``RefusedAddress``)."""
    address = resolve_within(host, port, seconds, thread_name="audit-delivery-resolve")
    if allowed is not None and not allowed(ipaddress.ip_address(address.split("%", 1)[0])):
        raise RefusedAddress(address)
    return address


class RefusedAddress(Exception):
    """The destination's name resolved to an address on this machine or a private network."""


def post_event(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    timeout: float,
    allowed: AddressRule | None,
    tls: ssl.SSLContext | None = None,
) -> Attempt:
    """POST ``body`` to ``url`` within ``timeout`` seconds in all, name resolution included.

    With an address rule ``allowed``: only ``https``, and only to an address the rule accepts (checked after
    resolution, and connected to as checked, so that no second look-up can lead elsewhere). None: any scheme
    and address (an instance that allows insecure destinations)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    deadline = time.monotonic() + timeout
    if not secure and allowed is not None:
        return Attempt(False, error="refused: not https")
    connection: PinnedConnection | None = None
    try:
        address = _resolved(host, port, allowed, deadline - time.monotonic())
        connection = connect_within(host, address, port, secure=secure, deadline=deadline, tls=tls)
        with deadline_watchdog(connection.sock, deadline):
            connection.request("POST", target, body, {**headers, **_OWN_HEADERS})
            response = connection.getresponse()
            status = response.status
            response.read(_ANSWER_BYTES)
    except RefusedAddress:
        return Attempt(False, error="refused: the host resolves to a local or private address")
    except TimeoutError:
        return Attempt(False, error=f"timed out after {timeout:g} s")
    except (OSError, http.client.HTTPException, ValueError) as error:
        if time.monotonic() >= deadline:
            return Attempt(False, error=f"timed out after {timeout:g} s")
        return Attempt(False, error=_describe(error))
    finally:
        if connection is not None:
            connection.close()
    if time.monotonic() > deadline:  # answered, but only after the deadline cut it short
        return Attempt(False, status, f"timed out after {timeout:g} s")
    if 200 <= status < 300:
        return Attempt(True, status)
    return Attempt(False, status, f"HTTP {status}")


def _describe(error: BaseException) -> str:
    """The kind of failure, never the URL or a header (the verification token is one)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(error, ssl.SSLError):
        return f"TLS error ({error.reason or type(error).__name__})"
    return type(error).__name__


# Positions ------------------------------------------------------------------------------------------------

POSITIONS_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS audit_stream_positions (
    destination_id BIGINT PRIMARY KEY,
    position BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    last_error TEXT,
    last_success_at DOUBLE PRECISION,
    lease_owner TEXT,
    lease_until DOUBLE PRECISION
)
"""


class LeaseLost(Exception):
    """Another streamer has taken the destination over (this one was stalled past its lease)."""


@dataclass(frozen=True)
class PositionRow:
    destination_id: int
    position: int
    delivered: int
    failures: int
    last_error: str | None
    last_success_at: float | None


def _process_space() -> str:
    """Which process-id space this process lives in: the boot and the PID namespace. Two containers may share
    a host name; only in the same boot and namespace does a process id name the same process."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "unknown"
    return f"{boot}/{namespace}"


def new_owner() -> str:
    """A streamer's name in leases: host, process id and its process space (to recognise a dead holder), and
    a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}:{_process_space()}"


def _owner_died(owner: str) -> bool:
    """Whether the lease holder ``owner`` was a process of this process space that no longer runs. Anywhere
    else (another machine, another container, an owner in an older form), only the lease's end tells."""
    parts = owner.split(":")
    if len(parts) != 4:
        return False
    host, pid_text, _, space = parts
    here = _process_space()
    if host != socket.gethostname() or space != here or here == "unknown" or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class DeliveryPositions:
    """Each destination's acknowledged position, counters and lease (``audit_stream_positions``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create_table(self, cursor: Cursor) -> None:
        cursor.execute(POSITIONS_SCHEMA)

    def claim(self, destination_id: int, start_after: int, owner: str, lease: float) -> int | None:
        """Take (or renew) the destination's lease; its position, or None while another streamer holds it."""
        now = time.time()
        with self.db.transaction() as cursor:
            cursor.execute(
                "INSERT INTO audit_stream_positions (destination_id, position, delivered, failures) "
                "VALUES (?, ?, 0, 0) ON CONFLICT (destination_id) DO NOTHING",
                (destination_id, start_after),
            )
            row = cursor.execute(
                "SELECT position, lease_owner, lease_until FROM audit_stream_positions "
                "WHERE destination_id = ? FOR UPDATE",
                (destination_id,),
            ).fetchone()
            assert row is not None
            position, holder, until = int(row[0]), row[1], row[2]
            if holder not in (None, owner) and until is not None and until > now and not _owner_died(holder):
                return None
            cursor.execute(
                "UPDATE audit_stream_positions SET lease_owner = ?, lease_until = ? WHERE destination_id = ?",
                (owner, now + lease, destination_id),
            )
            return position

    def acknowledged(self, destination_id: int, owner: str, position: int, lease: float) -> None:
        """The destination acknowledged the event at ``position``: move past it (only forward, only while
        this streamer holds the lease)."""
        now = time.time()
        with self.db.transaction() as cursor:
            cursor.execute(
                "UPDATE audit_stream_positions SET position = ?, delivered = delivered + 1, last_success_at = ?, "
                "last_error = NULL, lease_until = ? WHERE destination_id = ? AND lease_owner = ? AND position < ?",
                (position, now, now + lease, destination_id, owner, position),
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"destination {destination_id}")

    def failed(self, destination_id: int, owner: str, error: str, lease: float) -> None:
        """Count a failed attempt (and renew the lease: the streamer is alive and retrying)."""
        self._renew(destination_id, owner, lease, failed=error)

    def renew(self, destination_id: int, owner: str, lease: float) -> None:
        self._renew(destination_id, owner, lease, failed=None)

    def _renew(self, destination_id: int, owner: str, lease: float, *, failed: str | None) -> None:
        counted = ", failures = failures + 1, last_error = ?" if failed is not None else ""
        params = [time.time() + lease, *([failed] if failed is not None else []), destination_id, owner]
        with self.db.transaction() as cursor:
            cursor.execute(
                f"UPDATE audit_stream_positions SET lease_until = ?{counted} "
                "WHERE destination_id = ? AND lease_owner = ?",
                params,
            )
            if cursor.rowcount != 1:
                raise LeaseLost(f"destination {destination_id}")

    def release(self, destination_id: int, owner: str) -> None:
        with self.db.transaction() as cursor:
            cursor.execute(
                "UPDATE audit_stream_positions SET lease_owner = NULL, lease_until = NULL "
                "WHERE destination_id = ? AND lease_owner = ?",
                (destination_id, owner),
            )

    def rows(self) -> dict[int, PositionRow]:
        with self.db.read() as cursor:
            found = cursor.execute(
                "SELECT destination_id, position, delivered, failures, last_error, last_success_at "
                "FROM audit_stream_positions"
            ).fetchall()
        return {
            int(row[0]): PositionRow(
                int(row[0]),
                int(row[1]),
                int(row[2]),
                int(row[3]),
                row[4],
                None if row[5] is None else float(row[5]),
            )
            for row in found
        }
