"""scripts/services.sh for the registry lifecycle (issue 16): deletes stay off
unless BINDERBUILD_REGISTRY_DELETES=1, and ``gc`` frees the blobs of deleted
manifests in a read-only window while the other images stay pullable."""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from binderbuild.errors import RegistryError
from binderbuild.http import HttpClient
from binderbuild.registry import RegistryClient
from tests.ops.test_singlemachine_registry import ScriptRegistry, push, tiny_image
from tests.realservices import _http_status, free_port

pytestmark = [pytest.mark.docker, pytest.mark.registry]


def start(tmp_path: Path, deletes: bool) -> ScriptRegistry:
    for tool in ("docker-registry", "htpasswd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/setup.sh", pytrace=False)
    registry = ScriptRegistry(tmp_path / "var", free_port())
    if deletes:
        registry.env["BINDERBUILD_REGISTRY_DELETES"] = "1"
    started = registry.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    return registry


@pytest.fixture
def deleting_registry(tmp_path: Path) -> Iterator[ScriptRegistry]:
    registry = start(tmp_path, deletes=True)
    yield registry
    registry.run("stop")


def client_call(registry: ScriptRegistry, fn: Any) -> Any:
    async def main() -> Any:
        http = HttpClient()
        try:
            return await fn(RegistryClient(http, registry.url, *registry.credentials()))
        finally:
            http.close()

    return asyncio.run(main())


def pushed(registry: ScriptRegistry, docker_client: Any, repo: str) -> str:
    name = f"127.0.0.1:{registry.port}/{repo}:1"
    tiny_image(docker_client, name)
    user, password = registry.credentials()
    try:
        lines = push(docker_client, name, {"username": user, "password": password})
        assert not [line for line in lines if "error" in line], lines
    finally:
        docker_client.images.remove(name, force=True)
    return name


def test_deletes_stay_off_by_default(tmp_path: Path, docker_client: Any) -> None:
    registry = start(tmp_path, deletes=False)
    try:
        repo = f"bbgc-{secrets.token_hex(3)}"
        pushed(registry, docker_client, repo)

        async def delete(client: RegistryClient) -> None:
            got = await client.manifest(repo, "1")
            assert got is not None
            await client.delete_manifest(repo, got[0])

        with pytest.raises(RegistryError, match="does not allow deletes"):
            client_call(registry, delete)
        gc = registry.run("gc")
        assert gc.returncode == 0, gc.stdout + gc.stderr
    finally:
        registry.run("stop")


def test_delete_then_gc_frees_blobs_and_keeps_the_rest(
    deleting_registry: ScriptRegistry, docker_client: Any
) -> None:
    registry = deleting_registry
    doomed, kept = f"bbgc-{secrets.token_hex(3)}", f"bbgc-{secrets.token_hex(3)}"
    pushed(registry, docker_client, doomed)
    pushed(registry, docker_client, kept)

    async def delete(client: RegistryClient) -> list[str]:
        got = await client.manifest(doomed, "1")
        assert got is not None
        digest, manifest = got
        assert await client.delete_manifest(doomed, digest) is True
        assert await client.delete_manifest(doomed, digest) is False  # already gone
        assert await client.manifest(doomed, "1") is None
        assert await client.tags(doomed) == []
        assert {doomed, kept} <= set(await client.repositories())
        return [layer["digest"] for layer in manifest["layers"]]

    layers = client_call(registry, delete)
    blob = f"{registry.url}/v2/{doomed}/blobs/{layers[0]}"
    assert _http_status(blob, registry.basic(), method="HEAD") == 200  # until gc

    gc = registry.run("gc")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    freed = re.search(r"gc: (\d+) bytes freed", gc.stdout)
    assert freed and int(freed.group(1)) > 0, gc.stdout
    assert "writable again" in gc.stdout
    assert _http_status(blob, registry.basic(), method="HEAD") == 404
    # The other image is intact, and the registry takes pushes again.
    assert client_call(registry, lambda c: c.manifest(kept, "1")) is not None
    pushed(registry, docker_client, f"bbgc-{secrets.token_hex(3)}")
