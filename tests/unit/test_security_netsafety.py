"""Internal IPv4 addresses wrapped in IPv6 are internal (issue 11, finding 5).

A URL host such as ``[2002:7f00:1::]`` or ``[::ffff:127.0.0.1]`` reaches the
same service as ``127.0.0.1`` (6to4 relays and the kernel's IPv4-mapped
sockets unwrap them), so the check must unwrap them too.
"""

from __future__ import annotations

import ipaddress

import pytest

from binderbuild.netsafety import address_allowed, is_internal, parse_allowed, parse_networks

INTERNAL = [
    "127.0.0.1",
    "10.1.2.3",
    "169.254.169.254",
    "::1",
    "fd00::1",
    "fe80::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible (deprecated)
    "::a00:1",
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:7f00:1:abcd::1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::1",  # 6to4 of 192.168.1.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64 (RFC 8215)
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001::1",  # Teredo
]

PUBLIC = [
    "93.184.216.34",
    "2606:4700::1111",
    "2002:5db8:d822::1",  # 6to4 of the public 93.184.216.34
    "2a00:1450:4001:80b::200e",
]


@pytest.mark.parametrize("address", INTERNAL)
def test_internal_addresses_and_their_ipv6_wrappings(address):
    assert is_internal(ipaddress.ip_address(address))
    assert not address_allowed(ipaddress.ip_address(address), [])


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_stay_public(address):
    assert not is_internal(ipaddress.ip_address(address))


def test_an_allowed_network_allows_its_ipv4_mapped_form_but_not_6to4():
    loopback = parse_networks(["127.0.0.1/32"])
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), loopback)
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), loopback)
    # A 6to4 address goes to a relay, not to the allowed host.
    assert not address_allowed(ipaddress.ip_address("2002:7f00:1::"), loopback)
    assert not address_allowed(ipaddress.ip_address("127.0.0.2"), loopback)


def test_address_and_port_rules() -> None:
    rules = parse_allowed(["127.0.0.1:9419", "[::1]:8080", "10.1.0.0/16"])
    loop4, loop6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    assert address_allowed(loop4, rules, 9419)
    assert not address_allowed(loop4, rules, 8081)  # the hub's API on the same address
    assert not address_allowed(loop4, rules, None)  # a port must be known to match
    assert address_allowed(ipaddress.ip_address("::ffff:127.0.0.1"), rules, 9419)
    assert address_allowed(loop6, rules, 8080) and not address_allowed(loop6, rules, 5000)
    assert address_allowed(ipaddress.ip_address("10.1.2.3"), rules, 1234)  # network: any port
    assert not address_allowed(ipaddress.ip_address("127.0.0.2"), rules, 9419)
    assert [str(r) for r in rules] == ["127.0.0.1:9419", "[::1]:8080", "10.1.0.0/16"]


@pytest.mark.parametrize("entry", ["127.0.0.1:0", "127.0.0.1:99999", "10.0.0.0/8:22", "[::1", "nope"])
def test_bad_allow_rules_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_allowed([entry])
