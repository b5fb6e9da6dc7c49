"""Who is on the other end of a request: the peer, or the client a trusted proxy names.

`X-Forwarded-For` is believed only when the peer is a trusted proxy
(`TR_VAULT_TRUSTED_PROXIES`), and then read from the right: each hop a trusted proxy appended is
followed to the left until the first address that is not itself a trusted proxy. Everything to
the left of that was written by the client and is ignored, so a client cannot pick its own
address by sending the header. A hop that is not an IP address stops the walk at the trusted
proxy that passed it on.

Only the standard library: the settings parse their `TR_VAULT_TRUSTED_PROXIES` with this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

FORWARDED_FOR = b"x-forwarded-for"
MAX_HOPS = 32  # a longer chain is not followed further (the walk stops at the last trusted hop)


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose `X-Forwarded-For` is believed; empty: no proxy is trusted."""

    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, text: str) -> TrustedProxies:
        """Comma-separated IPs or CIDRs (`127.0.0.1, 10.0.0.0/8, ::1`); ValueError naming a bad
        entry."""
        networks = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. 127.0.0.1 or 10.0.0.0/8)"
                ) from None
        return cls(tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        ip = parse_ip(address)
        return ip is not None and any(ip in network for network in self.networks)


def parse_ip(text: str) -> IPAddress | None:
    """An address as a proxy or the server writes it (`1.2.3.4`, `1.2.3.4:5678`, `::1`,
    `[::1]:5678`); IPv4-mapped IPv6 as IPv4. None when it is not an IP address."""
    value = text.strip()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:  # IPv4 with a port
        value = value.partition(":")[0]
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class _HasScope(Protocol):
    @property
    def scope(self) -> Any: ...


def _forwarded_hops(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every `X-Forwarded-For` entry, in order (several headers read as one list)."""
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == FORWARDED_FOR:
            hops += value.decode("latin-1").split(",")
    return hops


def client_address(source: Mapping[str, Any] | _HasScope, trusted: TrustedProxies) -> str:
    """The client's address for an ASGI scope (or a request that has one).

    The peer itself, unless it is a trusted proxy: then the right-most `X-Forwarded-For` hop
    that is not a trusted proxy (the left-most hop when all of them are). '' when the server
    does not know the peer (a UNIX socket).
    """
    scope: Mapping[str, Any] = source if isinstance(source, Mapping) else source.scope
    peer = scope.get("client")
    if not peer:
        return ""
    current = parse_ip(str(peer[0]))
    if current is None:
        return str(peer[0])
    if not trusted:
        return str(current)
    hops = _forwarded_hops(scope.get("headers") or ())
    for raw in reversed(hops[-MAX_HOPS:]):
        if not any(current in network for network in trusted.networks):
            break  # `current` is the client: what is further left, it wrote itself
        hop = parse_ip(raw)
        if hop is None:
            break  # a trusted proxy passed on something that is not an address: stop at it
        current = hop
    return str(current)
