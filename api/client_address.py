"""Who is asking: the client address recorded with each auth decision and used for brute-force bans.

A forwarded-address header is only as trustworthy as the peer that sent it: anyone can send
``X-Original-Remote-Addr``. So it is believed only when the peer (the TCP connection's address) is one of
``DEPLOY_TOKENS_TRUSTED_PROXIES`` (loopback by default), and only on the endpoint that sits behind a proxy by
design, nginx's ``/internal/auth_request``. Everywhere else the peer address is the client.

Addresses are normalised (``::ffff:10.0.0.1`` is ``10.0.0.1``, IPv6 compressed) so that one client is one
ban key, and a forwarded value that is not an IP address is never used (the peer is recorded instead).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Final

from infrastructure.bans import IPNetwork

__all__ = ["ClientAddresses", "normalise_address"]

_FORWARDED_HEADER: Final = "HTTP_X_ORIGINAL_REMOTE_ADDR"


@lru_cache(maxsize=4096)
def normalise_address(text: str) -> str | None:
    """The canonical spelling of an IP address, or None when ``text`` is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class ClientAddresses:
    def __init__(self, trusted_proxies: tuple[IPNetwork, ...]) -> None:
        self.trusted_proxies = trusted_proxies
        self.is_trusted = lru_cache(maxsize=1024)(self._is_trusted)

    def _is_trusted(self, peer: str) -> bool:
        """``peer`` is a normalised address (``peer()``)."""
        address = ipaddress.ip_address(peer)
        return any(address in network for network in self.trusted_proxies)

    def peer(self, environ: Mapping[str, Any]) -> str | None:
        raw = environ.get("REMOTE_ADDR")
        return normalise_address(raw) if isinstance(raw, str) and raw else None

    def behind_proxy(self, environ: Mapping[str, Any]) -> str | None:
        """The forwarded client when a trusted proxy says who it is; otherwise the peer itself."""
        peer = self.peer(environ)
        if peer is None or not self.is_trusted(peer):
            return peer
        forwarded = environ.get(_FORWARDED_HEADER)
        if not forwarded or len(forwarded) > 64:
            return peer
        return normalise_address(forwarded) or peer
