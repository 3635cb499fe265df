"""The builds' egress proxy: only allowed addresses, checked per connection.

Real sockets on loopback: 127.0.0.1 plays an allowed repository host and
127.0.0.2 (loopback too on Linux) an internal service that a build must never
reach. The real builds through it are in tests/integration/test_security.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys

from binderbuild.egress import ENV_PROXY, EgressProxy
from binderbuild.netsafety import IPAddress

ALLOWED = [ipaddress.ip_network("127.0.0.1/32")]
INTERNAL_IP = "127.0.0.2"


class Origin:
    """A tiny HTTP origin that records every request head it gets."""

    def __init__(self, host: str, body: bytes = b"hello") -> None:
        self.host = host
        self.body = body
        self.heads: list[str] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> Origin:
        self.server = await asyncio.start_server(self._handle, self.host, 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head.decode("latin-1"))
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body)
                )
                await writer.drain()
                if "connection: close" in head.decode("latin-1").lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _exchange(proxy: EgressProxy, data: bytes) -> bytes:
    host, port = proxy.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def run(coro):  # noqa: ANN001, ANN201 - tiny helper
    return asyncio.run(coro)


def test_plain_http_to_an_internal_address_is_refused():
    async def scenario() -> tuple[bytes, Origin, list[str]]:
        internal = await Origin(INTERNAL_IP).start()
        async with EgressProxy(ALLOWED) as proxy:
            answer = await _exchange(
                proxy,
                f"GET http://{INTERNAL_IP}:{internal.port}/latest/meta-data/ HTTP/1.1\r\n"
                f"Host: {INTERNAL_IP}:{internal.port}\r\n\r\n".encode(),
            )
            refusals = list(proxy.refusals)
        internal.close()
        return answer, internal, refusals

    answer, internal, refusals = run(scenario())
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"internal address" in answer
    assert internal.connections == 0
    assert refusals and INTERNAL_IP in refusals[0]


def test_plain_http_to_an_allowed_host_is_forwarded_in_origin_form():
    async def scenario() -> tuple[bytes, Origin]:
        origin = await Origin("127.0.0.1", b"repo").start()
        async with EgressProxy(ALLOWED) as proxy:
            answer = await _exchange(
                proxy,
                f"GET http://127.0.0.1:{origin.port}/r.git/info/refs?service=git-upload-pack "
                f"HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nProxy-Authorization: Basic eDp5\r\n"
                "Proxy-Connection: keep-alive\r\n\r\n".encode(),
            )
        origin.close()
        return answer, origin

    answer, origin = run(scenario())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"repo")
    head = origin.heads[0]
    assert head.startswith("GET /r.git/info/refs?service=git-upload-pack HTTP/1.1\r\n")
    assert "Proxy-" not in head
    assert "Connection: close" in head


def test_a_second_request_on_the_connection_cannot_switch_to_an_internal_host():
    async def scenario() -> tuple[Origin, Origin]:
        origin = await Origin("127.0.0.1").start()
        internal = await Origin(INTERNAL_IP).start()
        async with EgressProxy(ALLOWED) as proxy:
            await _exchange(
                proxy,
                (
                    f"GET http://127.0.0.1:{origin.port}/a HTTP/1.1\r\nHost: x\r\n\r\n"
                    f"GET http://{INTERNAL_IP}:{internal.port}/b HTTP/1.1\r\nHost: y\r\n\r\n"
                ).encode(),
            )
        origin.close()
        internal.close()
        return origin, internal

    origin, internal = run(scenario())
    assert internal.connections == 0
    # Whatever followed the first request went to the checked origin only.
    assert origin.heads[0].startswith("GET /a ")


def test_connect_is_checked_and_tunnels_when_allowed():
    async def scenario() -> tuple[bytes, bytes, Origin]:
        origin = await Origin("127.0.0.1", b"tunnelled").start()
        internal = await Origin(INTERNAL_IP).start()
        async with EgressProxy(ALLOWED) as proxy:
            refused = await _exchange(
                proxy, f"CONNECT {INTERNAL_IP}:{internal.port} HTTP/1.1\r\n\r\n".encode()
            )
            tunnelled = await _exchange(
                proxy,
                f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n"
                "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode(),
            )
        origin.close()
        internal.close()
        assert internal.connections == 0
        return refused, tunnelled, origin

    refused, tunnelled, origin = run(scenario())
    assert refused.startswith(b"HTTP/1.1 403")
    assert tunnelled.startswith(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK")
    assert tunnelled.endswith(b"tunnelled")


def test_names_are_resolved_by_the_proxy_and_every_address_counts():
    # A name whose DNS answer is (or becomes) internal is refused when the
    # proxy connects, whatever it resolved to when the spec was checked.
    async def resolver(host: str, port: int | None) -> list[IPAddress]:
        table = {
            "rebinding.example": ["93.184.216.34", INTERNAL_IP],
            "ghe.internal.example": [INTERNAL_IP],
        }
        return [ipaddress.ip_address(a) for a in table[host]]

    async def scenario() -> tuple[bytes, bytes, Origin]:
        internal = await Origin(INTERNAL_IP, b"enterprise").start()
        async with EgressProxy(ALLOWED, resolver=resolver) as proxy:
            refused = await _exchange(
                proxy, f"CONNECT rebinding.example:{internal.port} HTTP/1.1\r\n\r\n".encode()
            )
        # An operator-named host is reachable by its name only.
        async with EgressProxy(
            ALLOWED, resolver=resolver, allowed_hosts=["GHE.internal.example"]
        ) as proxy:
            allowed = await _exchange(
                proxy,
                f"GET http://ghe.internal.example:{internal.port}/ HTTP/1.1\r\nHost: g\r\n\r\n".encode(),
            )
        internal.close()
        return refused, allowed, internal

    refused, allowed, internal = run(scenario())
    assert refused.startswith(b"HTTP/1.1 403")
    assert allowed.endswith(b"enterprise")
    assert internal.connections == 1


async def _git_tunnel(proxy: EgressProxy, host: str, port: int, data: bytes) -> tuple[int, bytes, bytes]:
    env = {**os.environ, ENV_PROXY: proxy.address}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "binderbuild.egress",
        host,
        str(port),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(data), 20)
    return proc.returncode or 0, out, err


def test_git_proxy_command_tunnels_through_the_filter():
    async def scenario() -> tuple[tuple[int, bytes, bytes], tuple[int, bytes, bytes], Origin]:
        origin = await Origin("127.0.0.1", b"git-daemon-ish").start()
        internal = await Origin(INTERNAL_IP).start()
        async with EgressProxy(ALLOWED) as proxy:
            ok = await _git_tunnel(
                proxy, "127.0.0.1", origin.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
            )
            refused = await _git_tunnel(proxy, INTERNAL_IP, internal.port, b"hello")
        origin.close()
        internal.close()
        assert internal.connections == 0
        return ok, refused, origin

    ok, refused, origin = run(scenario())
    assert ok[0] == 0, ok[2]
    assert ok[1].endswith(b"git-daemon-ish")
    assert refused[0] != 0
    assert b"internal address" in refused[2]
