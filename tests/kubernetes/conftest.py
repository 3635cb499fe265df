"""Fixtures for the Kubernetes backend's unit tests (no cluster: a fake API)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from traitlets.config import Config

from binderbuild.builders.base import BuildResources
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.events import ProgressEvent
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef
from binderbuild.naming import image_spec
from binderbuild.secrets import Scrubber
from tests.kubernetes.fake_k8s import FakeCoreV1Api

T = TypeVar("T")

SECRET = "s3cret-push-token"


def run(coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
    """Run one async test body with an overall limit, so a hang is a failure."""

    async def limited() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(limited())


async def until(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.005)


def make_ref(repo: str = "https://git.example.org/owner/repo", sha: str = "a" * 40) -> ResolvedRef:
    return ResolvedRef(
        provider_id="git",
        spec=f"{repo}/main",
        unresolved_ref="main",
        resolved_ref=sha,
        resolved_spec=f"{repo}/{sha}",
        repo_url=repo,
        ref_url=f"{repo}/tree/{sha}",
        slug_source=repo,
        content_provider="git",
    )


def make_job(
    repo: str = "https://git.example.org/owner/repo",
    sha: str = "a" * 40,
    push: bool = True,
    extra_env: tuple[tuple[str, str], ...] = (),
) -> BuildJob:
    ref = make_ref(repo, sha)
    image: ImageSpec = image_spec(ref, "registry.example.org/binder-")
    return BuildJob(image=image, ref=ref, push=push, extra_env=extra_env)


def make_builder(api: Any, **traits: Any) -> KubernetesBuilder:
    config = Config()
    settings: dict[str, Any] = {
        "build_namespace": "ns",
        "instance_name": "bb",
        "build_image": "registry.example.org/binderbuild-builder:test",
        "push_secret": "bb-push",
        "log_end_grace": 0.5,
        "log_resume_delay": 0.05,
        "startup_timeout": 5.0,
        # Sweeps run only when a test calls cleanup_once().
        "build_cleanup_interval": 3600.0,
        # Adopting other replicas' pods at start-up is tested on its own
        # (test_resilience.py); elsewhere it would race with the test.
        "adopt_orphaned_pods": False,
        # API answers worth a retry (429/500/503/504) are retried this long.
        "api_retry_deadline": 1.0,
    }
    settings.update(traits)
    for key, value in settings.items():
        config.KubernetesBuilder[key] = value
    return KubernetesBuilder(
        config=config,
        k8s_api=api,
        resources=BuildResources(scrubber=Scrubber([SECRET]), memory_limit=2 * 1024**3),
        log=logging.getLogger("test.k8s"),
    )


class Collector:
    """Consumes a build in a task, keeping every event and the outcome."""

    def __init__(self, gen: AsyncIterator[ProgressEvent]) -> None:
        self.events: list[ProgressEvent] = []
        self.error: BaseException | None = None
        self.task = asyncio.create_task(self._consume(gen))

    async def _consume(self, gen: AsyncIterator[ProgressEvent]) -> None:
        try:
            async for ev in gen:
                self.events.append(ev)
        except Exception as exc:
            self.error = exc

    @property
    def messages(self) -> list[str]:
        return [e.message for e in self.events]

    async def done(self, timeout: float = 5.0) -> None:
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


@pytest.fixture
def api() -> FakeCoreV1Api:
    return FakeCoreV1Api()


Waiter = Callable[[Callable[[], bool]], Awaitable[None]]
