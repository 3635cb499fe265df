"""A push that the registry refused for lack of disk space (issue 16), with
fakes: the classification of the push's error (a bare 5xx, read together
with the registry storage's free space), the message that replaces it, the
forced registry cleanup it starts (deleting down to what the push needs)
and the garbage collection run in a maintenance window."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from binderbuild.builders.base import Builder
from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.errors import BuildFailed
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.lifecycle import Lifecycle, RegistryLifecycle, UsageTracker
from binderbuild.models import BuildJob, ImageSpec
from binderbuild.registry import push_server_error
from tests.unit.test_build_log_limits import flood_job
from tests.unit.test_lifecycle import ref
from tests.unit.test_lifecycle_health import FakeBuilds, Store

DOCKER_500 = (
    "repo2docker exited with code 1: Pushing 127.0.0.1:5000/binder-x:1 failed: "
    "received unexpected HTTP status: 500 Internal Server Error"
)


@pytest.mark.parametrize(
    ("message", "status"),
    [
        (DOCKER_500, 500),
        ("Pushing reg/a:1 failed: 503 Service Unavailable", 503),
        ("push failed: registry answered status code 502", 502),
        # Not a push, or not a server error: not the registry's disk.
        ("repo2docker exited with code 1: received unexpected HTTP status: 500", None),
        ("Pushing reg/a:1 failed: unauthorized: authentication required (401)", None),
        ("Pushing reg/a:1 failed: denied: requested access to the resource is denied", None),
        ("", None),
    ],
)
def test_push_server_error_reads_the_status_of_a_failed_push(
    message: str, status: int | None
) -> None:
    assert push_server_error(message) == status


class FakeRegistry:
    """One repository with ``count`` images of one 10-byte layer each
    (created 1..count) and a shared 100-byte base layer."""

    def __init__(self, count: int) -> None:
        self.images = {
            f"sha256:{i}": {
                "layers": [{"digest": "base", "size": 100}, {"digest": f"l{i}", "size": 10}]
            }
            for i in range(1, count + 1)
        }
        self.deleted: list[str] = []

    async def repositories(self) -> list[str]:
        return ["binder-fill"]

    async def tags(self, repository: str) -> list[str]:
        return [digest.split(":")[1] for digest in self.images]

    async def manifest(self, repository: str, reference: str) -> tuple[str, dict[str, Any]] | None:
        digest = reference if reference.startswith("sha256:") else f"sha256:{reference}"
        found = self.images.get(digest)
        return None if found is None else (digest, {"config": {}, **found})

    async def blob_json(self, repository: str, digest: str) -> Any:
        return {}

    async def delete_manifest(self, repository: str, digest: str) -> bool:
        self.deleted.append(digest)
        return self.images.pop(digest, None) is not None


def registry_lifecycle(client: Any, storage: Path | None, **options: Any) -> RegistryLifecycle:
    options.setdefault("enabled", True)
    options.setdefault("budget", "1T")
    options.setdefault("keep_days", 0.0)
    return RegistryLifecycle(
        client,
        image_prefix="reg.test:5000/binder-",
        usage=Store(),
        storage_path=str(storage or ""),
        **options,
    )


def failed_build(message: str) -> Build:
    build = Build(job=BuildJob(image=ImageSpec("binder-x", "1", "build-x"), ref=ref(), push=True))
    build.state = BuildState.FAILED
    build.error = BuildFailed(message)
    return build


def test_a_5xx_push_with_the_storage_short_of_space_is_the_registry_out_of_disk(
    tmp_path: Path,
) -> None:
    # 1000T free is never there: the storage is "full" for this check.
    full = registry_lifecycle(FakeRegistry(0), tmp_path, min_free="1000T")
    message = full.push_failure(DOCKER_500)
    assert message is not None
    assert message.startswith("The registry is out of disk space: it refused the push (500)")
    assert "RegistryLifecycle.min_free" in message and "A cleanup has started" in message
    # Enough space, no storage_path, no min_free, or not a 5xx: not the disk.
    assert (
        registry_lifecycle(FakeRegistry(0), tmp_path, min_free="1").push_failure(DOCKER_500) is None
    )
    assert (
        registry_lifecycle(FakeRegistry(0), None, min_free="1000T").push_failure(DOCKER_500) is None
    )
    assert (
        registry_lifecycle(FakeRegistry(0), tmp_path, min_free="0").push_failure(DOCKER_500) is None
    )
    assert full.push_failure("Pushing reg/a:1 failed: unauthorized (401)") is None
    # A storage path that vanished is logged, not a crash.
    assert (
        registry_lifecycle(FakeRegistry(0), tmp_path / "gone", min_free="1000T").push_failure(
            DOCKER_500
        )
        is None
    )


def test_the_build_manager_hook_replaces_the_error_and_the_cleanup_runs_gc_in_a_window(
    tmp_path: Path,
) -> None:
    client = FakeRegistry(5)
    marker = tmp_path / "gc-ran"
    builds = FakeBuilds()
    seen: dict[str, Any] = {}

    def gc_probe() -> list[str]:
        code = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x'); print('gc: freed')"
        return [sys.executable, "-c", code, str(marker)]

    registry = registry_lifecycle(client, tmp_path, min_free="1000T", gc_command=gc_probe())
    life = Lifecycle(UsageTracker(Store()), None, registry, None, builds)
    real_begin = life.maintenance.begin  # type: ignore[union-attr]

    async def begin(drain_timeout: float, limit: float) -> dict[str, Any]:
        state = await real_begin(drain_timeout=drain_timeout, limit=limit)
        seen["paused during gc"] = builds.paused
        return state

    life.maintenance.begin = begin  # type: ignore[method-assign,union-attr]

    async def scenario() -> BuildFailed:
        build = failed_build(DOCKER_500)
        error = life.classify_failure(build, BuildFailed(DOCKER_500))
        assert isinstance(error, BuildFailed)
        build.error = error
        life.build_finished(build)  # the BuildManager's on_finished hook
        await life.wait_idle()
        await life.close()
        return error

    error = asyncio.run(scenario())
    assert "The registry is out of disk space" in error.message
    # Forced: everything but the newest image of the repository went, although
    # the registry was far below its budget.
    assert client.deleted == ["sha256:1", "sha256:2", "sha256:3", "sha256:4"]
    assert life.stats.disk_full_cleanups == 1
    assert life.stats.removed["registry"] == 4
    # The garbage collection ran, with no build starting meanwhile, and the
    # window closed after it.
    assert marker.exists() and life.stats.registry_gc_runs == 1
    assert seen["paused during gc"] is True
    assert not builds.paused and builds.resumed >= 1


def test_other_failures_are_left_alone_and_gc_failures_are_reported(tmp_path: Path) -> None:
    client = FakeRegistry(3)
    registry = registry_lifecycle(client, tmp_path, min_free="1", gc_command=["false"])
    life = Lifecycle(UsageTracker(Store()), None, registry, None, FakeBuilds())
    original = BuildFailed(DOCKER_500)
    assert life.classify_failure(failed_build(DOCKER_500), original) is original

    async def gc() -> bool:
        return await life.collect_registry_garbage()

    assert asyncio.run(gc()) is False
    assert life.stats.registry_gc_runs == 0
    assert life.maintenance is not None and not life.maintenance.active


def test_forced_target_frees_twice_min_free_and_never_exceeds_the_budget(tmp_path: Path) -> None:
    registry = registry_lifecycle(FakeRegistry(0), tmp_path, min_free="1000T", budget="500")
    assert registry.forced_target(1000, 500) == 0  # far short of 2000T: everything allowed
    roomy = registry_lifecycle(FakeRegistry(0), tmp_path, min_free="1", budget="500")
    assert roomy.forced_target(1000, 500) == 500  # enough free: the budget rules
    assert registry_lifecycle(FakeRegistry(0), None, budget="500").forced_target(1000, 500) == 500


class RefusedPushBuilder(Builder):
    """Builds, then fails at the push the way the engine reports a 500."""

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:  # type: ignore[override]
        yield event(Phase.PUSHING, "Pushing binder-x:1\n")
        raise BuildFailed(DOCKER_500)


def test_build_manager_reports_the_classified_failure(tmp_path: Path) -> None:
    registry = registry_lifecycle(FakeRegistry(1), tmp_path, min_free="1000T")
    life = Lifecycle(UsageTracker(Store()), None, registry, None, None)
    finished: list[str] = []

    async def scenario() -> Build:
        manager = BuildManager(
            RefusedPushBuilder(),
            concurrency=1,
            build_timeout=60,
            idle_timeout=60,
            classify_failure=life.classify_failure,
            on_finished=[lambda b: finished.append(b.error.message if b.error else "")],
        )
        build, _ = manager.submit(flood_job())
        await build.wait()
        return build

    build = asyncio.run(scenario())
    assert build.state is BuildState.FAILED
    assert build.error is not None
    assert build.error.message.startswith("The registry is out of disk space")
    # Clients and the on_finished hooks (history, the cleanup) see the new message.
    assert "The registry is out of disk space" in build.events[-1].message
    assert finished == [build.error.message]
