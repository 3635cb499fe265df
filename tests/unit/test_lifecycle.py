"""Image lifecycle (issue 16) with fakes: which images go, in which order,
and what never goes; the registry's byte budget; usage tracking batches."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import pytest

from binderbuild.builds import Build, BuildState
from binderbuild.history import BuildHistory
from binderbuild.lifecycle import (
    DiskUsage,
    EngineImage,
    EngineImageCleaner,
    ImageInUse,
    RegistryImage,
    UsageTracker,
    engine_candidates,
    registry_bytes,
    registry_deletions,
)
from binderbuild.models import BuildJob, BuildRequest, ImageSpec, ResolvedRef
from binderbuild.pipeline import RunOutcome, RunReport, StageTimings

PREFIX = "reg.example:5000/binder-"
NOW = 1_000_000.0
DAY = 86400.0


def img(name: str, created: float, size: int = 100, *extra_tags: str, id: str = "") -> EngineImage:
    return EngineImage(id=id or f"sha256:{name}", tags=(name, *extra_tags), created=created, size=size)


# --- selection -----------------------------------------------------------------


def test_candidates_least_recently_used_first_falling_back_to_creation() -> None:
    images = [
        img(PREFIX + "a:1", created=NOW - 50 * DAY),  # used yesterday
        img(PREFIX + "b:1", created=NOW - 10 * DAY),  # never used: its creation time
        img(PREFIX + "c:1", created=NOW - 40 * DAY),  # used 20 days ago
        img(PREFIX + "d:1", created=NOW - 30 * DAY),  # never used
    ]
    last_used = {PREFIX + "a:1": NOW - DAY, PREFIX + "c:1": NOW - 20 * DAY}
    chosen = engine_candidates(
        images, prefix=PREFIX, last_used=last_used, in_use_ids=set(), in_use_names=set(),
        now=NOW, grace_seconds=3600,
    )
    assert [i.tags[0] for i in chosen] == [PREFIX + n for n in ("d:1", "c:1", "b:1", "a:1")]


def test_candidates_never_include_base_in_use_building_or_recent_images() -> None:
    images = [
        img("binderbuild/notebook-base:bookworm", created=0),  # a base image
        img(PREFIX + "retagged:1", 0, 100, "mybase:latest"),  # also tagged outside the prefix
        img(PREFIX + "running:1", created=0, id="sha256:run"),  # a server runs it
        img(PREFIX + "building:1", created=0),  # a build is (re)making it
        img(PREFIX + "fresh:1", created=NOW - 60),  # inside the grace period
        img("<none>", created=0),  # untagged (dangling: pruned, not removed by name)
        img(PREFIX + "old:1", created=0),
    ]
    chosen = engine_candidates(
        images, prefix=PREFIX, last_used={}, in_use_ids={"sha256:run"},
        in_use_names={PREFIX + "building:1"}, now=NOW, grace_seconds=3600,
    )
    assert [i.tags for i in chosen] == [(PREFIX + "old:1",)]


# --- the engine cleaner ------------------------------------------------------------


class FakeEngine:
    """An engine whose disk holds ``base`` bytes plus its images' sizes."""

    def __init__(self, images: Iterable[EngineImage], total: int = 1000, base: int = 0) -> None:
        self.images_by_id = {i.id: i for i in images}
        self.total, self.base = total, base
        self.dangling = 0
        self.running: set[str] = set()
        self.removed: list[str] = []
        self.pruned = 0

    async def images(self) -> list[EngineImage]:
        return list(self.images_by_id.values())

    async def running_image_ids(self) -> set[str]:
        return set(self.running)

    async def remove(self, image: EngineImage) -> None:
        if image.id in self.running:
            raise ImageInUse(f"{image.tags[0]} is used by a container")
        del self.images_by_id[image.id]
        self.removed.append(image.tags[0])

    async def prune(self, build_cache: bool, dangling: bool = True) -> int:
        self.pruned += 1
        freed, self.dangling = self.dangling, 0
        return freed

    async def engine_bytes(self) -> int:
        return self.base + self.dangling + sum(i.size for i in self.images_by_id.values())

    async def usage(self) -> DiskUsage:
        return DiskUsage(total=self.total, used=await self.engine_bytes())


class FakeUsage:
    def __init__(self, last_used: dict[str, float] | None = None) -> None:
        self.data = dict(last_used or {})

    async def last_used(self) -> dict[str, float]:
        return dict(self.data)


def cleaner(engine: FakeEngine, usage: FakeUsage | None = None, **kw) -> tuple[EngineImageCleaner, list[str]]:
    forgotten: list[str] = []
    options = {"grace_period": 0.0, **kw.pop("options", {})}
    c = EngineImageCleaner(
        engine,
        image_prefix=PREFIX,
        usage=usage or FakeUsage(),
        in_use_names=kw.pop("in_use_names", lambda: ()),
        on_removed=forgotten.append,
        clock=lambda: NOW,
        **options,
    )
    return c, forgotten


