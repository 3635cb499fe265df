"""The build sandbox as data, its output as hostile input, and its way out.

The real sandbox runs in tests/integration/test_build_sandbox.py; here: the
container's description (user, capabilities, network, mounts), the trusted
step's reading of what a sandbox wrote (symlinks, sizes, parameters), the
export mode's build context, and the relay from the container's loopback to
the egress proxy's Unix socket.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_network
from pathlib import Path

import pytest

from binderbuild.builders import sandbox
from binderbuild.builders.dockerfile_policy import DockerfilePolicyError
from binderbuild.builders.r2d_engine import write_context
from binderbuild.builders.sandbox_entry import start_relay
from binderbuild.builders.sandbox_output import (
    SandboxOutputError,
    check_context,
    open_regular,
    parse_params,
    read_params,
)
from binderbuild.egress import EgressProxy

TAG = "127.0.0.1:5000/binder-x:abc"
# Host paths as data only: nothing is created there.
BOX = "/var/lib/binderbuild-x/box"
EGRESS = "/var/lib/binderbuild-x/egress"


def args(egress: bool = True) -> dict:
    env = sandbox.sandbox_env(proxied=egress, extra=({"DOCKER_HOST": "x"},))
    return sandbox.container_args(
        image="binderbuild/builder:local",
        r2d_args=["--json-logs", "--", "https://example.org/r.git"],
        env=env,
        work_dir=BOX,
        egress_dir=EGRESS if egress else None,
        network="isolated-builds",
        memory_limit=2 << 30,
        pids_limit=512,
        image_name=TAG,
    )


def test_the_sandbox_is_unprivileged_offline_and_without_the_socket() -> None:
    a = args()
    assert a["user"] == "1000:1000"
    assert a["cap_drop"] == ["ALL"] and "cap_add" not in a and "privileged" not in a
    assert a["security_opt"] == ["no-new-privileges"] and a["read_only"] is True
    assert a["network_mode"] == "none"
    assert a["mem_limit"] == a["memswap_limit"] == 2 << 30 and a["pids_limit"] == 512
    mounts = {m["Target"]: m for m in a["mounts"]}
    assert set(mounts) == {"/work", "/run/binderbuild"}
    assert mounts["/work"]["Source"] == BOX and not mounts["/work"]["ReadOnly"]
    assert mounts["/run/binderbuild"]["ReadOnly"]
    assert "docker.sock" not in json.dumps(a)
    assert a["command"][:3] == ["python", "-m", "binderbuild.builders.sandbox_entry"]
    env = a["environment"]
    assert env["https_proxy"] == env["HTTP_PROXY"] == "http://127.0.0.1:3128"
    assert env["BINDERBUILD_SANDBOX_EGRESS_SOCKET"] == "/run/binderbuild/egress.sock"
    assert env["BINDERBUILD_ENGINE_EXPORT_DIR"] == "/work/out"
    assert not any("REGISTRY" in k for k in env)


def test_without_the_egress_filter_the_sandbox_uses_the_build_network() -> None:
    a = args(egress=False)
    assert a["network_mode"] == "isolated-builds"
    assert [m["Target"] for m in a["mounts"]] == ["/work"]
    assert "http_proxy" not in a["environment"]


# --- the sandbox's output, read by the trusted step ---------------------------------------


def params(**changes: object) -> dict:
    base = {
        "tag": TAG,
        "buildargs": {"NB_USER": "jovyan", "NB_UID": "1000"},
        "labels": {"repo2docker.repo": "https://example.org/r.git"},
        "dockerfile": "binder/Dockerfile",
        "platform": "linux/amd64",
    }
    base.update(changes)
    return base


def test_good_parameters_are_read() -> None:
    p = parse_params(params(), TAG)
    assert p.dockerfile == "binder/Dockerfile" and p.buildargs["NB_UID"] == "1000"


@pytest.mark.parametrize(
    "change",
    [
        {"tag": "127.0.0.1:5000/someone-else:latest"},
        {"dockerfile": "../Dockerfile"},
        {"dockerfile": "/etc/shadow"},
        {"buildargs": {"A B": "x"}},
        {"buildargs": {"X": 1}},
        {"labels": {"x": "y" * 10000}},
        {"platform": "linux/amd64 --network=host"},
        {"buildargs": {f"A{i}": "x" for i in range(100)}},
    ],
)
def test_parameters_a_sandbox_should_not_choose_are_refused(change: dict) -> None:
    with pytest.raises(SandboxOutputError):
        parse_params(params(**change), TAG)


def test_output_files_must_be_regular_files(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("{}")
    (tmp_path / "build.json").symlink_to(secret)
    with pytest.raises(SandboxOutputError, match="not a file"):
        read_params(str(tmp_path), TAG)
    os.mkfifo(tmp_path / "context.tar")
    with pytest.raises(SandboxOutputError, match="regular"):
        open_regular(str(tmp_path / "context.tar"), 1 << 20)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(SandboxOutputError, match="larger"):
        open_regular(str(big), 1024)


def _tar(members: list[tarfile.TarInfo], data: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(data[info.name]) if info.isreg() else None)
    buf.seek(0)
    return buf


def test_the_dockerfile_must_be_a_regular_member_of_the_context() -> None:
    reg = tarfile.TarInfo("Dockerfile")
    reg.size = 4
    check_context(_tar([reg], {"Dockerfile": b"FROM"}), "Dockerfile")
    link = tarfile.TarInfo("Dockerfile")
    link.type, link.linkname = tarfile.SYMTYPE, "sub/../Other"
    with pytest.raises(SandboxOutputError, match="regular"):
        check_context(_tar([link], {}), "Dockerfile")
    with pytest.raises(SandboxOutputError, match="not in the build context"):
        check_context(_tar([reg], {"Dockerfile": b"FROM"}), "binder/Dockerfile")
    with pytest.raises(SandboxOutputError, match="not a tar"):
        check_context(io.BytesIO(b"not a tar at all" * 100), "Dockerfile")


# --- export mode: the context the sandbox writes -------------------------------------------


def test_export_materializes_a_symlinked_dockerfile(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    (repo / "docker" / "real").write_text("FROM scratch\n")
    (repo / "Dockerfile").symlink_to("docker/real")
    (repo / "data").symlink_to("/etc/passwd")
    (repo / ".dockerignore").write_text("ignored.txt\n")
    (repo / "ignored.txt").write_text("x")
    dest = tmp_path / "context.tar"
    write_context(str(repo), "Dockerfile", str(dest))
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        dockerfile = tar.getmember("Dockerfile")
        assert dockerfile.isreg()
        assert tar.extractfile(dockerfile).read() == b"FROM scratch\n"  # type: ignore[union-attr]
        # Other symlinks stay symlinks: the daemon resolves them in the context.
        assert tar.getmember("data").issym()
    assert "ignored.txt" not in names


def test_export_refuses_a_dockerfile_pointing_outside(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Dockerfile").symlink_to("/etc/hostname")
    with pytest.raises(DockerfilePolicyError, match="outside"):
        write_context(str(repo), "Dockerfile", str(tmp_path / "c.tar"))


# --- the way out: container loopback -> relay -> Unix socket -> egress proxy -----------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = b"hello through the relay\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_the_relay_reaches_the_egress_proxy_over_its_unix_socket(tmp_path: Path) -> None:
    origin = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    path = str(tmp_path / "egress.sock")

    async def scenario() -> tuple[bytes, bytes]:
        proxy = EgressProxy([ip_network("127.0.0.1/32")])
        await proxy.start_unix(path)
        assert os.stat(path).st_mode & 0o777 == 0o666
        listener = start_relay(path, "127.0.0.1", 0)
        port = listener.getsockname()[1]

        def get(url: str) -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                chunks = []
                while data := s.recv(4096):
                    chunks.append(data)
                return b"".join(chunks)

        try:
            allowed = await asyncio.to_thread(get, f"http://127.0.0.1:{origin.server_address[1]}/")
            refused = await asyncio.to_thread(get, "http://127.0.0.2:9/")
        finally:
            listener.close()
            await proxy.close()
        return allowed, refused

    try:
        allowed, refused = asyncio.run(scenario())
    finally:
        origin.shutdown()
        origin.server_close()
    assert allowed.startswith(b"HTTP/1.0 200") and b"hello through the relay" in allowed
    assert refused.startswith(b"HTTP/1.1 403")
