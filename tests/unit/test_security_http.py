"""Hosts named by strangers cannot make the service buffer huge answers.

CKAN sites, Dataverse installations and (with allowed_hosts) GitLab hosts are
chosen by whoever sends the launch URL; every API answer is read into memory.
A real HTTP server on loopback sends 40 MiB three ways (Content-Length,
chunked, until close); the shared client must give up at its limit with a
clear error, and still read ordinary answers.
"""

from __future__ import annotations

import asyncio

import pytest

from binderbuild.http import DEFAULT_MAX_BODY_SIZE, HttpClient, TransportError

HUGE = 40 * 1024 * 1024


async def _serve(mode: str) -> tuple[asyncio.Server, list[int]]:
    sent: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if mode == "small":
            writer.write(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}')
            await writer.drain()
            writer.close()
            return
        if mode == "length":
            writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {HUGE}\r\n\r\n".encode())
        elif mode == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        chunk = b"0" * 65536
        total = 0
        try:
            while total < HUGE:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if mode == "chunked" else chunk)
                await writer.drain()
                total += len(chunk)
            if mode == "chunked":
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sent.append(total)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, sent


async def _fetch(mode: str) -> object:
    server, _ = await _serve(mode)
    port = server.sockets[0].getsockname()[1]
    client = HttpClient()
    try:
        return await client.request("GET", f"http://127.0.0.1:{port}/api/3/action/package_show")
    except TransportError as exc:
        return exc
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("mode", ["length", "chunked", "until-close"])
def test_huge_answers_are_refused_with_a_clear_error(mode):
    assert HUGE > DEFAULT_MAX_BODY_SIZE
    result = asyncio.run(_fetch(mode))
    assert isinstance(result, TransportError), f"a {HUGE}-byte answer was accepted: {result!r}"
    assert "MiB" in result.message


def test_ordinary_answers_still_pass():
    result = asyncio.run(_fetch("small"))
    assert not isinstance(result, TransportError), result
    assert result.status == 200  # type: ignore[attr-defined]
    assert result.json() == {"ok": True}  # type: ignore[attr-defined]
