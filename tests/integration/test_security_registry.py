"""A Dockerfile's image references never make the Docker daemon connect inside.

``FROM host:port/image`` and ``COPY --from=host:port/image`` make the daemon
itself contact that registry (from the host's network, whatever the build
network), and its answer used to be echoed into the public build log
(issue 11, finding 4). Here the "registry" is a canary: a TCP listener on
loopback that counts connections. The build must fail with the policy's
message and the canary must see nothing; when the operator lists the canary
as an allowed internal registry, the daemon does contact it (so the canary
would have seen an unguarded build).
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from tests.conftest import service_config
from tests.realservices import dockerfile_repo_files, make_repo
from tests.sse import read_events

pytestmark = [pytest.mark.docker]

ONLY_THE_GIT_SERVER = "c.BinderBuild.allowed_internal_networks = ['127.0.0.1/32']"


class Canary:
    """Counts TCP connections to 127.0.0.1:port and closes them."""

    def __init__(self) -> None:
        self.connections = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


def _repo(git_server, dockerfile: str) -> str:
    files = dockerfile_repo_files(secrets.token_hex(6))
    files["Dockerfile"] = dockerfile
    name = f"sec-registry-{secrets.token_hex(4)}"
    make_repo(git_server.root, name, files)
    return git_server.git_url(name)


def _build(service, clone_url: str) -> tuple[dict, str]:
    spec = f"{quote(clone_url, safe='')}/main"
    result = read_events(f"{service.url}/build/git/{spec}?build_only=true", timeout=300)
    assert result.status == 200, result.body
    log = "".join(e.get("message", "") for e in result.events)
    return result.final, log


def _dockerfiles(registry: str) -> dict[str, str]:
    fixture = dockerfile_repo_files("x")["Dockerfile"]
    return {
        "from": f"FROM {registry}/binderbuild/stolen:latest\n" + fixture.split("\n", 2)[2],
        "copy-from": fixture + f"COPY --from={registry}/binderbuild/stolen /etc/passwd /tmp/p\n",
        "split-from": f"FROM {registry[:5]}\\\n{registry[5:]}/x\n" + fixture.split("\n", 2)[2],
    }


@pytest.mark.parametrize("case", ["from", "copy-from", "split-from"])
def test_image_on_a_loopback_registry_is_refused_before_the_daemon_is_called(
    start_service, docker_client, git_server, canary, case
):
    service = start_service(service_config(None, ONLY_THE_GIT_SERVER))
    registry = f"127.0.0.1:{canary.port}"
    url = _repo(git_server, _dockerfiles(registry)[case])

    final, log = _build(service, url)

    assert canary.connections == 0, "the Docker daemon contacted the internal registry"
    assert final["phase"] == "failed", final
    assert registry in final["message"] and "internal address" in final["message"], final


def test_an_allowed_internal_registry_is_contacted(
    start_service, docker_client, git_server, canary
):
    # The control: with the canary allowed, the daemon does try to pull from
    # it, so a zero above means the policy stopped it.
    registry = f"127.0.0.1:{canary.port}"
    service = start_service(
        service_config(
            None,
            ONLY_THE_GIT_SERVER + f"\nc.DockerBuilder.allowed_internal_registries = [{registry!r}]",
        )
    )
    url = _repo(git_server, _dockerfiles(registry)["from"])

    final, _log = _build(service, url)

    assert final["phase"] == "failed", final
    assert canary.connections > 0
