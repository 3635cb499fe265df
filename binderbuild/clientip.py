"""Who is the client? Peer addresses, trusted proxies and banned networks.

Behind a load balancer every request comes from the balancer's address; the
client's own address is in ``X-Forwarded-For``. That header is written by
whoever sent the request, so it is believed only when the peer is one of the
operator's proxies (``BinderBuild.trusted_proxies``). The list is walked from
the right: each trusted proxy appended the address it saw, and the first
address that is not a trusted proxy is the client. Anything a client wrote
further left is ignored, so a client cannot pick the IP it is counted as.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from binderbuild.netsafety import IPAddress, IPNetwork, parse_networks

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest


def parse_ip(value: str) -> IPAddress | None:
    """An address from a header or socket, or None when it is not one."""
    value = value.strip().strip('"')
    # "[::1]:1234" / "1.2.3.4:5678" forms some proxies write.
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ClientIPResolver:
    """Maps a request to its client IP (``Services.client_ip_resolver``)."""

    def __init__(self, trusted_proxies: Iterable[str] = ()) -> None:
        self.trusted: list[IPNetwork] = parse_networks(trusted_proxies)

    def _is_trusted(self, addr: IPAddress) -> bool:
        return any(addr in net for net in self.trusted)

    def resolve(self, peer: str, headers: Mapping[str, str] | None = None) -> str:
        peer_addr = parse_ip(peer)
        if peer_addr is None:
            return peer
        if not self.trusted or not self._is_trusted(peer_addr) or headers is None:
            return str(peer_addr)
        client = peer_addr
        hops: list[str] = []
        for value in _header_values(headers, "X-Forwarded-For"):
            hops.extend(part for part in value.split(",") if part.strip())
        for hop in reversed(hops):
            addr = parse_ip(hop)
            if addr is None:
                # Garbage in the chain: stop at the last address a trusted
                # proxy vouched for rather than guess further left.
                break
            client = addr
            if not self._is_trusted(addr):
                break
        return str(client)

    def __call__(self, request: HTTPServerRequest) -> str:
        return self.resolve(request.remote_ip or "", request.headers)


def _header_values(headers: Mapping[str, str], name: str) -> list[str]:
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:  # tornado HTTPHeaders keeps repeated headers
        return list(get_list(name))
    value = headers.get(name)
    return [value] if value else []


class BannedNetworks:
    """BinderHub's ``ban_networks``: CIDR -> label; requests from them get 403."""

    def __init__(self, networks: Mapping[str, str]) -> None:
        self.networks: list[tuple[IPNetwork, str]] = [
            (ipaddress.ip_network(cidr, strict=False), label) for cidr, label in networks.items()
        ]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def match(self, ip: str) -> str | None:
        """The label of the banned network ``ip`` is in, or None."""
        addr = parse_ip(ip)
        if addr is None:
            return None
        for net, label in self.networks:
            if addr.version == net.version and addr in net:
                return label or str(net)
        return None
