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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

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

# Every test needs the Docker engine (docker_ready fails them clearly if not).
pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_ready")]

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


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


ServerT = TypeVar("ServerT", bound=_Server)


@contextmanager
def serving(server: ServerT) -> Iterator[ServerT]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    with serving(GitServer(tmp_path / "git")) as server:
        yield server


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    with serving(RegistryServer(tmp_path / "registry")) as server:
        yield server


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


@dataclass
class Repo:
    """A repository on the test's git server, and the image names for it."""

    name: str
    sha: str
    git_url: str
    http_url: str

    @property
    def repository(self) -> str:
        return f"binderbuild-test/{self.name}"

    @property
    def tag(self) -> str:
        return self.sha[:12]

    def image(self, registry: RegistryServer | None = None) -> str:
        """The image to build: in `registry` when given, else local only."""
        local = f"{self.repository}:{self.tag}"
        return f"{registry.host}/{local}" if registry is not None else local


class R2d:
    """Makes fixture repositories and runs repo2docker on them, recording
    every image name so that `built_images` removes it afterwards."""

    def __init__(self, tmp_path: Path, git_server: GitServer, built_images: list[str]) -> None:
        self.tmp_path = tmp_path
        self.git_server = git_server
        self.built_images = built_images

    def repo(
        self, prefix: str, files: Callable[[str], dict[str, str]] = dockerfile_repo_files
    ) -> Repo:
        """A new repository whose files are made from its (unique) name."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        sha = make_repo(self.git_server.root, name, files(name))
        return Repo(name, sha, self.git_server.git_url(name), self.git_server.http_url(name))

    def build(
        self,
        repo: Repo,
        image: str,
        *,
        repo_url: str | None = None,
        ref: str | None = None,
        push: bool = True,
        env: dict[str, str] | None = None,
    ) -> R2dRun:
        """repo2docker on `repo` (over git://, at its commit unless told)."""
        self.built_images.append(image)
        return run_repo2docker(
            self.tmp_path,
            repo_url=repo_url or repo.git_url,
            ref=ref or repo.sha,
            image_name=image,
            push=push,
            env=env,
        )


@pytest.fixture
def r2d(tmp_path: Path, git_server: GitServer, built_images: list[str]) -> R2d:
    return R2d(tmp_path, git_server, built_images)


def test_build_and_push(r2d: R2d, registry: RegistryServer) -> None:
    repo = r2d.repo("ok")
    image = repo.image(registry)

    run = r2d.build(repo, image)

    assert run.returncode == 0, run.text()
    assert run.records, "repo2docker printed no JSON log lines"
    assert {"fetching", "building", "pushing"} <= run.phases(), run.text()
    assert "failed" not in run.phases(), run.text()
    # The classic builder's step lines reach the log whole, one per record.
    assert any(m.startswith("Step 1/") and NOTEBOOK_BASE_IMAGE in m for m in run.messages)
    assert not [m for m in run.messages if m == "\n"], "lone newline records"
    assert run.messages[-1] == f"Successfully pushed {image}\n"
    assert registry.manifest_status(repo.repository, repo.tag) == 200
    # The image is also in dockerd, with repo2docker's labels.
    import docker

    client = docker.from_env()
    try:
        labels = client.images.get(image).labels
    finally:
        client.close()
    assert labels["repo2docker.ref"] == repo.sha
    assert labels["repo2docker.repo"] == repo.git_url


def test_build_from_smart_http(r2d: R2d) -> None:
    repo = r2d.repo("http")
    image = repo.image()

    run = r2d.build(repo, image, repo_url=repo.http_url, ref="main", push=False)

    assert run.returncode == 0, run.text()
    assert "pushing" not in run.phases()
    assert any(m.startswith(f"Successfully tagged {image}") for m in run.messages), run.text()


def test_failing_dockerfile(r2d: R2d, registry: RegistryServer) -> None:
    repo = r2d.repo("fail", lambda name: dockerfile_repo_files(name, fail=True))

    run = r2d.build(repo, repo.image(registry))

    assert run.returncode != 0, run.text()
    # The step's own output, which only exists if the step ran and its
    # output was streamed into the log.
    assert any(f"{FAILURE_MESSAGE} {repo.name}" in m for m in run.messages), run.text()
    failed = [r for r in run.records if r.get("phase") == "failed"]
    assert failed and "returned a non-zero code" in str(failed[-1]["message"]), run.text()
    assert "pushing" not in run.phases()
    assert registry.manifest_status(repo.repository, repo.tag) == 404


def test_push_with_registry_credentials(r2d: R2d, tmp_path: Path) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    user = f"builder{uuid.uuid4().hex[:6]}"
    with serving(RegistryServer(tmp_path / "auth-registry", htpasswd=(user, password))) as registry:
        repo = r2d.repo("auth")
        image = repo.image(registry)

        # Without credentials the registry refuses the push.
        denied = r2d.build(repo, image)
        assert denied.returncode != 0, denied.text()
        assert "failed" in denied.phases(), denied.text()
        assert registry.manifest_status(repo.repository, repo.tag) == 404

        creds = json.dumps(registry.credentials)
        run = r2d.build(repo, image, env={"CONTAINER_ENGINE_REGISTRY_CREDENTIALS": creds})
        assert run.returncode == 0, run.text()
        assert registry.manifest_status(repo.repository, repo.tag) == 200
        for text in (run.text(), denied.text()):
            assert password not in text
            assert user not in text


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
    r2d: R2d, registry: RegistryServer, network: str, expected: str
) -> None:
    # The registry stands in for any service on this machine's loopback
    # (hub, binderbuild): a build step must not reach it unless the
    # operator chose host networking.
    repo = r2d.repo(f"net-{network}", lambda name: _network_probe_files(name, registry.port))

    run = r2d.build(repo, repo.image(), push=False, env={"BINDERBUILD_BUILD_NETWORK": network})

    assert run.returncode == 0, run.text()
    assert f"netprobe-{expected}\n" in run.messages, run.text()
    assert any(f"build network: {network}" in m for m in run.messages)


def test_bad_engine_setting_fails_cleanly(r2d: R2d) -> None:
    repo = r2d.repo("badenv")
    run = r2d.build(
        repo,
        f"{repo.repository}:x",
        push=False,
        env={"BINDERBUILD_BUILD_MEMORY_LIMIT": "lots"},
    )
    assert run.returncode != 0
    assert any("BINDERBUILD_BUILD_MEMORY_LIMIT" in m for m in run.messages), run.text()


def _memory_probe_files(name: str) -> dict[str, str]:
    return {
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


def test_build_memory_limit_knob(r2d: R2d) -> None:
    repo = r2d.repo("mem", _memory_probe_files)

    run = r2d.build(repo, repo.image(), push=False, env={"BINDERBUILD_BUILD_MEMORY_LIMIT": "96M"})

    assert run.returncode == 0, run.text()
    assert f"memlimit-{96 * 1024 * 1024} {repo.name}\n" in run.messages, run.text()
