"""The single-machine registry (scripts/services.sh) demands credentials.

Issue 11: the registry ``scripts/run.sh`` starts answered anyone on the
machine, with deletes enabled, so a launched server overwrote another
repository's image. ``services.sh start`` now makes htpasswd credentials
once (mode 600), requires them for every request and disables deletes. The
script runs for real here, on a free port and under a temporary directory
(``BINDERBUILD_VAR``), and is stopped by the test.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realservices import (
    _OPENER,
    MANIFEST_MEDIA_TYPES,
    _http_status,
    build_context_image,
    free_port,
)

pytestmark = [pytest.mark.docker, pytest.mark.registry]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = Path(os.environ.get("BINDERBUILD_TEST_SERVICES_SH", ROOT / "scripts" / "services.sh"))


class ScriptRegistry:
    def __init__(self, var: Path, port: int) -> None:
        self.var, self.port = var, port
        self.env = {
            **os.environ,
            "BINDERBUILD_VAR": str(var),
            "BINDERBUILD_REGISTRY_PORT": str(port),
        }

    def run(self, action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SERVICES), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials_file(self) -> Path:
        return self.var / "registry" / "credentials"

    def credentials(self) -> tuple[str, str]:
        user, _, password = self.credentials_file.read_text().strip().partition(":")
        return user, password

    def basic(self) -> dict[str, str]:
        token = base64.b64encode(":".join(self.credentials()).encode()).decode()
        return {"Authorization": f"Basic {token}"}


@pytest.fixture
def script_registry(tmp_path: Path) -> Iterator[ScriptRegistry]:
    for tool in ("docker-registry", "htpasswd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/setup.sh", pytrace=False)
    registry = ScriptRegistry(tmp_path / "var", free_port())
    started = registry.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    yield registry
    registry.run("stop")


def tiny_image(docker_client: Any, name: str) -> None:
    build_context_image(
        docker_client,
        name,
        {"Dockerfile": b"FROM scratch\nCOPY x /x\n", "x": secrets.token_hex(8).encode()},
    )


def push(docker_client: Any, name: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    return list(docker_client.api.push(name, stream=True, decode=True, auth_config=auth))


def test_registry_requires_its_generated_credentials(
    script_registry: ScriptRegistry, docker_client: Any
) -> None:
    registry = script_registry
    creds = registry.credentials_file
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    assert oct((registry.var / "registry" / "htpasswd").stat().st_mode & 0o777) == "0o600"
    assert oct((registry.var / "registry" / "config.yml").stat().st_mode & 0o777) == "0o600"
    user, password = registry.credentials()
    assert user and len(password) >= 32
    assert _http_status(f"{registry.url}/v2/") == 401
    assert _http_status(f"{registry.url}/v2/", registry.basic()) == 200

    name = f"127.0.0.1:{registry.port}/bbsvc-{secrets.token_hex(3)}:1"
    tiny_image(docker_client, name)
    try:
        refused = push(docker_client, name, {})
        assert [line for line in refused if "error" in line], refused
        pushed = push(docker_client, name, {"username": user, "password": password})
        assert not [line for line in pushed if "error" in line], pushed
    finally:
        docker_client.images.remove(name, force=True)

    repo, tag = name.split("/", 1)[1].rsplit(":", 1)
    manifest = f"{registry.url}/v2/{repo}/manifests/{tag}"
    accept = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
    assert _http_status(manifest, accept) == 401
    assert _http_status(manifest, {**accept, **registry.basic()}) == 200
    # Deletes are off, even with the credentials.
    request = urllib.request.Request(manifest, headers={**accept, **registry.basic()})
    with _OPENER.open(request, timeout=10) as response:
        digest = response.headers["Docker-Content-Digest"]
    by_digest = f"{registry.url}/v2/{repo}/manifests/{digest}"
    assert _http_status(by_digest, registry.basic(), method="DELETE") == 405
    assert _http_status(by_digest, {**accept, **registry.basic()}) == 200

    # A second start reuses the running registry and the same credentials.
    again = registry.run("start")
    assert again.returncode == 0, again.stderr
    assert "already answering" in again.stdout
    assert "WARNING" not in again.stdout
    assert registry.credentials() == (user, password)


def test_credentials_survive_a_restart(script_registry: ScriptRegistry) -> None:
    registry = script_registry
    before = registry.credentials()
    stopped = registry.run("stop")
    assert stopped.returncode == 0 and "registry stopped" in stopped.stdout, stopped.stdout
    assert registry.run("start").returncode == 0
    assert registry.credentials() == before
    assert _http_status(f"{registry.url}/v2/") == 401
    assert _http_status(f"{registry.url}/v2/", registry.basic()) == 200
