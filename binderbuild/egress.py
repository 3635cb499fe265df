"""The egress filter of builds: a forward proxy that reaches only allowed addresses.

Resolving a spec checks the repository's host (``netsafety``), but the fetch
happens later, in repo2docker's process, and reaches much more than that one
host: git follows HTTP redirects, a repository's ``.gitmodules`` names any
URLs it likes, a host's DNS answer can change between the check and the clone
(DNS rebinding), and the HTTP-based content providers download whatever file
URLs a record lists. On a single machine that process runs next to the hub,
the registry and the cloud metadata service.

So the Docker builder starts one ``EgressProxy`` per build (on a Unix socket
mounted into the build sandbox, or on loopback for an unsandboxed build) and
points repo2docker's process at it (``http_proxy``/``https_proxy`` for git's
curl and for ``requests``; ``GIT_PROXY_COMMAND`` for ``git://``, which
tunnels through the same proxy with ``python -m binderbuild.egress HOST PORT``).
For every connection the proxy resolves the host itself, refuses it when any
address is internal (unless in ``allowed_networks``, the service's
``allowed_internal_networks``, or the name is in ``allowed_hosts``), and
connects to the very address it checked, so a second DNS answer never counts.

Supported: ``CONNECT host:port`` (https, and the git:// tunnel) and plain
``http://`` requests in absolute form, forwarded with ``Connection: close``
so that every request on a connection is checked (a client's next request
opens a new connection). Refusals are answered with 403 and kept in
``refusals`` for the build's failure message.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import selectors
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from binderbuild.errors import BinderBuildError
from binderbuild.netsafety import AllowRule, IPAddress, address_allowed, resolve_host

Resolver = Callable[[str, int | None], Awaitable[list[IPAddress]]]

ENV_PROXY = "BINDERBUILD_EGRESS_PROXY"

_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024
# Request headers that are about the hop to the proxy, not for the origin.
_HOP_HEADERS = frozenset({"proxy-connection", "proxy-authorization", "connection", "keep-alive"})

log = logging.getLogger("binderbuild.egress")


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _split_host_port(target: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` of a CONNECT request."""
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Refused(400, f"bad CONNECT target {target[:100]!r}")
    return host, int(port_text)


