"""The per-IP rate limit cannot be dodged by changing one's address.

Spoofing X-Forwarded-For is covered by clientip (only trusted proxies are
believed); the other cheap dodge is IPv6, where a client owns a whole /64 and
can use a new address for every request.
"""

from __future__ import annotations

import asyncio

import pytest

from binderbuild.errors import RateLimited
from binderbuild.models import BuildRequest
from binderbuild.ratelimit import RateLimitCheck, RateLimiter


class FakeHandler:
    """What RateLimitCheck uses of a Tornado handler."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    def get_query_argument(self, name: str, default: str = "") -> str:
        return default

    def set_header(self, name: str, value: str) -> None:
        self.headers[name] = value


def admit(check: RateLimitCheck, ip: str) -> bool:
    request = BuildRequest(provider_id="gh", spec="o/r/HEAD", client_ip=ip)
    try:
        asyncio.run(check(FakeHandler(), request))  # type: ignore[arg-type]
    except RateLimited:
        return False
    return True


def test_fresh_addresses_in_one_ipv6_64_share_one_counter():
    check = RateLimitCheck(RateLimiter(limit=2))
    assert admit(check, "2001:db8:1:2::1")
    assert admit(check, "2001:db8:1:2::2")
    assert not admit(check, "2001:db8:1:2:ffff:ffff:ffff:fffe"), "a new address reset the limit"
    # Another /64 (another subscriber) has its own counter.
    assert admit(check, "2001:db8:1:3::1")


@pytest.mark.parametrize(("first", "second"), [("192.0.2.1", "192.0.2.2"), ("::ffff:192.0.2.1", "192.0.2.2")])
def test_ipv4_clients_are_still_counted_per_address(first, second):
    check = RateLimitCheck(RateLimiter(limit=1))
    assert admit(check, first)
    assert admit(check, second)
    assert not admit(check, first)


def test_ipv4_mapped_and_plain_forms_are_one_client():
    check = RateLimitCheck(RateLimiter(limit=1))
    assert admit(check, "::ffff:192.0.2.9")
    assert not admit(check, "192.0.2.9")