def ten_images() -> list[EngineImage]:
    # image i was created i days after the first; 80 bytes each.
    return [img(f"{PREFIX}r{i}:1", created=NOW - (10 - i) * DAY, size=80) for i in range(10)]


def test_nothing_happens_below_the_high_water_mark() -> None:
    engine = FakeEngine(ten_images(), total=1000, base=0)  # 800 of 1000: 80 %, not above
    c, _ = cleaner(engine)
    report = asyncio.run(c.run_once())
    assert engine.removed == [] and engine.pruned == 0
    assert report.removed == [] and not report.triggered


def test_past_the_high_water_mark_lru_goes_down_to_the_low_water_mark() -> None:
    engine = FakeEngine(ten_images(), total=1000, base=100)  # 900/1000 = 90 %
    engine.dangling = 20
    engine.running = {f"sha256:{PREFIX}r0:1"}  # the oldest image runs: it stays
    usage = FakeUsage({f"{PREFIX}r1:1": NOW - 60})  # r1 launched a minute ago
    c, forgotten = cleaner(engine, usage, in_use_names=lambda: {f"{PREFIX}r2:1"})
    report = asyncio.run(c.run_once())
    assert engine.pruned == 1 and report.pruned_bytes == 20
    # 920 -> prune -> 900 -> least recently used first down to <= 60 % (600):
    # r3..r6 (r0 runs, r2 is being built, r1 was launched a minute ago: last).
    assert engine.removed == [f"{PREFIX}r{i}:1" for i in (3, 4, 5, 6)]
    assert forgotten == engine.removed and report.removed == engine.removed
    assert report.before.used == 920 and report.after.used == 580
    assert report.freed_bytes == 340
    remaining = {i.tags[0] for i in engine.images_by_id.values()}
    assert {f"{PREFIX}r0:1", f"{PREFIX}r1:1", f"{PREFIX}r2:1"} <= remaining


def test_pruning_alone_can_be_enough() -> None:
    engine = FakeEngine(ten_images()[:5], total=1000, base=200)  # 600 + 300 dangling = 90 %
    engine.dangling = 300
    c, _ = cleaner(engine)
    report = asyncio.run(c.run_once())
    assert engine.pruned == 1 and engine.removed == [] and report.after.used == 600


def test_dry_run_reports_the_plan_and_removes_nothing() -> None:
    engine = FakeEngine(ten_images(), total=1000, base=100)
    c, forgotten = cleaner(engine)
    report = asyncio.run(c.run_once(dry_run=True))
    assert engine.removed == [] and engine.pruned == 0 and forgotten == []
    assert report.removed == [f"{PREFIX}r{i}:1" for i in range(4)]


def test_a_byte_budget_replaces_the_filesystem_reading() -> None:
    # 10 x 80 = 800 bytes of images on a huge disk; budget 500: clean to 375 (75 %).
    engine = FakeEngine(ten_images(), total=10**12, base=0)
    c, _ = cleaner(engine, options={"budget": "500"})
    report = asyncio.run(c.run_once())
    assert report.triggered
    assert len(engine.removed) == 6 and report.after.used == 320


def test_an_image_that_turns_out_in_use_is_skipped_not_fatal() -> None:
    images = ten_images()
    engine = FakeEngine(images, total=1000, base=100)

    # A server starts on r0 after the container list was read.
    original = engine.remove

    async def remove(image: EngineImage) -> None:
        if image.tags[0] == f"{PREFIX}r0:1":
            raise ImageInUse("conflict: image is being used by running container")
        await original(image)

    engine.remove = remove  # type: ignore[method-assign]
    c, _ = cleaner(engine)
    report = asyncio.run(c.run_once())
    assert f"{PREFIX}r0:1" in report.skipped
    assert engine.removed == [f"{PREFIX}r{i}:1" for i in (1, 2, 3, 4)]


def test_an_empty_prefix_disables_the_cleaner() -> None:
    engine = FakeEngine([img("anything:1", created=0)], total=1000, base=900)
    c = EngineImageCleaner(
        engine, image_prefix="", usage=FakeUsage(), in_use_names=lambda: (), clock=lambda: NOW
    )
    report = asyncio.run(c.run_once())
    assert engine.removed == [] and engine.pruned == 0 and not report.triggered


# --- the registry's budget -------------------------------------------------------------


def rimg(repo: str, tag: str, created: float, blobs: dict[str, int]) -> RegistryImage:
    return RegistryImage(
        repository=repo,
        digest=f"sha256:{repo}-{tag}",
        tags=(tag,),
        names=(f"reg.example:5000/{repo}:{tag}",),
        blobs=blobs,
        created=created,
    )


def test_registry_bytes_count_shared_layers_once() -> None:
    a = rimg("binder-a", "1", 0, {"base": 1000, "a1": 10})
    b = rimg("binder-b", "1", 0, {"base": 1000, "b1": 20})
    assert registry_bytes([a, b]) == 1030


