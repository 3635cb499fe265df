"""Issue 16 against the real Docker engine and the real registry: the engine
cleaner removes least recently used images and never a running server's or
a base image; the registry's byte budget deletes manifests but keeps the
newest image of each repository; a deleted image is rebuilt on request.

"The disk is 90 % full" is simulated with an injected disk reading (counting
this test's own images), so nothing fills a real disk and images of other
tests on the same engine are never candidates (a unique image prefix)."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from binderbuild.history import BuildHistory
from binderbuild.http import HttpClient
from binderbuild.lifecycle import (
    DiskUsage,
    DockerEngine,
    EngineImageCleaner,
    RegistryLifecycle,
    UsageTracker,
    registry_bytes,
)
from binderbuild.registry import RegistryClient
from tests.conftest import service_config
from tests.integration.test_build_pipeline import build_url, wait_until
from tests.realservices import BASE_IMAGE, RegistryServer, add_commit, build_context_image
from tests.sse import read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

DAY = 86400.0


def build_image(docker_client: Any, name: str, base: str = "scratch", size: int = 4096) -> str:
    """A small image of random content (so every image has a layer of its own)."""
    dockerfile = f"FROM {base}\nCOPY payload /payload\n".encode()
    return build_context_image(
        docker_client, name, {"Dockerfile": dockerfile, "payload": secrets.token_bytes(size)}
    )


class NoPrune(DockerEngine):
    """The real engine, but no global prune: other tests share this engine."""

    async def prune(self, build_cache: bool, dangling: bool = True) -> int:
        return 0


def test_engine_cleaner_lru_keeps_running_and_base_images(docker_client, tmp_path: Path) -> None:
    prefix = f"bblife-{secrets.token_hex(4)}-"
    names = [f"{prefix}img{i}:1" for i in range(5)]
    container = None
    try:
        for name in names:
            build_image(docker_client, name, base=BASE_IMAGE)
        # A server runs the oldest image.
        container = docker_client.containers.run(
            names[0], ["sleep", "300"], detach=True, network_mode="none"
        )
        now = time.time()

        def ours() -> list[str]:
            return sorted(
                t for i in docker_client.images.list() for t in i.tags if t.startswith(prefix)
            )

        async def disk() -> DiskUsage:
            # 10 units of disk: 4 used by others, one per image of this test.
            return DiskUsage(total=10, used=4 + len(await asyncio.to_thread(ours)))

        async def scenario() -> Any:
            history = BuildHistory(tmp_path)
            usage = UsageTracker(history)
            await history.record_usage(
                {
                    names[0]: now - 9 * DAY,  # oldest, but running
                    names[1]: now - 60,  # launched a minute ago
                    names[2]: now - 3 * DAY,
                    names[3]: now - 2 * DAY,
                    names[4]: now - 1 * DAY,
                }
            )
            removed: list[str] = []
            cleaner = EngineImageCleaner(
                NoPrune(docker_client),
                image_prefix=prefix,
                usage=usage,
                in_use_names=lambda: (),
                on_removed=removed.append,
                disk_usage=disk,
                grace_period=0,
            )
            assert (await cleaner.measure()).percent == 90
            report = await cleaner.run_once()
            await usage.close()
            await history.close()
            return report, removed

        report, removed = asyncio.run(scenario())
        # 90 % -> 60 %: three images go, least recently used first.
        assert report.removed == [names[2], names[3], names[4]] == removed
        assert report.after.percent == 60
        assert ours() == [names[0], names[1]]
        docker_client.images.get(BASE_IMAGE)  # the base image is still there
    finally:
        if container is not None:
            container.remove(force=True)
        for name in names:
            try:
                docker_client.images.remove(name, force=True)
            except Exception:
                pass


def push(docker_client: Any, name: str, registry: RegistryServer) -> None:
    user, password = registry.htpasswd or ("", "")
    for line in docker_client.api.push(
        name, stream=True, decode=True, auth_config={"username": user, "password": password}
    ):
        assert "error" not in line, line


def test_registry_budget_deletes_lru_and_keeps_the_newest_per_repository(
    docker_client, tmp_path: Path
) -> None:
    registry = RegistryServer(tmp_path / "registry", htpasswd=("lifecycle", secrets.token_hex(12)))
    registry.start()
    prefix = f"{registry.host}/bblife-"
    names = [f"{prefix}a:1", f"{prefix}a:2", f"{prefix}a:3", f"{prefix}b:1"]
    try:
        for name in names:
            build_image(docker_client, name, size=64 * 1024)
            push(docker_client, name, registry)
            time.sleep(1.1)  # image creation times have one-second resolution
        now = time.time()

        async def scenario() -> tuple[Any, ...]:
            http = HttpClient()
            user, password = registry.htpasswd or ("", "")
            client = RegistryClient(http, registry.url, user, password)
            history = BuildHistory(tmp_path / "history")
            usage = UsageTracker(history)
            await history.record_usage(
                {names[0]: now - 10 * DAY, names[1]: now - 20 * DAY, names[3]: now - 30 * DAY}
            )
            lifecycle = RegistryLifecycle(client, image_prefix=prefix, usage=usage, keep_days=0)
            images = await lifecycle.inventory()
            by_name = {i.names[0]: i for i in images}
            assert set(by_name) == set(names)
            total = registry_bytes(images)
            a2_only = registry_bytes(images) - registry_bytes(
                [i for i in images if i.names[0] != names[1]]
            )
            assert a2_only >= 64 * 1024
            # Just enough budget pressure for one image: a:2 (least recently used
            # that is not the newest of its repository) goes.
            lifecycle.budget = str(total - a2_only)
            dry = await lifecycle.run_once(dry_run=True)
            first = await lifecycle.run_once()
            # Far too little budget: a:1 goes too; a:3 and b:1 (newest) stay.
            lifecycle.budget = "1"
            second = await lifecycle.run_once()
            left = await lifecycle.inventory()
            await usage.close()
            await history.close()
            http.close()
            return dry, first, second, left, total

        dry, first, second, left, total = asyncio.run(scenario())
        assert dry.deleted == [names[1]] and first.deleted == [names[1]]
        assert first.before == total and first.after <= int(first.budget)
        assert second.deleted == [names[0]]
        assert sorted(i.names[0] for i in left) == [names[2], names[3]]
        assert registry.manifest_status("bblife-a", "2") == 404
        assert registry.manifest_status("bblife-a", "1") == 404
        assert registry.manifest_status("bblife-a", "3") == 200
        assert registry.manifest_status("bblife-b", "1") == 200
    finally:
        for name in names:
            try:
                docker_client.images.remove(name, force=True)
            except Exception:
                pass
        registry.stop()


def test_an_image_the_registry_lifecycle_deleted_is_rebuilt_on_request(
    start_service, registry, docker_client, git_server, make_fixture_repo
) -> None:
    # The service's own lifecycle, every second, with no budget to speak of:
    # every image under this test's prefix that is not its repository's newest goes.
    prefix = f"{registry.host}/bblife-{secrets.token_hex(3)}-"
    service = start_service(
        service_config(
            registry,
            f"c.BinderBuild.image_prefix = {prefix!r}\n"
            "c.BinderBuild.image_exists_cache_ttl = 0\n"
            "c.RegistryLifecycle.enabled = True\n"
            "c.RegistryLifecycle.budget = '1'\n"
            "c.RegistryLifecycle.keep_days = 0\n"
            "c.RegistryLifecycle.interval = 1\n",
        )
    )
    repo = make_fixture_repo()
    first = read_events(build_url(service, repo.spec(repo.sha), build_only="true"))
    assert first.phases[-1] == "ready", first.events
    old_image = first.final["imageName"]
    time.sleep(1.1)  # a newer creation time for the second image
    second_sha = add_commit(git_server.root, repo.name, {"extra.txt": "more\n"}, "second")
    second = read_events(build_url(service, repo.spec(second_sha), build_only="true"))
    assert second.phases[-1] == "ready", second.events
    repository, old_tag = old_image.split("/", 1)[1].rsplit(":", 1)

    wait_until(
        lambda: registry.manifest_status(repository, old_tag) == 404,
        "the older image deleted by the service's registry lifecycle",
    )
    assert registry.manifest_status(repository, second_sha) == 200
    again = read_events(build_url(service, repo.spec(repo.sha), build_only="true"))
    assert again.phases[-1] == "ready", again.events
    assert "building" in again.phases, again.phases  # rebuilt, not "found"
    assert again.final["imageName"] == old_image
    assert registry.manifest_status(repository, old_tag) == 200
    assert "deleted " in service.log()
