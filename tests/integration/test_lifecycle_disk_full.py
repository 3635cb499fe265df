"""A build that runs out of disk space (issue 16), for real: a build step
fills a real small filesystem (the build container's 64 MiB /dev/shm tmpfs)
until the kernel says ENOSPC. The build fails saying the build ran out of
disk space, the service starts a cleanup at once (even below the high-water
mark: it cleans down to the low-water mark), and the next request succeeds.

Only images under this test's own prefix are candidates; nothing global is
pruned."""

from __future__ import annotations

import secrets

import pytest

from tests.api.helpers import call
from tests.api.test_admin_api import lifecycle_config, metric
from tests.integration.test_build_pipeline import build_url, wait_until
from tests.integration.test_lifecycle_real import build_image
from tests.realservices import BASE_IMAGE, dockerfile_repo_files
from tests.sse import read_events

pytestmark = [pytest.mark.docker]


def test_a_build_out_of_disk_space_fails_so_and_starts_a_cleanup(
    start_service, docker_client, make_fixture_repo
) -> None:
    prefix = f"bbfull-{secrets.token_hex(3)}-"
    old = f"{prefix}old:1"
    build_image(docker_client, old, base=BASE_IMAGE)
    service = start_service(
        lifecycle_config(
            prefix,
            # Never past the high-water mark on its own; a forced cleanup goes to 0.
            "c.EngineImageCleaner.budget = '100T'\n"
            "c.EngineImageCleaner.high_water_percent = 100\n"
            "c.EngineImageCleaner.low_water_percent = 0\n"
            "c.EngineImageCleaner.min_free = '0'\n",
        )
    )
    try:
        files = dockerfile_repo_files(secrets.token_hex(6))
        files["Dockerfile"] = files["Dockerfile"].replace(
            "USER 1000\n", "RUN dd if=/dev/zero of=/dev/shm/fill bs=1M count=256\nUSER 1000\n"
        )
        full = make_fixture_repo(files=files)
        failed = read_events(build_url(service, full.spec(full.sha), build_only="true"))
        assert failed.phases[-1] == "failed", failed.events
        message = failed.final["message"]
        assert "the build host is out of disk space" in message, message
        assert "No space left on device" in "".join(e.get("message", "") for e in failed.events)

        def counted() -> bool:
            text = call(f"{service.url}/metrics").text
            return (
                metric(text, "binderbuild_cleanup_disk_full_total") == 1
                and (
                    metric(text, "binderbuild_cleanup_removed_images_total", 'store="engine"') or 0
                )
                >= 1
            )

        wait_until(counted, "a cleanup started by the full disk that removed an image")
        assert not docker_client.images.list(name=old.split(":")[0])
        assert "ran out of disk space: cleaning up now" in service.log()

        good = make_fixture_repo()
        after = read_events(build_url(service, good.spec(good.sha), build_only="true"))
        assert after.phases[-1] == "ready", after.events
    finally:
        for found in docker_client.images.list():
            for tag in found.tags:
                if tag.startswith(prefix):
                    docker_client.images.remove(tag, force=True)
