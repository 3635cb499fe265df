"""Fixtures of the operations tests: module-scoped services and registries.

Services here are real ``python -m binderbuild`` processes (tests.service)
talking to real registries, git servers and the Docker engine. Fixtures are
module-scoped where a real build can be shared by several tests.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.realservices import RegistryServer
from tests.service import BinderBuildService


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ops")


@pytest.fixture(scope="module")
def module_services(module_dir: Path) -> Iterator[Callable[..., BinderBuildService]]:
    """Start binderbuild processes that live for the whole test module."""
    started: list[BinderBuildService] = []

    def start(config: str, env: dict[str, str] | None = None) -> BinderBuildService:
        service = BinderBuildService(module_dir / f"svc{len(started)}", config, env=env)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def auth_registry(module_dir: Path) -> Iterator[RegistryServer]:
    """A registry of this module's own (tests stop it) with htpasswd auth and a
    random password: the password is a secret that must never leak."""
    if not shutil.which("docker-registry") or not shutil.which("htpasswd"):
        pytest.fail(
            "docker-registry and htpasswd (apache2-utils) are needed: run scripts/setup.sh",
            pytrace=False,
        )
    server = RegistryServer(
        module_dir / "auth-registry",
        htpasswd=(f"bbops-{secrets.token_hex(3)}", f"regpw-{secrets.token_hex(12)}"),
    )
    server.start()
    yield server
    server.stop()
