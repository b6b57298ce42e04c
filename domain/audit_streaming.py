"""Audit event streaming destinations (behaviour [audit-streaming]): where every audit event is delivered.

One aggregate, the instance's register of destinations, keeps names unique and the number of destinations
bounded, strongly consistent: two administrators adding the same name at once race on this one stream and
the loser decides again on fresh state. A destination's verification token is a secret: it is never in an
event; the event names the vault entry (``secret_ref``, a random id) that holds it encrypted.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from eventsourcing.domain import Aggregate

from domain.actors import Actor
from domain.errors import NotFound, ValidationError
from domain.streams import stream_id
from domain.text import has_unstorable_characters

#: The register's stream: there is one per instance.
AUDIT_STREAMING_ID: Final = stream_id("audit_streaming", 1)

# GitLab's bounds for external audit event destinations.
MAX_NAME_LENGTH: Final = 72
MAX_URL_LENGTH: Final = 255
MAX_DESTINATIONS: Final = 5
TOKEN_MIN_LENGTH: Final = 16
TOKEN_MAX_LENGTH: Final = 24
# A token travels in an HTTP header: visible ASCII, no spaces, nothing a header could be split on.
_TOKEN_CHARACTERS: Final = re.compile(r"\A[\x21-\x7e]+\Z")
_BASE58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_HOST_LABEL: Final = re.compile(r"\A[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")

StartFrom = Literal["now", "beginning"]
STARTS: Final[tuple[StartFrom, ...]] = ("now", "beginning")
TAKEN: Final = "has already been taken"


def generate_verification_token() -> str:
    """24 random base58 characters (about 140 bits), as GitLab generates them."""
    return "".join(secrets.choice(_BASE58) for _ in range(TOKEN_MAX_LENGTH))


def check_name(name: str) -> str:
    if not name.strip():
        raise ValidationError.single("name", "can't be blank")
    if len(name) > MAX_NAME_LENGTH:
        raise ValidationError.single("name", f"is too long (maximum is {MAX_NAME_LENGTH} characters)")
    if has_unstorable_characters(name):
        raise ValidationError.single("name", "contains characters that are not allowed (control characters)")
    return name


def _valid_host(host: str, *, bracketed: bool) -> bool:
    if bracketed or ":" in host:  # only an IPv6 literal is bracketed (``urlsplit`` removed the brackets)
        if "%" in host:  # no zone: it names no host
            return False
        try:
            return ip_address(host).version == 6
        except ValueError:
            return False
    return all(_HOST_LABEL.match(label) for label in host.removesuffix(".").split("."))


_NAT64: Final = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
_IPV4_COMPATIBLE: Final = ip_network("::/96")


def is_public_address(address: IPv4Address | IPv6Address) -> bool:
    """Whether connecting to ``address`` reaches the public internet and nothing else: globally routable, not
    multicast, and, for the IPv6 forms that carry an IPv4 address (mapped, compatible, 6to4, Teredo, NAT64),
    the IPv4 address they carry public too (a NAT64 gateway turns ``64:ff9b::a00:1`` into 10.0.0.1)."""
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, IPv6Address):
        embedded: list[IPv4Address] = []
        if address.ipv4_mapped is not None:
            embedded.append(address.ipv4_mapped)
        if address.sixtofour is not None:
            embedded.append(address.sixtofour)
        if address.teredo is not None:
            embedded += list(address.teredo)
        if any(address in network for network in _NAT64) or address in _IPV4_COMPATIBLE:
            embedded.append(IPv4Address(int(address) & 0xFFFFFFFF))
        return all(is_public_address(inner) for inner in embedded)
    return True


def is_local_host(host: str) -> bool:
    """Whether ``host`` (a URL's host, brackets removed) names this machine or a private network by itself:
    ``localhost`` and its subdomains, or an IP literal that is not globally routable. A name that resolves to
    such an address is refused at delivery, where it is resolved (``infrastructure.audit_delivery``)."""
    name = host.lower().removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return not is_public_address(ip_address(name))
    except ValueError:
        return False


def check_destination_url(url: str, *, allow_insecure: bool = False) -> str:
    """An absolute ``https`` URL with a public host, at most 255 characters, no credentials and no query string
    (both would be kept in clear, in events and audit rows: the destination authenticates the service by the
    verification token instead) and no fragment. Only visible ASCII: a URL is sent as it is written.
    ``allow_insecure`` (an instance setting) also admits ``http`` and local or private hosts."""
    field = "destination_url"
    if not url:
        raise ValidationError.single(field, "can't be blank")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError.single(field, f"is too long (maximum is {MAX_URL_LENGTH} characters)")
    if not _TOKEN_CHARACTERS.match(url):
        raise ValidationError.single(field, "is blocked: Only visible ASCII characters are allowed")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationError.single(field, "is blocked: URI is invalid") from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError.single(field, "is blocked: Only allowed schemes are http, https")
    if "@" in parts.netloc:
        raise ValidationError.single(field, "is blocked: Username and password are not allowed")
    host = parts.hostname
    if not host or not _valid_host(host, bracketed="[" in parts.netloc) or port == 0:
        raise ValidationError.single(field, "is blocked: URI is invalid")
    if parts.fragment or url.endswith("#"):
        raise ValidationError.single(field, "is blocked: URI is invalid")
    if parts.query or url.endswith("?"):
        raise ValidationError.single(field, "is blocked: Query strings are not allowed")
    if not allow_insecure:
        if parts.scheme != "https":
            raise ValidationError.single(field, "is blocked: Only allowed schemes are https")
        if is_local_host(host):
            raise ValidationError.single(field, "is blocked: Requests to the local network are not allowed")
    return url


def check_verification_token(token: str) -> str:
    field = "verification_token"
    if not TOKEN_MIN_LENGTH <= len(token) <= TOKEN_MAX_LENGTH:
        raise ValidationError.single(
            field, f"is the wrong length (should be {TOKEN_MIN_LENGTH} to {TOKEN_MAX_LENGTH} characters)"
        )
    if not _TOKEN_CHARACTERS.match(token):
        raise ValidationError.single(field, "may hold visible ASCII characters only, no spaces")
    return token


@dataclass(frozen=True)
class DestinationEntry:
    name: str
    destination_url: str
    secret_ref: str


class AuditStreaming(Aggregate):
    """The instance's audit streaming destinations (behaviour [audit-streaming])."""

    TOPIC = "deploy_tokens:AuditStreaming"

    class Event(Aggregate.Event):
        TOPIC = "deploy_tokens:AuditStreaming.Event"

    class Created(Aggregate.Created):
        TOPIC = "deploy_tokens:AuditStreaming.Created"

    class DestinationCreated(Aggregate.Event):
        """A destination: every audit event after this one (``start="now"``) or since the first
        (``"beginning"``) is delivered to it. The verification token is in the vault, under ``secret_ref``."""

        TOPIC = "deploy_tokens:AuditStreaming.DestinationCreated"
        destination_id: int
        name: str
        destination_url: str
        start: str
        secret_ref: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, AuditStreaming)
            aggregate.destinations[self.destination_id] = DestinationEntry(
                self.name, self.destination_url, self.secret_ref
            )
            aggregate.last_id = max(aggregate.last_id, self.destination_id)

    class DestinationDeleted(Aggregate.Event):
        """Deliveries to the destination stop; its name and URL are repeated, so the event reads on its own."""

        TOPIC = "deploy_tokens:AuditStreaming.DestinationDeleted"
        destination_id: int
        name: str
        destination_url: str
        actor: dict[str, Any]

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, AuditStreaming)
            aggregate.destinations.pop(self.destination_id, None)

    def __init__(self) -> None:
        self.destinations: dict[int, DestinationEntry] = {}
        self.last_id = 0  # ids are never reused

    @classmethod
    def initial(cls, now: datetime) -> AuditStreaming:
        return cls._create(cls.Created, id=AUDIT_STREAMING_ID, timestamp=now)

    def create_destination(
        self,
        *,
        name: str,
        destination_url: str,
        start: str,
        secret_ref: str,
        actor: Actor,
        now: datetime,
        allow_insecure: bool = False,
    ) -> int:
        """Add a destination; returns its id. Names are unique without regard to case."""
        errors: dict[str, list[str]] = {}
        checks: tuple[Callable[[], str], ...] = (
            lambda: check_name(name),
            lambda: check_destination_url(destination_url, allow_insecure=allow_insecure),
        )
        for check in checks:
            try:
                check()
            except ValidationError as error:
                errors.update(error.errors)
        if start not in STARTS:
            errors["start"] = ["does not have a valid value"]
        if errors:
            raise ValidationError(errors)
        if any(entry.name.casefold() == name.casefold() for entry in self.destinations.values()):
            raise ValidationError.single("name", TAKEN)
        if len(self.destinations) >= MAX_DESTINATIONS:
            raise ValidationError.single(
                "base", f"Maximum number of destinations ({MAX_DESTINATIONS}) reached"
            )
        destination_id = self.last_id + 1
        self.trigger_event(
            self.DestinationCreated,
            timestamp=now,
            destination_id=destination_id,
            name=name,
            destination_url=destination_url,
            start=start,
            secret_ref=secret_ref,
            actor=actor.as_event_data(),
        )
        return destination_id

    def delete_destination(self, destination_id: int, *, actor: Actor, now: datetime) -> DestinationEntry:
        entry = self.destinations.get(destination_id)
        if entry is None:
            raise NotFound("404 Destination")
        self.trigger_event(
            self.DestinationDeleted,
            timestamp=now,
            destination_id=destination_id,
            name=entry.name,
            destination_url=entry.destination_url,
            actor=actor.as_event_data(),
        )
        return entry
