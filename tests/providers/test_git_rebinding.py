"""``git ls-remote`` connects to the address that was checked, and nothing else.

A host name whose DNS answer flips between an allowed and an internal address
(DNS rebinding) passed the check with one answer and gave git the other
(issue 11: ``[::1]`` reached in 11 of 40 tries). The provider now resolves
once, checks, and hands git the checked address. The resolver here flips on
every call, the name does not exist in real DNS (git cannot resolve it on its
own), and a canary listens on the internal address at the git server's ports.

Also: a refused internal host, a closed port and an unknown name read the
same to a client (no port oracle); only the log tells them apart.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from binderbuild.errors import ProviderError
from binderbuild.netsafety import parse_networks
from binderbuild.providers.git import GitRepoProvider
from tests.realservices import GitServer, free_port, make_repo

ALLOWED = "127.0.0.1"
INTERNAL = "127.0.0.2"
NAME = "rebind.binderbuild.invalid"


class Canary:
    """TCP listeners on the internal address that count connections."""

    def __init__(self, ports: list[int]) -> None:
        self.connections = 0
        self._socks = []
        for port in ports:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((INTERNAL, port))
            sock.listen(16)
            sock.settimeout(0.2)
            self._socks.append(sock)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._accept, args=(s,), daemon=True) for s in self._socks
        ]
        for t in self._threads:
            t.start()

    def _accept(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        for s in self._socks:
            s.close()


@pytest.fixture
def canary(git_server: GitServer) -> Iterator[Canary]:
    c = Canary([git_server.git_port, git_server.http_port])
    yield c
    c.close()


class FlippingResolver:
    """Answers ``first`` on the 1st, 3rd, ... call and ``second`` on the others."""

    def __init__(self, first: str, second: str) -> None:
        self.answers = [ipaddress.ip_address(first), ipaddress.ip_address(second)]
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int | None) -> list:
        answer = self.answers[len(self.calls) % 2]
        self.calls.append(host)
        return [answer]


def _spec(url: str, ref: str = "main") -> str:
    return f"{quote(url, safe='')}/{ref}"


@pytest.mark.parametrize("protocol", ["http", "git"])
async def test_flipping_dns_never_reaches_the_internal_address(git_server, canary, protocol):
    name = f"rebind-{secrets.token_hex(4)}"
    sha = make_repo(git_server.root, name, {"README.md": "x\n"})
    port = git_server.http_port if protocol == "http" else git_server.git_port
    url = f"{protocol}://{NAME}:{port}/{name}.git"
    resolver = FlippingResolver(ALLOWED, INTERNAL)
    provider = GitRepoProvider(
        allowed_internal_networks=parse_networks([f"{ALLOWED}/32"]), resolver=resolver
    )
    for _ in range(3):
        ref = await provider.resolve(_spec(url))
        assert ref.resolved_ref == sha
        assert ref.repo_url == url  # the build still gets the name, not the address
        # The next call would answer the internal address: start every
        # resolution on the allowed one, as a rebinding server would.
        if len(resolver.calls) % 2:
            resolver.calls.append("skip")
    assert canary.connections == 0


async def test_internal_first_answer_is_refused_before_git_runs(git_server, canary):
    url = f"http://{NAME}:{git_server.http_port}/anything.git"
    provider = GitRepoProvider(
        allowed_internal_networks=parse_networks([f"{ALLOWED}/32"]),
        resolver=FlippingResolver(INTERNAL, ALLOWED),
    )
    with pytest.raises(ProviderError, match="Could not reach the repository"):
        await provider.resolve(_spec(url))
    assert canary.connections == 0


async def test_refused_unreachable_and_unknown_hosts_read_the_same(caplog):
    port = free_port()
    loopback = parse_networks(["127.0.0.1/32"])

    async def unknown(host: str, port: int | None) -> list:
        raise OSError("Name or service not known")

    cases = {
        # not allowed: an internal address
        "refused": (GitRepoProvider(), f"git://127.0.0.1:{port}/x.git"),
        # allowed, but nothing listens
        "closed": (
            GitRepoProvider(allowed_internal_networks=loopback),
            f"git://127.0.0.1:{port}/x.git",
        ),
        "closed-http": (
            GitRepoProvider(allowed_internal_networks=loopback),
            f"http://127.0.0.1:{port}/x.git",
        ),
        # the name does not resolve
        "unknown": (GitRepoProvider(resolver=unknown), f"http://{NAME}:{port}/x.git"),
    }
    seen = {}
    with caplog.at_level(logging.INFO):
        for what, (provider, url) in cases.items():
            with pytest.raises(Exception) as info:
                await provider.resolve(_spec(url))
            error = info.value
            seen[what] = (
                type(error),
                getattr(error, "status", None),
                str(error).replace(url, "URL"),
            )
    assert len(set(seen.values())) == 1, seen
    kind, status, message = seen["refused"]
    assert kind is ProviderError and message == "Could not reach the repository at URL."
    # The operator's log keeps the reason.
    assert "internal address" in caplog.text
    assert "not known" in caplog.text


def test_git_is_told_the_checked_addresses_for_every_spelling_of_the_name():
    provider = GitRepoProvider()
    addresses = [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800::1")]
    url, pin = provider._pinned("https://Example.ORG./owner/repo.git", addresses)
    assert url == "https://Example.ORG./owner/repo.git"  # TLS still checks the name
    values = [pin[i + 1] for i in range(0, len(pin), 2)]
    assert set(values) == {
        f"http.curloptResolve={name}:443:93.184.216.34,[2606:2800::1]"
        for name in ("example.org", "example.org.")
    }
    url, pin = provider._pinned("git://example.org/repo.git", addresses)
    assert (url, pin) == ("git://93.184.216.34:9418/repo.git", [])


@pytest.mark.parametrize(
    "url", ["https://bücher.example/r.git", "https://ex%61mple.org/r.git", "https://a b.org/r"]
)
def test_host_names_git_would_rewrite_are_refused(url):
    from binderbuild.errors import SpecError

    with pytest.raises(SpecError):
        GitRepoProvider().parse(_spec(url))
