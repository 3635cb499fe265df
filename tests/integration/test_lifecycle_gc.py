"""Registry garbage collection in a maintenance window, seen from the service
(issue 16), with scripts/services.sh's registry, the real engine and a real
binderbuild: while the window is open a build request queues (it is not
failed), the registry goes read-only and collects garbage, and when the
window ends the queued build runs and pushes; the image built before is
still there. ``gc`` opens and closes the window itself when given the
service's admin URL and token."""

from __future__ import annotations

import secrets
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.api.helpers import call
from tests.integration.test_build_pipeline import build_url, wait_until
from tests.ops.test_singlemachine_registry import ScriptRegistry
from tests.realservices import MANIFEST_MEDIA_TYPES, _http_status, free_port
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

TOKEN = "lifecycle-gc-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def manifest_status(registry: ScriptRegistry, image: str) -> int:
    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    headers = {"Accept": ", ".join(MANIFEST_MEDIA_TYPES), **registry.basic()}
    return _http_status(f"{registry.url}/v2/{repository}/manifests/{tag}", headers)


def queue_check(base: str) -> dict[str, Any]:
    checks = call(f"{base}/health").json()["checks"]
    return next(c for c in checks if c["service"] == "queue")  # type: ignore[no-any-return]


def registry_service_config(registry: ScriptRegistry, prefix: str) -> list[str]:
    """binderbuild's configuration lines for building and pushing to
    scripts/services.sh's registry (with its credentials), images under
    ``prefix``, the registry asked on every request."""
    user, password = registry.credentials()
    return [
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']",
        "c.DockerBuilder.build_network = 'none'",
        "c.BinderBuild.use_registry = True",
        f"c.DockerRegistry.url = {registry.url!r}",
        f"c.DockerRegistry.username = {user!r}",
        f"c.DockerRegistry.password = {password!r}",
        f"c.BinderBuild.image_prefix = {prefix!r}",
        "c.BinderBuild.image_exists_cache_ttl = 0",
    ]


def test_builds_queue_during_registry_gc_and_succeed_after(
    tmp_path: Path, start_service, docker_client: Any, make_fixture_repo
) -> None:
    for tool in ("docker-registry", "htpasswd"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run scripts/setup.sh", pytrace=False)
    registry = ScriptRegistry(tmp_path / "var", free_port())
    registry.env["BINDERBUILD_REGISTRY_DELETES"] = "1"
    started = registry.run("start")
    assert started.returncode == 0, started.stdout + started.stderr
    prefix = f"127.0.0.1:{registry.port}/bbgc-{secrets.token_hex(3)}-"
    try:
        service = start_service(
            "\n".join(
                [
                    *registry_service_config(registry, prefix),
                    f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'ops'}}",
                ]
            )
            + "\n"
        )
        admin = f"{service.url}/api/admin/maintenance"
        first = make_fixture_repo()
        before = read_events(build_url(service, first.spec(first.sha), build_only="true"))
        assert before.phases[-1] == "ready", before.events
        kept = before.final["imageName"]

        assert call(f"{admin}?action=start", "POST").status == 401
        opened = call(f"{admin}?action=start", "POST", headers=AUTH)
        assert opened.status == 200, opened.text
        assert opened.json()["maintenance"] is True
        # /health says so too (no token needed: operators' monitoring).
        wait_until(lambda: queue_check(service.url)["paused"] is True, "/health: paused")

        # A request during the window queues.
        second = make_fixture_repo()
        result: dict[str, SSEResult] = {}
        follower = threading.Thread(
            target=lambda: result.update(
                r=read_events(build_url(service, second.spec(second.sha), build_only="true"))
            )
        )
        follower.start()
        wait_until(lambda: call(admin, headers=AUTH).json()["queued"] == 1, "the new build queued")

        # The registry's garbage collection, read-only, with the build queued.
        gc = registry.run("gc")
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert "read-only" in gc.stdout + gc.stderr
        state = call(admin, headers=AUTH).json()
        assert (state["queued"], state["running"]) == (1, 0), state
        assert follower.is_alive()  # not failed: still waiting

        closed = call(f"{admin}?action=end", "POST", headers=AUTH)
        assert closed.status == 200 and closed.json()["maintenance"] is False, closed.text
        wait_until(lambda: queue_check(service.url)["paused"] is False, "/health: not paused")
        follower.join(timeout=300)
        after = result["r"]
        assert after.phases[-1] == "ready", after.events
        assert "waiting" in after.phases and "building" in after.phases, after.phases
        assert manifest_status(registry, after.final["imageName"]) == 200
        assert manifest_status(registry, kept) == 200  # nothing in use was lost

        # gc opens and closes the window itself with the service's admin URL.
        registry.env["BINDERBUILD_ADMIN_URL"] = service.url
        registry.env["BINDERBUILD_ADMIN_TOKEN"] = TOKEN
        gc = registry.run("gc")
        output = gc.stdout + gc.stderr
        assert gc.returncode == 0, output
        assert "maintenance start" in output and "maintenance end" in output, output
        assert '"maintenance": true' in output and '"maintenance": false' in output, output
        assert call(admin, headers=AUTH).json()["maintenance"] is False
        registry.env["BINDERBUILD_ADMIN_TOKEN"] = "wrong"
        refused = registry.run("gc")
        assert refused.returncode != 0
        assert "refused maintenance start" in refused.stdout + refused.stderr
        assert manifest_status(registry, kept) == 200
    finally:
        registry.run("stop")