class EgressProxy:
    """One build's filtering forward proxy, listening on a free loopback port."""

    def __init__(
        self,
        allowed_networks: Iterable[AllowRule] = (),
        *,
        allowed_hosts: Iterable[str] = (),
        resolver: Resolver = resolve_host,
        connect_timeout: float = 10.0,
        head_timeout: float = 30.0,
    ) -> None:
        self.allowed_networks = list(allowed_networks)
        self.allowed_hosts = {h.lower().rstrip(".") for h in allowed_hosts if h}
        self.resolver = resolver
        self.connect_timeout = connect_timeout
        self.head_timeout = head_timeout
        self.refusals: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # --- lifecycle -----------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> EgressProxy:
        self._server = await asyncio.start_server(self._accept, host, 0, limit=_MAX_HEAD)
        return self

    async def start_unix(self, path: str) -> EgressProxy:
        """Listen on a Unix socket instead: a build sandbox has no network, and
        reaches the proxy through this socket mounted into its container."""
        self._server = await asyncio.start_unix_server(self._accept, path, limit=_MAX_HEAD)
        # The sandbox runs as another user; the socket is its only way out.
        os.chmod(path, 0o666)
        return self

    @property
    def address(self) -> str:
        if self._server is None:
            raise RuntimeError("EgressProxy is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> EgressProxy:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- the policy ------------------------------------------------------------

    async def _vetted_addresses(self, host: str, port: int) -> list[IPAddress]:
        name = host.lower().rstrip(".")
        try:
            addrs = await self.resolver(name, None)
        except BinderBuildError as exc:
            raise _Refused(502, exc.message) from None
        if not addrs:
            raise _Refused(502, f"{host} has no address")
        if name in self.allowed_hosts:
            return addrs
        for addr in addrs:
            if not address_allowed(addr, self.allowed_networks, port):
                raise _Refused(
                    403,
                    f"{host} resolves to an internal address ({addr}); builds may not "
                    "fetch from internal networks",
                )
        return addrs

    async def _connect(
        self, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last = ""
        for addr in await self._vetted_addresses(host, port):
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(str(addr), port), self.connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
        raise _Refused(502, f"could not connect to {host}:{port}: {last}")

    # --- one client connection -----------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except _Refused as exc:
            self._refuse(writer, exc)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.head_timeout)
        request_line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
        parts = request_line.split(" ")
        if len(parts) != 3:
            raise _Refused(400, "malformed request line")
        method, target, version = parts
        if method.upper() == "CONNECT":
            host, port = _split_host_port(target)
            up_reader, up_writer = await self._connect(host, port)
            self._writers.add(up_writer)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
        else:
            url = urlsplit(target)
            if url.scheme.lower() != "http" or not url.hostname:
                raise _Refused(400, "only CONNECT and absolute http:// requests are proxied")
            try:
                port = url.port or 80
            except ValueError:
                raise _Refused(400, "bad port") from None
            up_reader, up_writer = await self._connect(url.hostname, port)
            self._writers.add(up_writer)
            path = urlunsplit(("", "", url.path or "/", url.query, ""))
            kept = [
                line
                for line in header_lines
                if line.partition(":")[0].strip().lower() not in _HOP_HEADERS
            ]
            # One request per connection: a second one on this connection
            # would otherwise go to this origin unchecked, whatever its URL.
            out = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
            up_writer.write(out.encode("latin-1"))
        try:
            await self._relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()
            self._writers.discard(up_writer)

    @staticmethod
    async def _relay(
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
    ) -> None:
        """Copy both ways until the origin is done; a client EOF is passed on."""

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(_CHUNK):
                    dst.write(data)
                    await dst.drain()
                if dst.can_write_eof():
                    dst.write_eof()

        upload = asyncio.ensure_future(copy(client_reader, up_writer))
        try:
            await copy(up_reader, client_writer)
        finally:
            upload.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upload

    def _refuse(self, writer: asyncio.StreamWriter, exc: _Refused) -> None:
        if exc.status == 403:
            self.refusals.append(exc.reason)
        log.warning("egress refused: %s", exc.reason)
        body = f"binderbuild egress filter: {exc.reason}\n".encode()
        phrase = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}.get(exc.status, "Error")
        head = (
            f"HTTP/1.1 {exc.status} {phrase}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            writer.write(head.encode() + body)


# --- git:// through the proxy -------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def tunnel(proxy: str, host: str, port: str) -> int:
    """``GIT_PROXY_COMMAND``: connect stdin/stdout to ``host:port`` through ``proxy``.

    git runs the command with the host and port of a ``git://`` URL and
    speaks its protocol over our stdin/stdout. Returns the exit status.
    """
    proxy_host, _, proxy_port = proxy.rpartition(":")
    try:
        ipaddress.IPv6Address(host)
        target = f"[{host}]:{port}"
    except ValueError:
        target = f"{host}:{port}"
    sock = socket.create_connection((proxy_host, int(proxy_port)), timeout=60)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < _MAX_HEAD:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    status_line, _, _ = head.partition(b"\r\n")
    _, _, rest = head.partition(b"\r\n\r\n")
    if status_line.split(b" ")[1:2] != [b"200"]:
        reason = rest.decode(errors="replace").strip() or status_line.decode(errors="replace")
        sys.stderr.write(f"{reason}\n")
        return 1
    sock.settimeout(None)
    if rest:
        _write_all(1, rest)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(0, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is sock:
                data = sock.recv(_CHUNK)
                if not data:
                    return 0
                _write_all(1, data)
            else:
                data = os.read(0, _CHUNK)
                if data:
                    sock.sendall(data)
                else:
                    selector.unregister(0)
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_WR)


def main(argv: list[str]) -> int:
    proxy = os.environ.get(ENV_PROXY, "")
    if len(argv) != 2 or not proxy:
        sys.stderr.write(f"usage: {ENV_PROXY}=HOST:PORT python -m binderbuild.egress HOST PORT\n")
        return 2
    try:
        return tunnel(proxy, argv[0], argv[1])
    except OSError as exc:
        sys.stderr.write(f"binderbuild egress tunnel: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
