"""Shared fixtures: the real services every integration test talks to.

Everything here is started for real on 127.0.0.1: the Docker engine must be
running (scripts/setup.sh starts it), the registry and git servers are
started per test session, binderbuild runs as its own process. A missing
dependency is a test failure with a message saying what to run, never a skip.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.realservices import (
    GitServer,
    RegistryServer,
    docker_available,
    dockerfile_repo_files,
    make_repo,
)
from tests.service import BinderBuildService

NOTEBOOK_BASE_IMAGE = "binderbuild/notebook-base:bookworm"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def docker_client():
    docker_available()
    import docker

    client = docker.from_env()
    try:
        client.images.get(NOTEBOOK_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{NOTEBOOK_BASE_IMAGE} is missing: run scripts/setup.sh", pytrace=False)
    yield client
    client.close()


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def git_server(session_dir: Path) -> Iterator[GitServer]:
    if not shutil.which("git"):
        pytest.fail("git is not installed: run scripts/setup.sh", pytrace=False)
    server = GitServer(session_dir / "git")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def registry(session_dir: Path) -> Iterator[RegistryServer]:
    if not shutil.which("docker-registry"):
        pytest.fail("docker-registry is not installed: run scripts/setup.sh", pytrace=False)
    server = RegistryServer(session_dir / "registry")
    server.start()
    yield server
    server.stop()


@dataclass(frozen=True)
class FixtureRepo:
    name: str
    sha: str
    url: str  # clone URL on the loopback git server
    marker: str

    def spec(self, ref: str = "main") -> str:
        return f"{quote(self.url, safe='')}/{ref}"


@pytest.fixture
def make_fixture_repo(git_server: GitServer) -> Callable[..., FixtureRepo]:
    """A new Dockerfile repository (unique, so never built before) on the git server."""

    def make(fail: bool = False, protocol: str = "git", files: dict[str, str] | None = None) -> FixtureRepo:
        marker = secrets.token_hex(6)
        name = f"repo-{marker}"
        content = files if files is not None else dockerfile_repo_files(marker, fail=fail)
        sha = make_repo(git_server.root, name, content)
        url = git_server.git_url(name) if protocol == "git" else git_server.http_url(name)
        return FixtureRepo(name, sha, url, marker)

    return make


def service_config(registry: RegistryServer | None, extra: str = "") -> str:
    lines = [
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']",
        "c.BinderBuild.concurrent_build_limit = 2",
        "c.DockerBuilder.build_network = 'none'",
    ]
    if registry is not None:
        lines += [
            "c.BinderBuild.use_registry = True",
            f"c.DockerRegistry.url = {registry.url!r}",
            f"c.BinderBuild.image_prefix = '{registry.host}/bbtest-'",
        ]
    else:
        lines.append("c.BinderBuild.image_prefix = 'bbtest-local-'")
    return "\n".join(lines) + "\n" + extra + "\n"


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., BinderBuildService]]:
    """Start binderbuild processes with a given config; all are stopped after the test."""
    started: list[BinderBuildService] = []

    def start(config: str, env: dict[str, str] | None = None) -> BinderBuildService:
        service = BinderBuildService(tmp_path / f"svc{len(started)}", config, env=env)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()
        if os.environ.get("BINDERBUILD_TEST_SHOW_LOGS"):
            print(service.log())


@pytest.fixture
def service(start_service, registry, docker_client) -> BinderBuildService:
    """binderbuild pushing to the session registry, building on the real engine."""
    return start_service(service_config(registry))
