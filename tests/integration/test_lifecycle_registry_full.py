"""A push that hits a full disk (issue 16), for real: scripts/services.sh's
registry stores its data on a small loop-mounted ext4 filesystem of its own,
the real engine builds and pushes, a real binderbuild serves the requests.

The filesystem holds the shared base layers (pushed by a first build, whose
image must survive everything below), then a ballast file and fixture images
of a unique few-MB layer each, until less is free than the next build's own
layer (a new commit of the first repository). That build's push fails: the registry answers only "500 Internal
Server Error", and binderbuild, reading its storage's free space, reports the
registry as out of disk space. The failure starts a forced cleanup: the
least recently used fixture images are deleted and the registry's garbage
collection runs in a maintenance window, which also removes the upload
sessions the failed push left. The same request then builds and pushes.

Only images under this test's prefix exist in this registry; the engine's
tags of them are removed at the end."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import call
from tests.api.test_admin_api import metric
from tests.integration.test_build_pipeline import build_url, wait_until
from tests.integration.test_lifecycle_gc import manifest_status, registry_service_config
from tests.integration.test_lifecycle_real import build_image
from tests.ops.test_singlemachine_registry import SERVICES, ScriptRegistry
from tests.realservices import GitServer, add_commit, free_port
from tests.sse import read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

MiB = 1 << 20
FILESYSTEM = 1024 * MiB  # sparse: only what is written takes space
ROOM = 24 * MiB  # left free for the fixture images after the ballast
FILLER = 4 * MiB  # each fixture image's own layer (random bytes: no compression)
MIN_FREE = 6 * MiB  # RegistryLifecycle.min_free


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def small_registry(tmp_path: Path) -> Iterator[tuple[ScriptRegistry, Path]]:
    """The single-machine registry on a 1 GiB loop-mounted ext4 filesystem."""
    for tool in ("docker-registry", "htpasswd", "losetup", "mkfs.ext4", "mount"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing (run scripts/setup.sh; needs root)", pytrace=False)
    var = tmp_path / "var"
    data = var / "registry" / "data"
    data.mkdir(parents=True)
    disk = tmp_path / "registry.img"
    with disk.open("wb") as f:
        f.truncate(FILESYSTEM)
    # No reserved blocks (the registry runs as root and would use them), and
    # no lazy initialisation writing behind the test's back.
    _run(
        "mkfs.ext4",
        "-q",
        "-F",
        "-m",
        "0",
        "-E",
        "lazy_itable_init=0,lazy_journal_init=0",
        str(disk),
    )
    loop = _run("losetup", "-f", "--show", str(disk))
    mounted = False
    registry = ScriptRegistry(var, free_port())
    registry.env["BINDERBUILD_REGISTRY_DELETES"] = "1"
    try:
        _run("mount", loop, str(data))
        mounted = True
        started = registry.run("start")
        assert started.returncode == 0, started.stdout + started.stderr
        yield registry, data
    finally:
        registry.run("stop")
        if mounted:
            subprocess.run(["umount", "-l", str(data)], capture_output=True, timeout=60)
        subprocess.run(["losetup", "-d", loop], capture_output=True, timeout=60)


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def upload_sessions(data: Path) -> list[Path]:
    """The registry's unfinished blob uploads (``<repository>/_uploads/<id>``)."""
    repositories = data / "docker" / "registry" / "v2" / "repositories"
    return [s for u in repositories.rglob("_uploads") for s in u.iterdir()]


def push(docker_client: Any, name: str, auth: dict[str, str]) -> list[str]:
    """Push ``name``; the errors the engine reported."""
    repository, tag = name.rsplit(":", 1)
    out = docker_client.api.push(repository, tag=tag, stream=True, decode=True, auth_config=auth)
    return [str(line["error"]) for line in out if "error" in line]


