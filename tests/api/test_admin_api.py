"""The admin API, /health's disk check and the lifecycle metrics (issue 16),
against a real service building on the real engine.

"Past the high-water mark" is a byte budget of 1 (the engine always holds
more); images of other tests are never candidates (a unique image prefix),
and nothing global is pruned (prune_dangling and prune_build_cache off)."""

from __future__ import annotations

import re
import secrets

import pytest

from tests.api.helpers import call
from tests.conftest import service_config
from tests.integration.test_build_pipeline import build_url, wait_until
from tests.sse import read_events

pytestmark = [pytest.mark.docker]

TOKEN = "lifecycle-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def lifecycle_config(prefix: str, extra: str = "") -> str:
    return service_config(
        None,
        f"c.BinderBuild.image_prefix = {prefix!r}\n"
        f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'ops'}}\n"
        "c.EngineImageCleaner.prune_dangling = False\n"
        "c.EngineImageCleaner.prune_build_cache = False\n"
        "c.EngineImageCleaner.grace_period = 0\n" + extra,
    )


def disk_check(health: dict) -> dict:
    return next(c for c in health["checks"] if c["service"] == "disk")


def metric(text: str, name: str, labels: str = "") -> float | None:
    pattern = re.escape(name + (f"{{{labels}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_admin_lists_and_cleans_images_health_warns_and_metrics_count(
    start_service, docker_client, make_fixture_repo
) -> None:
    prefix = f"bbadmin-{secrets.token_hex(3)}-"
    service = start_service(
        lifecycle_config(
            prefix, "c.EngineImageCleaner.budget = '1'\nc.EngineImageCleaner.min_free = '0'\n"
        )
    )
    repo = make_fixture_repo()
    try:
        built = read_events(build_url(service, repo.spec(repo.sha), build_only="true"))
        assert built.phases[-1] == "ready", built.events
        image = built.final["imageName"]
        assert image.startswith(prefix)

        # Authorized callers only, as the builds API's cancel.
        anonymous = call(f"{service.url}/api/admin/images")
        assert anonymous.status == 401 and "Bearer" in anonymous.headers["www-authenticate"]
        assert (
            call(f"{service.url}/api/admin/images", headers={"Authorization": "Bearer nope"}).status
            == 403
        )
        assert call(f"{service.url}/api/admin/cleanup", "POST").status == 401

        def listed() -> dict | None:
            rows = call(f"{service.url}/api/admin/images", headers=AUTH).json()["images"]
            return next((r for r in rows if r["image"] == image and r["last_used"]), None)

        wait_until(lambda: listed() is not None, "the built image listed with its last use")
        row = listed()
        assert row is not None and row["in_engine"] and not row["in_use"] and row["size_bytes"] > 0

        # Above the high-water mark: /health warns but stays 200.
        health = call(f"{service.url}/health")
        assert health.status == 200, health.text
        disk = disk_check(health.json())
        assert disk["ok"] is True and disk["required"] is True
        assert "high-water mark" in disk["warning"], disk

        bad = call(f"{service.url}/api/admin/cleanup?dry_run=maybe", "POST", headers=AUTH)
        assert bad.status == 400, bad.text

        dry = call(f"{service.url}/api/admin/cleanup?dry_run=true", "POST", headers=AUTH)
        assert dry.status == 200, dry.text
        assert dry.json()["dry_run"] is True
        assert dry.json()["engine"]["triggered"] is True
        assert dry.json()["engine"]["removed"] == [image]
        docker_client.images.get(image)  # a dry run removes nothing

        done = call(f"{service.url}/api/admin/cleanup", "POST", headers=AUTH)
        assert done.status == 200, done.text
        assert done.json()["engine"]["removed"] == [image], done.json()
        assert not any(image in i.tags for i in docker_client.images.list(name=image.split(":")[0]))

        metrics = call(f"{service.url}/metrics").text
        assert metric(metrics, "binderbuild_cleanup_removed_images_total", 'store="engine"') == 1
        assert (metric(metrics, "binderbuild_cleanup_freed_bytes_total", 'store="engine"') or 0) > 0
        assert (metric(metrics, "binderbuild_disk_used_bytes", 'store="engine"') or 0) > 0
        assert metric(metrics, "binderbuild_disk_limit_bytes", 'store="engine"') == 1

        # A removed image is built again when next asked for.
        again = read_events(build_url(service, repo.spec(repo.sha), build_only="true"))
        assert again.phases[-1] == "ready", again.events
        assert "building" in again.phases, again.phases
    finally:
        for found in docker_client.images.list():
            for tag in found.tags:
                if tag.startswith(prefix):
                    docker_client.images.remove(tag, force=True)


def test_health_fails_when_a_build_would_not_fit_and_starts_a_cleanup(start_service) -> None:
    prefix = f"bbadmin-{secrets.token_hex(3)}-"
    # No disk here has 100 TiB free: a build "would not fit".
    service = start_service(lifecycle_config(prefix, "c.EngineImageCleaner.min_free = '100T'\n"))
    health = call(f"{service.url}/health")
    assert health.status == 503, health.text
    disk = disk_check(health.json())
    assert disk["ok"] is False
    assert "the build host is out of disk space" in disk["message"], disk
    wait_until(
        lambda: (
            metric(call(f"{service.url}/metrics").text, "binderbuild_cleanup_disk_full_total") == 1
        ),
        "a cleanup started by the full disk",
    )