def test_registry_budget_deletes_lru_keeping_newest_per_repository_and_recent() -> None:
    base = {"base": 1000}
    images = [
        # repository a: three versions; a3 is the newest and stays.
        rimg("binder-a", "1", NOW - 30 * DAY, {**base, "a1": 100}),
        rimg("binder-a", "2", NOW - 20 * DAY, {**base, "a2": 100}),
        rimg("binder-a", "3", NOW - 10 * DAY, {**base, "a3": 100}),
        # repository b: b1 old but launched yesterday (kept: used in the last 7 days).
        rimg("binder-b", "1", NOW - 40 * DAY, {**base, "b1": 100}),
        rimg("binder-b", "2", NOW - 35 * DAY, {**base, "b2": 100}),
        # repository c: one image (the newest of its repository): stays.
        rimg("binder-c", "1", NOW - 90 * DAY, {**base, "c1": 100}),
    ]
    last_used = {"reg.example:5000/binder-b:1": NOW - DAY, "reg.example:5000/binder-a:1": NOW - 15 * DAY}
    assert registry_bytes(images) == 1600
    doomed = registry_deletions(
        images, budget=1350, last_used=last_used, keep_seconds=7 * DAY, now=NOW
    )
    # Kept: a3, b2, c1 (newest of their repositories), b1 (used yesterday).
    # Candidates by last use: a2 (never used: created 20 d ago), then a1 (used 15 d ago).
    assert [(d.repository, d.tags) for d in doomed] == [("binder-a", ("2",)), ("binder-a", ("1",))]
    remaining = [i for i in images if i not in doomed]
    assert registry_bytes(remaining) == 1400  # over budget: nothing else may go (logged)

    # With a budget that is met early, only what is needed goes.
    doomed = registry_deletions(images, budget=1500, last_used=last_used, keep_seconds=7 * DAY, now=NOW)
    assert [d.tags for d in doomed] == [("2",)]
    assert registry_deletions(images, budget=5000, last_used={}, keep_seconds=0, now=NOW) == []


# --- usage tracking ---------------------------------------------------------------------


def ref() -> ResolvedRef:
    return ResolvedRef(
        provider_id="git", spec="u/main", unresolved_ref="main", resolved_ref="a" * 40,
        resolved_spec="u/" + "a" * 40, repo_url="git://x/u", ref_url="", slug_source="git://x/u",
        immutable_ref=True,
    )


def report(outcome: RunOutcome, image: ImageSpec | None) -> RunReport:
    return RunReport(
        request=BuildRequest(provider_id="git", spec="u/main"),
        outcome=outcome, timings=StageTimings(), ref=ref() if image else None, image=image,
    )


def test_usage_tracker_records_launches_cache_hits_and_builds_in_batches(tmp_path: Path) -> None:
    async def scenario() -> None:
        history = BuildHistory(tmp_path)
        writes: list[dict[str, float]] = []
        original = history.record_usage

        async def counting(used):  # type: ignore[no-untyped-def]
            writes.append(dict(used))
            await original(used)

        history.record_usage = counting  # type: ignore[method-assign]
        clock = iter([10.0, 11.0, 12.0, 13.0])
        tracker = UsageTracker(history, clock=lambda: next(clock))
        a = ImageSpec("binder-a", "1", "build-a")
        b = ImageSpec("binder-b", "1", "build-b")
        tracker.observe_run(report(RunOutcome.SUCCESS, a))  # 10
        tracker.observe_run(report(RunOutcome.SUCCESS, b))  # 11
        tracker.observe_run(report(RunOutcome.SUCCESS, a))  # 12
        tracker.observe_run(report(RunOutcome.FAILURE, None))  # nothing located
        built = Build(job=BuildJob(image=ImageSpec("binder-c", "1", "build-c"), ref=ref(), push=False))
        built.state = BuildState.SUCCEEDED
        tracker.remember_built(built)  # 13
        failed = Build(job=BuildJob(image=ImageSpec("binder-d", "1", "build-d"), ref=ref(), push=False))
        failed.state = BuildState.FAILED
        tracker.remember_built(failed)
        # Nothing was written on the caller's path: one batch, later.
        assert writes == []
        assert await tracker.last_used() == {"binder-a:1": 12.0, "binder-b:1": 11.0, "binder-c:1": 13.0}
        assert writes == [{"binder-a:1": 12.0, "binder-b:1": 11.0, "binder-c:1": 13.0}]
        await tracker.close()
        await history.close()

    asyncio.run(scenario())


def test_usage_tracker_survives_a_failing_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        history = BuildHistory(tmp_path)

        async def broken(used):  # type: ignore[no-untyped-def]
            raise OSError("disk full")

        history.record_usage = broken  # type: ignore[method-assign]
        tracker = UsageTracker(history, clock=lambda: 5.0)
        tracker.touch("binder-a:1")
        await tracker.flush()  # logged, not raised
        await tracker.close()
        await history.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("percent", [80.0, 85.0])
def test_diskusage_percent(percent: float) -> None:
    assert DiskUsage(total=200, used=int(percent * 2)).percent == pytest.approx(percent)
