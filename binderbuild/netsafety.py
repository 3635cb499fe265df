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
from urllib.parse import urlsplit

from binderbuild.errors import SpecError, UnsafeURL

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(cidrs: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def is_internal(addr: IPAddress) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return is_internal(addr.ipv4_mapped)
    return (
        addr.is_private
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_multicast
        or addr.is_reserved
        or addr.is_unspecified
        or not addr.is_global
    )


def address_allowed(addr: IPAddress, allowed: Iterable[IPNetwork]) -> bool:
    if any(addr in net for net in allowed):
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


async def check_url(url: str, allowed: Iterable[IPNetwork]) -> None:
    """Raise UnsafeURL unless every address of the URL's host is allowed."""
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise SpecError(f"URL has no host: {url!r}")
    allowed = list(allowed)
    try:
        port = parts.port
    except ValueError:
        raise SpecError(f"URL has an invalid port: {url!r}") from None
    for addr in await resolve_host(host, port):
        if not address_allowed(addr, allowed):
            raise UnsafeURL(
                f"Refusing to fetch from {host}: it resolves to an internal address ({addr})."
                " Operators can allow it with BinderBuild.allowed_internal_networks."
            )
