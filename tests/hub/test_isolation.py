"""Issue 11, finding 3: a launched server must not take over the deployment.

A Dockerfile repository that ends with ``USER root`` is built by binderbuild
(pushing to a registry that demands credentials), launched on a real hub and
then probed from inside its own container with ``docker exec``: running
commands in the container is the test's privilege, what those commands can do
is the server's. The server must run as uid 1000 with no capabilities and
``no-new-privileges``, on the project's internal network, within its memory,
CPU and PID limits, and reach nothing on the host's loopback: not the proxy
API, the registry, binderbuild or a canary listener this test opens. It can
reach the hub's API (jupyterhub-singleuser needs it to check tokens), where
its own token has only its own scopes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from binderbuild.hubconfig.network import DEFAULT_SERVER_NETWORK
from binderbuild.models import LaunchResult
from tests.hub.conftest import fake_request
from tests.hub.test_spawner import launch_once
from tests.hubservice import HubService, HubUnavailable
from tests.realservices import (
    NOTEBOOK_BASE_IMAGE,
    RegistryServer,
    _http_status,
    build_context_image,
)
from tests.service import BinderBuildService

pytestmark = [pytest.mark.hub, pytest.mark.docker, pytest.mark.registry]

MEM_LIMIT = "256M"
PIDS_LIMIT = 128

# What each probe inside the container prints: one JSON line per target.
PROBE = r"""
import json, socket, sys
out = {}
for label, host, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        out[label] = "connected"
    except OSError as exc:
        out[label] = type(exc).__name__ + ": " + str(exc)
    finally:
        s.close()