def test_a_push_that_hits_a_full_disk_fails_so_and_recovers_after_cleanup(
    small_registry: tuple[ScriptRegistry, Path],
    start_service,
    docker_client: Any,
    make_fixture_repo,
    git_server: GitServer,
) -> None:
    registry, data = small_registry
    prefix = f"127.0.0.1:{registry.port}/bbfull-{secrets.token_hex(3)}-"
    user, password = registry.credentials()
    auth = {"username": user, "password": password}
    gc = [
        "env",
        f"BINDERBUILD_VAR={registry.var}",
        f"BINDERBUILD_REGISTRY_PORT={registry.port}",
        "BINDERBUILD_REGISTRY_DELETES=1",
        "bash",
        str(SERVICES),
        "gc",
    ]
    try:
        service = start_service(
            "\n".join(
                [
                    *registry_service_config(registry, prefix),
                    "c.RegistryLifecycle.enabled = True",
                    # Far from the budget: only the full disk starts this cleanup.
                    "c.RegistryLifecycle.budget = '100G'",
                    "c.RegistryLifecycle.interval = 3600",
                    "c.RegistryLifecycle.keep_days = 0",
                    f"c.RegistryLifecycle.storage_path = {str(data)!r}",
                    f"c.RegistryLifecycle.min_free = '{MIN_FREE}'",
                    f"c.RegistryLifecycle.gc_command = {gc!r}",
                    "c.EngineImageCleaner.enabled = False",
                ]
            )
            + "\n"
        )
        # The first build pushes the shared base layers; its image is in use.
        first = make_fixture_repo()
        before = read_events(build_url(service, first.spec(first.sha), build_only="true"))
        assert before.phases[-1] == "ready", before.events
        kept = before.final["imageName"]

        # Fill: a ballast file, then fixture images (one repository, so all
        # but the newest may go) until less than the next layer is free.
        (data / "ballast").write_bytes(b"")
        with (data / "ballast").open("wb") as ballast:
            chunk = b"\0" * MiB
            for _ in range(max(0, (free(data) - ROOM) // MiB)):
                ballast.write(chunk)
        fillers: list[str] = []
        while free(data) > 512 * 1024:
            size = FILLER if free(data) > FILLER + MiB else free(data) - 256 * 1024
            name = f"{prefix}filler:{len(fillers)}"
            build_image(docker_client, name, size=max(size, 64 * 1024))
            errors = push(docker_client, name, auth)
            assert not errors, errors  # sized to fit: the service's push is the one to fail
            fillers.append(name)
        assert len(fillers) >= 4, fillers

        # The next build's own layer (a 2 MiB file of the repository) does not
        # fit. It is a new commit of the first repository, so its image goes
        # to the same registry repository, where the base layers already are:
        # the engine only checks they exist and uploads just the new layer.
        # (An image of another repository would mount the base layers from
        # the first one; a mount that the full disk refuses makes dockerd
        # forget where the layer is, and its next push uploads the whole
        # base image, which no cleanup of this small filesystem can fit.)
        payload = add_commit(
            git_server.root, first.name, {"payload.txt": secrets.token_hex(MiB)}, "payload"
        )
        url = build_url(service, first.spec(payload), build_only="true")
        failed = read_events(url)
        assert failed.phases[-1] == "failed", failed.events
        message = failed.final["message"]
        assert "The registry is out of disk space" in message, message
        assert "A cleanup has started" in message, message
        assert "500" in message, message

        # The forced cleanup: images deleted, garbage collected in a window.
        def cleaned() -> bool:
            return "registry garbage collection done" in service.log()

        wait_until(cleaned, "the registry's garbage collection after the full disk", timeout=120)
        text = call(f"{service.url}/metrics").text
        assert metric(text, "binderbuild_cleanup_disk_full_total") == 1
        deleted = metric(text, "binderbuild_cleanup_removed_images_total", 'store="registry"')
        assert deleted is not None and deleted >= 2, text
        assert free(data) >= MIN_FREE
        # Each failed attempt of the push left an upload session holding what
        # it wrote; the garbage collection's window removed them.
        assert not upload_sessions(data), upload_sessions(data)
        assert manifest_status(registry, fillers[0]) == 404  # least recently used: gone
        assert manifest_status(registry, fillers[-1]) == 200  # the newest of its repository
        assert manifest_status(registry, kept) == 200  # nothing in use was lost

        # The next request builds and pushes.
        after = read_events(url)
        assert after.phases[-1] == "ready", (after.final, service.log()[-3000:])
        assert manifest_status(registry, after.final["imageName"]) == 200
        assert manifest_status(registry, kept) == 200
    finally:
        for found in docker_client.images.list():
            for tag in found.tags:
                if tag.startswith(prefix):
                    docker_client.images.remove(tag, force=True)
        os.sync()
