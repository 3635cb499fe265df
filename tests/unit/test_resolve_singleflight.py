"""Resolution is single-flight per (provider, spec) and capped overall
(issue 12): one client opening fifty connections costs one ``git ls-remote``,
and a flood of distinct specs queues instead of starting fifty processes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binderbuild.builds import BuildManager
from binderbuild.errors import RefNotFound
from binderbuild.models import ResolvedRef
from binderbuild.pipeline import KnownImages, Pipeline, PipelineSettings
from tests.unit.fakes import FakeBuilder, FakeProvider, MemoryImageStore, settle


class GatedProvider(FakeProvider):
    """Resolutions wait for ``gate``; counts how many run at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = asyncio.Event()
        self.running = 0
        self.peak = 0

    async def resolve(self, spec: str) -> ResolvedRef:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            return await super().resolve(spec)
        finally:
            self.running -= 1


def make_pipeline(provider: FakeProvider, limit: int = 16) -> Pipeline:
    builds = BuildManager(FakeBuilder(), concurrency=1, build_timeout=60, idle_timeout=60)
    return Pipeline(
        providers={"fake": provider},
        image_store=MemoryImageStore(),
        builds=builds,
        known_images=KnownImages(ttl=60),
        launcher=None,
        settings=PipelineSettings(
            image_prefix="binder-", resolve_cache_ttl=0, max_concurrent_resolutions=limit
        ),
    )


def test_identical_resolutions_share_one_call() -> None:
    async def scenario() -> None:
        provider = GatedProvider(refs={"o/r/main": "b" * 40})
        pipeline = make_pipeline(provider)
        waiters = [asyncio.ensure_future(pipeline.resolve(provider, "o/r/main")) for _ in range(50)]
        await settle()
        provider.gate.set()
        refs = await asyncio.gather(*waiters)
        assert provider.resolved == ["o/r/main"]  # one resolution for fifty requests
        assert {ref.resolved_ref for ref in refs} == {"b" * 40}

    asyncio.run(scenario())


def test_a_client_leaving_does_not_cancel_the_shared_resolution() -> None:
    async def scenario() -> None:
        provider = GatedProvider(refs={"o/r/main": "c" * 40})
        pipeline = make_pipeline(provider)
        leaving = asyncio.ensure_future(pipeline.resolve(provider, "o/r/main"))
        staying = asyncio.ensure_future(pipeline.resolve(provider, "o/r/main"))
        await settle()
        leaving.cancel()
        await settle()
        provider.gate.set()
        assert (await staying).resolved_ref == "c" * 40
        assert leaving.cancelled() and provider.resolved == ["o/r/main"]

    asyncio.run(scenario())


def test_concurrent_resolutions_are_capped_and_queued() -> None:
    async def scenario() -> None:
        refs = {f"o/r{i}/main": f"{i:040x}" for i in range(20)}
        provider = GatedProvider(refs=refs)
        pipeline = make_pipeline(provider, limit=3)
        waiters = [asyncio.ensure_future(pipeline.resolve(provider, spec)) for spec in refs]
        await settle()
        assert provider.running == 3  # the rest wait for a slot, none refused
        provider.gate.set()
        resolved = await asyncio.gather(*waiters)
        assert provider.peak == 3 and len(resolved) == 20

    asyncio.run(scenario())


def test_a_missing_ref_fails_every_waiter_once() -> None:
    async def scenario() -> None:
        provider = GatedProvider()
        pipeline = make_pipeline(provider)
        waiters = [asyncio.ensure_future(pipeline.resolve(provider, "o/r/nope")) for _ in range(5)]
        await settle()
        provider.gate.set()
        for waiter in waiters:
            with pytest.raises(RefNotFound):
                await waiter
        assert provider.resolved == ["o/r/nope"]

    asyncio.run(scenario())