print(json.dumps(out))
"""

HUB_API = r"""
import json, os, sys, urllib.request, urllib.error
api = os.environ["JUPYTERHUB_API_URL"].rstrip("/") + "/"
token = os.environ["JUPYTERHUB_API_TOKEN"]
out = {}
def call(label, path, method="GET", auth=True, body=None):
    headers = {"Authorization": "token " + token} if auth else {}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(api + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            out[label] = [resp.status, json.loads(resp.read() or b"null")]
    except urllib.error.HTTPError as exc:
        out[label] = [exc.code, None]
    except OSError as exc:
        out[label] = [0, str(exc)]
call("whoami", "user")
call("list_users", "users")
call("list_users_anonymous", "users", auth=False)
call("other_user_token", "users/" + sys.argv[1] + "/tokens", "POST", body={})
call("proxy_routes", "proxy")
print(json.dumps(out))
"""


def wait_for(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Canary:
    """A TCP listener on the host's loopback that records every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except OSError:
                continue
            self.connections.append(addr)
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@dataclass
class Launched:
    hub: HubService
    registry: RegistryServer
    service: BinderBuildService
    image: str
    result: LaunchResult
    container: Any
    canary: Canary

    def exec(self, *cmd: str) -> tuple[int, str]:
        code, output = self.container.exec_run(list(cmd), demux=False)
        return code, (output or b"").decode(errors="replace")

    def python(self, script: str, *args: str) -> tuple[int, str]:
        return self.exec("python3", "-c", script, *args)


def root_dockerfile(marker: str) -> str:
    """A Dockerfile repository's Dockerfile that asks to run as root, and
    tells Jupyter to allow it, as an attacker would."""
    return "\n".join(
        [
            f"FROM {NOTEBOOK_BASE_IMAGE}",
            "USER root",
            f"RUN echo {marker} > /srv/binderbuild-marker",
            'CMD ["jupyterhub-singleuser", "--allow-root"]',
            "",
        ]
    )


def build_and_push(
    docker_client: Any, registry: RegistryServer, name: str, dockerfile: str
) -> None:
    """What the Dockerfile buildpack does (docker build of the repository's
    Dockerfile, no network), then a push with the registry's credentials."""
    build_context_image(docker_client, name, {"Dockerfile": dockerfile.encode()})
    assert registry.htpasswd is not None
    user, password = registry.htpasswd
    lines = list(
        docker_client.api.push(
            name, stream=True, decode=True, auth_config={"username": user, "password": password}
        )
    )
    assert not [line for line in lines if "error" in line], lines


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("isolation")


@pytest.fixture(scope="module")
def auth_registry(workdir: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(
        workdir / "registry",
        htpasswd=(f"bbiso-{secrets.token_hex(3)}", f"pw-{secrets.token_hex(12)}"),
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def launched(
    workdir: Path, auth_registry: RegistryServer, docker_client: Any
) -> Iterator[Launched]:
    assert auth_registry.htpasswd is not None
    user, password = auth_registry.htpasswd
    prefix = f"{auth_registry.host}/bbiso-"
    image = f"{prefix}root-{secrets.token_hex(4)}:1"
    build_and_push(docker_client, auth_registry, image, root_dockerfile(secrets.token_hex(6)))
    creds = workdir / "registry-credentials"
    creds.write_text(f"{user}:{password}\n")
    creds.chmod(0o600)
    try:
        hub = HubService(
            workdir / "hub",
            [prefix],
            pull_policy="ifnotpresent",
            registry_credentials_file=creds,
            extra=(
                f"c.BinderDockerSpawner.mem_limit = {MEM_LIMIT!r}\n"
                f"c.BinderDockerSpawner.pids_limit = {PIDS_LIMIT}\n"
            ),
        ).start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    # A binderbuild service on this hub and registry: one more loopback
    # service of the deployment that the server must not reach.
    config = (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.use_registry = True\n"
        f"c.BinderBuild.image_prefix = {prefix!r}\n"
        f"c.DockerRegistry.url = {auth_registry.url!r}\n"
        f"c.DockerRegistry.username = {user!r}\n"
        f"c.DockerRegistry.password = {password!r}\n" + hub.binderbuild_config()
    )
    service = BinderBuildService(workdir / "svc", config).start()
    canary = Canary()
    try:
        _, result = asyncio.run(launch_once(hub, fake_request(image)))
        assert isinstance(result, LaunchResult), (result, hub.log_tail())
        object_name = hub.user(result.user)["servers"][""]["state"]["object_name"]
        container = docker_client.containers.get(object_name)
        yield Launched(hub, auth_registry, service, image, result, container, canary)
    finally:
        canary.close()
        service.stop()
        hub.stop()
        hub.remove_containers(docker_client)


def test_server_runs_unprivileged_whatever_the_image_asks(launched: Launched) -> None:
    code, out = launched.exec("id", "-u")
    assert code == 0 and out.strip() == "1000", out
    code, out = launched.exec("cat", "/proc/self/status")
    assert code == 0, out
    status = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert int(status["CapEff"].strip(), 16) == 0, status["CapEff"]
    assert int(status["CapPrm"].strip(), 16) == 0, status["CapPrm"]
    assert status["NoNewPrivs"].strip() == "1", status["NoNewPrivs"]
    # No Docker socket anywhere the server could look.
    code, out = launched.exec("sh", "-c", "ls /var/run/docker.sock /run/docker.sock 2>&1")
    assert code != 0, out
    host = launched.container.attrs["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
    assert not host["Privileged"]
    assert "no-new-privileges" in (host.get("SecurityOpt") or [])
    assert not [b for b in host.get("Binds") or [] if "docker.sock" in b]
    assert launched.container.attrs["Config"]["User"] == "1000:1000"


def test_server_has_memory_cpu_and_pid_limits(launched: Launched) -> None:
    host = launched.container.attrs["HostConfig"]
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["MemorySwap"] == host["Memory"]  # no swap beyond the limit
    assert host["PidsLimit"] == PIDS_LIMIT
    assert host["CpuQuota"] == 100_000 and host["CpuPeriod"] == 100_000  # 1 CPU
    # An allocation beyond the limit is killed (SIGKILL: 137), not granted.
    code, out = launched.python("x = 'x' * (400 << 20); print('survived', len(x))")
    assert code == 137, (code, out)
    assert "survived" not in out
    # The server itself is still there afterwards.
    launched.container.reload()
    assert launched.container.status == "running"


def test_server_is_on_the_internal_network_not_the_hosts(launched: Launched) -> None:
    networks = launched.container.attrs["NetworkSettings"]["Networks"]
    assert launched.container.attrs["HostConfig"]["NetworkMode"] == DEFAULT_SERVER_NETWORK
    assert list(networks) == [DEFAULT_SERVER_NETWORK]
    # The server listens on its container address, where the proxy reaches it.
    assert launched.container.attrs["Args"][-2:] == ["--ip=0.0.0.0", "--port=8888"]


def test_server_reaches_no_loopback_service_of_the_host(launched: Launched) -> None:
    hub = launched.hub
    gateway = hub.config.hub_ip
    assert gateway and not gateway.startswith("127."), gateway
    services = {
        "proxy_api": hub.config.proxy_api_port,
        "proxy_public": hub.config.port,
        "registry": launched.registry.port,
        "binderbuild": launched.service.port,
        "canary": launched.canary.port,
    }
    # The host's services answer the host itself (the probe is meaningful)...
    for port in services.values():
        with socket.create_connection(("127.0.0.1", port), timeout=3):
            pass
    wait_for(lambda: len(launched.canary.connections) == 1, "the canary to see the host")
    seen_from_host = list(launched.canary.connections)
    # ...but not the server: neither on the loopback address nor at the
    # host's address on the servers' network.
    targets = [[f"{label}@loopback", "127.0.0.1", port] for label, port in services.items()]
    targets += [[f"{label}@gateway", gateway, port] for label, port in services.items()]
    code, out = launched.python(PROBE, json.dumps(targets))
    assert code == 0, out
    results = json.loads(out.strip().splitlines()[-1])
    connected = {label: r for label, r in results.items() if r == "connected"}
    assert not connected, results
    launched.canary.close()
    assert launched.canary.connections == seen_from_host, launched.canary.connections


def test_server_token_has_only_its_own_scopes_on_the_hub_api(launched: Launched) -> None:
    name = launched.result.user
    other = f"victim-{secrets.token_hex(3)}"
    assert launched.hub.api("POST", f"users/{other}")[0] == 201
    try:
        code, out = launched.python(HUB_API, other)
        assert code == 0, out
        results = json.loads(out.strip().splitlines()[-1])
        # The server needs the hub API, and reaches it with its own identity...
        assert results["whoami"][0] == 200, results
        assert results["whoami"][1]["name"] == name
        # ...and nothing more.
        assert results["list_users"][0] == 403, results
        assert results["list_users_anonymous"][0] == 403, results
        assert results["other_user_token"][0] in (403, 404), results
        assert results["proxy_routes"][0] == 403, results
    finally:
        launched.hub.delete_user(other)


def test_registry_demands_credentials_and_only_the_engine_has_them(
    launched: Launched, docker_client: Any
) -> None:
    registry = launched.registry
    image = launched.image
    # No credentials in the server's environment or command line.
    attrs = launched.container.attrs
    assert registry.htpasswd is not None
    password = registry.htpasswd[1]
    assert password not in json.dumps(attrs)
    code, out = launched.exec("sh", "-c", "cat /proc/1/environ | tr '\\0' '\\n'; env")
    assert password not in out
    # Without credentials the registry answers nothing useful.
    assert _http_status(f"{registry.url}/v2/") == 401
    repo, tag = image.rsplit(":", 1)
    path = repo.split("/", 1)[1]
    assert _http_status(f"{registry.url}/v2/{path}/manifests/{tag}") == 401
    assert _http_status(f"{registry.url}/v2/{path}/manifests/{tag}", registry.auth_headers()) in (
        200,
        404,  # a manifest type the plain request does not accept
    )
    # An unauthenticated push (the engine without the credentials) is refused.
    stolen = f"{registry.host}/bbiso-overwritten:{secrets.token_hex(3)}"
    docker_client.images.get(image).tag(stolen)
    try:
        lines = list(docker_client.api.push(stolen, stream=True, decode=True, auth_config={}))
        errors = [line for line in lines if "error" in line]
        assert errors, lines
    finally:
        docker_client.images.remove(stolen)


def test_hub_pulls_with_its_credentials(launched: Launched, docker_client: Any) -> None:
    """The image gone from the engine, a second launch makes the hub's spawner
    pull it from the authenticated registry."""
    # Running containers keep their image; only the name goes.
    docker_client.images.remove(launched.image, force=True)
    _, again = asyncio.run(launch_once(launched.hub, fake_request(launched.image)))
    assert isinstance(again, LaunchResult), (again, launched.hub.log_tail())
    docker_client.images.get(launched.image)
    launched.hub.delete_user(again.user)
