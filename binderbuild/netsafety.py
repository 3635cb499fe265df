"""Refuse user-supplied URLs that point at internal addresses.

Repositories are untrusted: a spec like ``git/http%3A%2F%2F169.254.169.254...``
must not make the service (or its builder) fetch from the cloud metadata
service, the hub, the registry or anything else on a private network. The host
is resolved and *every* address it resolves to is checked; operators can allow
networks explicitly (tests allow 127.0.0.0/8 for their loopback git servers).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from binderbuild.errors import SpecError, UnsafeURL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


@dataclass(frozen=True)
class AllowedEndpoint:
    """An internal network, or one address and port, that fetches may reach."""

    network: IPNetwork
    port: int | None = None  # None: every port

    def admits(self, addr: IPAddress, port: int | None) -> bool:
        # ::ffff:a.b.c.d is the IPv4 address itself (the kernel connects to
        # it); other wrappings go through relays and are never "the allowed host".
        mapped = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
        inside = addr in self.network or (mapped is not None and mapped in self.network)
        return inside and (self.port is None or port == self.port)

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        host = self.network.network_address
        return f"[{host}]:{self.port}" if host.version == 6 else f"{host}:{self.port}"


def parse_allowed(entries: Iterable[str]) -> list[AllowedEndpoint]:
    """``10.0.0.0/8`` (a network, any port), ``127.0.0.1:9419`` or
    ``[::1]:9419`` (one address, one port). ValueError for anything else."""
    rules: list[AllowedEndpoint] = []
    for entry in entries:
        text = entry.strip()
        host, port = text, None
        if text.startswith("["):
            inside, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"not an address, [address]:port or network: {entry!r}")
            host, port = inside, rest[1:] or None
        elif text.count(":") == 1:
            host, port = text.split(":")
        number: int | None = None
        if port is not None:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"invalid port in {entry!r}")
            number = int(port)
            if "/" in host:
                raise ValueError(f"give an address with a port, or a network without: {entry!r}")
        rules.append(AllowedEndpoint(ipaddress.ip_network(host, strict=False), number))
    return rules


AllowRule = IPNetwork | AllowedEndpoint

# The port a URL without one connects to, by scheme.
DEFAULT_PORTS = {"http": 80, "https": 443, "git": 9418}


# IPv6 ranges that carry an IPv4 address inside them, and where it sits.
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use
_TEREDO = ipaddress.ip_network("2001::/32")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is a wrapping of one.

    IPv4-mapped (``::ffff:a.b.c.d``), IPv4-compatible (``::a.b.c.d``), 6to4
    (``2002:AABB:CCDD::/48``) and NAT64 (``64:ff9b::a.b.c.d``): a connection to
    any of them can end up at the IPv4 address inside.
    """
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in _NAT64 or (addr in _IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_internal(addr: IPAddress) -> bool:
    """Whether ``addr`` may be inside the deployment's networks.

    Besides the IPv4/IPv6 private, loopback, link-local, multicast, reserved
    and other non-global ranges: IPv6 addresses that wrap an internal IPv4
    address (see ``embedded_ipv4``), all Teredo addresses (they tunnel to an
    IPv4 address chosen by whoever owns the name) and local-use NAT64.
    """
    if isinstance(addr, ipaddress.IPv6Address):
        inner = embedded_ipv4(addr)
        if inner is not None and is_internal(inner):
            return True
        if addr in _TEREDO or addr in _NAT64_LOCAL:
            return True
        if addr.ipv4_mapped is not None:
            return False  # a mapped public IPv4 address is that public address
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    )


def address_allowed(
    addr: IPAddress, allowed: Iterable[AllowRule], port: int | None = None
) -> bool:
    """Whether a connection to ``addr`` (on ``port``) may be made: public
    addresses always, internal ones only when an allow rule admits them."""
    for rule in allowed:
        endpoint = rule if isinstance(rule, AllowedEndpoint) else AllowedEndpoint(rule)
        if endpoint.admits(addr, port):
            return True
    return not is_internal(addr)


async def resolve_host(host: str, port: int | None) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM), timeout=10
        )
    except (OSError, TimeoutError) as exc:
        raise SpecError(f"Cannot resolve host {host!r}: {exc}") from None
    # AF_INET/AF_INET6 socket addresses start with the host as a str (typeshed
    # also allows other families' int); str() only narrows the type.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


async def check_url(url: str, allowed: Iterable[AllowRule]) -> None:
    """Raise UnsafeURL unless every address of the URL's host is allowed."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise SpecError(f"URL has no host: {url!r}")
    allowed = list(allowed)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        raise SpecError(f"URL has an invalid port: {url!r}") from None
    for addr in await resolve_host(host, port):
        if not address_allowed(addr, allowed, port):
            raise UnsafeURL(
                f"Refusing to fetch from {host}: it resolves to an internal address ({addr})."
                " Operators can allow it with BinderBuild.allowed_internal_networks."
            )
