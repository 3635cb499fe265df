"""repo2docker with binderbuild's Docker Engine API engine, for real.

Each test runs repo2docker as binderbuild does (the argv and config file
from r2d_command, as an asyncio subprocess) against a git daemon and a
registry on loopback, and checks the exit code, the JSON log lines and what
arrived in the registry. The repositories are Dockerfile repositories
``FROM`` the local notebook base image, so builds need no network and run
with the default build network ``none``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from binderbuild.builders.r2d_command import repo2docker_argv, repo2docker_config_text
from tests.realservices import (
    FAILURE_MESSAGE,
    NOTEBOOK_BASE_IMAGE,
    GitServer,
    RegistryServer,
    docker_available,
    dockerfile_repo_files,
    make_repo,
)

pytestmark = pytest.mark.docker

BUILD_TIMEOUT = 300


@dataclass
class R2dRun:
    returncode: int
    records: list[dict[str, Any]] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        return [str(r.get("message", "")) for r in self.records]

    def phases(self) -> set[str]:
        return {r["phase"] for r in self.records if "phase" in r}

    def text(self) -> str:
        """Everything repo2docker printed, for assertion messages."""
        return "\n".join([json.dumps(r) for r in self.records] + self.other_lines)


async def _run(argv: list[str], env: dict[str, str]) -> R2dRun:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    result = R2dRun(returncode=-1)

    async def read(stream: asyncio.StreamReader) -> None:
        # repo2docker writes its JSON log lines to stderr; stdout is read
        # too so that neither pipe can fill up and stall the build.
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                result.other_lines.append(line)
                continue
            if isinstance(record, dict):
                result.records.append(record)
            else:
                result.other_lines.append(line)

    assert proc.stdout is not None and proc.stderr is not None
    try:
        async with asyncio.timeout(BUILD_TIMEOUT):
            await asyncio.gather(read(proc.stdout), read(proc.stderr), proc.wait())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"repo2docker ran longer than {BUILD_TIMEOUT} s") from None
    result.returncode = proc.returncode if proc.returncode is not None else -1
    return result


def run_repo2docker(
    tmp_path: Path,
    *,
    repo_url: str,
    ref: str,
    image_name: str,
    push: bool = True,
    env: dict[str, str] | None = None,
) -> R2dRun:
    config = tmp_path / f"r2d-config-{uuid.uuid4().hex[:8]}.py"
    config.write_text(repo2docker_config_text("git"))
    argv = repo2docker_argv(
        python=sys.executable,
        repo_url=repo_url,
        ref=ref,
        image_name=image_name,
        push=push,
        config_path=str(config),
    )
    # Start from this environment without anything that would change the
    # engine's behaviour, then add what the test wants.
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BINDERBUILD_") and k != "CONTAINER_ENGINE_REGISTRY_CREDENTIALS"
    }
    full_env = {**base, "BINDERBUILD_BUILD_NETWORK": "none", **(env or {})}
    return asyncio.run(_run(argv, full_env))


@pytest.fixture(scope="module")
def docker_ready() -> None:
    docker_available()


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    server = GitServer(tmp_path / "git")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "registry")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def built_images() -> Iterator[list[str]]:
    """Image names a test builds; removed from dockerd afterwards."""
    names: list[str] = []
    yield names
    import docker

    client = docker.from_env()
    try:
        for name in names:
            try:
                client.images.remove(name, force=True)
            except docker.errors.ImageNotFound:
                pass
    finally:
        client.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def test_build_and_push(
    docker_ready: None,
    tmp_path: Path,
    git_server: GitServer,
    registry: RegistryServer,
    built_images: list[str],
) -> None:
    name = unique("ok")
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
    repository = f"binderbuild-test/{name}"
    image = f"{registry.host}/{repository}:{sha[:12]}"
    built_images.append(image)

    run = run_repo2docker(tmp_path, repo_url=git_server.git_url(name), ref=sha, image_name=image)

    assert run.returncode == 0, run.text()
    assert run.records, "repo2docker printed no JSON log lines"
    assert {"fetching", "building", "pushing"} <= run.phases(), run.text()
    assert "failed" not in run.phases(), run.text()
    # The classic builder's step lines reach the log whole, one per record.
    assert any(m.startswith("Step 1/") and NOTEBOOK_BASE_IMAGE in m for m in run.messages)
    assert not [m for m in run.messages if m == "\n"], "lone newline records"
    assert run.messages[-1] == f"Successfully pushed {image}\n"
    assert registry.manifest_status(repository, sha[:12]) == 200
    # The image is also in dockerd, with repo2docker's labels.
    import docker

    client = docker.from_env()
    try:
        labels = client.images.get(image).labels
    finally:
        client.close()
    assert labels["repo2docker.ref"] == sha
    assert labels["repo2docker.repo"] == git_server.git_url(name)


def test_build_from_smart_http(
    docker_ready: None,
    tmp_path: Path,
    git_server: GitServer,
    built_images: list[str],
) -> None:
    name = unique("http")
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
    image = f"binderbuild-test/{name}:{sha[:12]}"
    built_images.append(image)

    run = run_repo2docker(
        tmp_path, repo_url=git_server.http_url(name), ref="main", image_name=image, push=False
    )

    assert run.returncode == 0, run.text()
    assert "pushing" not in run.phases()
    assert any(m.startswith(f"Successfully tagged {image}") for m in run.messages), run.text()


def test_failing_dockerfile(
    docker_ready: None,
    tmp_path: Path,
    git_server: GitServer,
    registry: RegistryServer,
    built_images: list[str],
) -> None:
    name = unique("fail")
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name, fail=True))
    repository = f"binderbuild-test/{name}"
    image = f"{registry.host}/{repository}:{sha[:12]}"
    built_images.append(image)

    run = run_repo2docker(tmp_path, repo_url=git_server.git_url(name), ref=sha, image_name=image)

    assert run.returncode != 0, run.text()
    # The step's own output, which only exists if the step ran and its
    # output was streamed into the log.
    assert any(f"{FAILURE_MESSAGE} {name}" in m for m in run.messages), run.text()
    failed = [r for r in run.records if r.get("phase") == "failed"]
    assert failed and "returned a non-zero code" in str(failed[-1]["message"]), run.text()
    assert "pushing" not in run.phases()
    assert registry.manifest_status(repository, sha[:12]) == 404


def test_push_with_registry_credentials(
    docker_ready: None,
    tmp_path: Path,
    git_server: GitServer,
    built_images: list[str],
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    user = f"builder{uuid.uuid4().hex[:6]}"
    registry = RegistryServer(tmp_path / "auth-registry", htpasswd=(user, password))
    registry.start()
    try:
        name = unique("auth")
        sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
        repository = f"binderbuild-test/{name}"
        image = f"{registry.host}/{repository}:{sha[:12]}"
        built_images.append(image)

        # Without credentials the registry refuses the push.
        denied = run_repo2docker(
            tmp_path, repo_url=git_server.git_url(name), ref=sha, image_name=image
        )
        assert denied.returncode != 0, denied.text()
        assert "failed" in denied.phases(), denied.text()
        assert registry.manifest_status(repository, sha[:12]) == 404

        creds = json.dumps(registry.credentials)
        run = run_repo2docker(
            tmp_path,
            repo_url=git_server.git_url(name),
            ref=sha,
            image_name=image,
            env={"CONTAINER_ENGINE_REGISTRY_CREDENTIALS": creds},
        )
        assert run.returncode == 0, run.text()
        assert registry.manifest_status(repository, sha[:12]) == 200
        for text in (run.text(), denied.text()):
            assert password not in text
            assert user not in text
    finally:
        registry.stop()


def _network_probe_files(marker: str, port: int) -> dict[str, str]:
    """A Dockerfile whose step reports whether it can reach 127.0.0.1:port.

    The marker is part of the RUN line so dockerd's build cache never
    replays an earlier run's output.
    """
    probe = (
        "import socket,sys\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=3).close()\n"
        "    print('netprobe-' + 'reachable')\n"
        "except OSError:\n"
        "    print('netprobe-' + 'unreachable')\n"
    )
    return {
        "Dockerfile": (
            f"FROM {NOTEBOOK_BASE_IMAGE}\n"
            "ARG NB_USER=jovyan\n"
            "ARG NB_UID=1000\n"
            "COPY probe.py /tmp/probe.py\n"
            f"RUN python3 /tmp/probe.py {marker}\n"
            "USER 1000\n"
        ),
        "probe.py": probe,
    }


@pytest.mark.parametrize("network,expected", [("none", "unreachable"), ("host", "reachable")])
def test_build_network_knob(
    docker_ready: None,
    tmp_path: Path,
    git_server: GitServer,
    registry: RegistryServer,
    built_images: list[str],
    network: str,
    expected: str,
) -> None:
    # The registry stands in for any service on this machine's loopback
    # (hub, binderbuild): a build step must not reach it unless the
    # operator chose host networking.
    name = unique(f"net-{network}")
    sha = make_repo(git_server.root, name, _network_probe_files(name, registry.port))
    image = f"binderbuild-test/{name}:{sha[:12]}"
    built_images.append(image)

    run = run_repo2docker(
        tmp_path,
        repo_url=git_server.git_url(name),
        ref=sha,
        image_name=image,
        push=False,
        env={"BINDERBUILD_BUILD_NETWORK": network},
    )

    assert run.returncode == 0, run.text()
    assert f"netprobe-{expected}\n" in run.messages, run.text()
    assert any(f"build network: {network}" in m for m in run.messages)


def test_bad_engine_setting_fails_cleanly(
    docker_ready: None, tmp_path: Path, git_server: GitServer
) -> None:
    name = unique("badenv")
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
    run = run_repo2docker(
        tmp_path,
        repo_url=git_server.git_url(name),
        ref=sha,
        image_name=f"binderbuild-test/{name}:x",
        push=False,
        env={"BINDERBUILD_BUILD_MEMORY_LIMIT": "lots"},
    )
    assert run.returncode != 0
    assert any("BINDERBUILD_BUILD_MEMORY_LIMIT" in m for m in run.messages), run.text()


def test_build_memory_limit_knob(
    docker_ready: None, tmp_path: Path, git_server: GitServer, built_images: list[str]
) -> None:
    name = unique("mem")
    files = {
        "Dockerfile": (
            f"FROM {NOTEBOOK_BASE_IMAGE}\n"
            "ARG NB_USER=jovyan\n"
            "ARG NB_UID=1000\n"
            # cgroup v2 first, v1 as fallback; the name keeps the step
            # out of dockerd's build cache.
            "RUN echo memlimit-$(cat /sys/fs/cgroup/memory.max 2>/dev/null"
            f" || cat /sys/fs/cgroup/memory/memory.limit_in_bytes) {name}\n"
        )
    }
    sha = make_repo(git_server.root, name, files)
    image = f"binderbuild-test/{name}:{sha[:12]}"
    built_images.append(image)

    run = run_repo2docker(
        tmp_path,
        repo_url=git_server.git_url(name),
        ref=sha,
        image_name=image,
        push=False,
        env={"BINDERBUILD_BUILD_MEMORY_LIMIT": "96M"},
    )

    assert run.returncode == 0, run.text()
    assert f"memlimit-{96 * 1024 * 1024} {name}\n" in run.messages, run.text()
