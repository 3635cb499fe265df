"""Lifecycle (issue 16) with fakes: the disk health check (warning, failure,
the cleanup it starts, at most one a minute), forced cleanups below the
high-water mark, maintenance windows over a build queue, the log budget."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from binderbuild.history import BuildHistory, encode_events
from binderbuild.lifecycle import Lifecycle, Maintenance, MaintenanceRefused, UsageTracker
from tests.api.test_history_store import EVENTS, record
from tests.unit.test_lifecycle import FakeEngine, FakeUsage, cleaner, ten_images


class Store:
    async def record_usage(self, used: Any) -> None:
        pass

    async def last_used(self) -> dict[str, float]:
        return {}


def lifecycle_with(engine: FakeEngine, **options: Any) -> Lifecycle:
    c, _ = cleaner(engine, FakeUsage(), options=options)
    return Lifecycle(UsageTracker(Store()), c)


def test_health_warns_above_the_high_water_mark_and_stays_ok() -> None:
    engine = FakeEngine(ten_images(), total=1000)  # 800 of 1000 used: at the mark
    life = lifecycle_with(engine, high_water_percent=70.0, min_free="0")
    result = asyncio.run(life.health())
    assert result["ok"] is True
    assert "high-water mark" in result["warning"]
    assert result["engine"]["used_bytes"] == 800 and result["engine"]["free_bytes"] == 200
    assert life.stats.engine_used == 800


def test_health_fails_when_a_build_would_not_fit_and_cleans_once_a_minute() -> None:
    engine = FakeEngine(ten_images(), total=1000)
    life = lifecycle_with(engine, min_free="300", low_water_percent=50.0)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        first = await life.health()
        await life.wait_idle()
        second = await life.health()  # still short of space, but within the pause
        await life.wait_idle()
        return first, second

    first, second = asyncio.run(scenario())
    assert first["ok"] is False
    assert "the build host is out of disk space" in first["message"]
    # The forced cleanup ran (below the 80 % high-water mark) down to 50 %.
    assert engine.removed == [image.tags[0] for image in ten_images()[:4]]
    assert second["ok"] is True  # 500 free now
    assert life.stats.disk_full_cleanups == 1
    assert life.stats.removed["engine"] == 4


class FakeBuilds:
    def __init__(self, running: int = 0, queued: int = 0) -> None:
        self.paused = False
        self._running = running
        self._queued = queued
        self.resumed = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def queue_length(self) -> int:
        return self._queued

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.resumed += 1


def test_maintenance_pauses_starts_and_resumes() -> None:
    builds = FakeBuilds()
    window = Maintenance(builds)

    async def scenario() -> None:
        state = await window.begin(drain_timeout=1, limit=60)
        assert state["maintenance"] is True and builds.paused
        builds._queued = 2
        assert window.state()["queued"] == 2
        state = window.end()
        assert state["maintenance"] is False and not builds.paused
        assert builds.resumed == 1
        window.end()  # closing twice is harmless
        assert builds.resumed == 1

    asyncio.run(scenario())


def test_maintenance_waits_for_running_builds_or_refuses() -> None:
    builds = FakeBuilds(running=1)
    window = Maintenance(builds)

    async def refused() -> None:
        with pytest.raises(MaintenanceRefused, match="1 builds still running"):
            await window.begin(drain_timeout=0.3, limit=60)
        assert not builds.paused and not window.active

    asyncio.run(refused())

    async def drained() -> float:
        loop = asyncio.get_running_loop()

        def finish() -> None:
            builds._running = 0
            window.build_finished()

        loop.call_later(0.2, finish)
        t0 = time.monotonic()
        await window.begin(drain_timeout=10, limit=60)
        return time.monotonic() - t0

    assert asyncio.run(drained()) < 5
    assert window.active


def test_maintenance_closes_by_itself_after_its_limit() -> None:
    builds = FakeBuilds()
    window = Maintenance(builds)

    async def scenario() -> None:
        await window.begin(drain_timeout=1, limit=0.1)
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert not window.active and not builds.paused and builds.resumed == 1


def test_log_budget_drops_the_oldest_logs_but_never_a_running_builds(tmp_path: Path) -> None:
    one = len(encode_events(EVENTS))
    now = time.time()

    async def scenario() -> tuple[list[bool], int]:
        store = BuildHistory(tmp_path, max_log_bytes=str(2 * one))
        # A build written ahead (running) long ago: its log is never dropped.
        store.write_ahead(
            record("running0000000000", finished=now - 10 * 86400, state="running"), EVENTS
        )
        await store.flush()
        for i, age in enumerate((5, 4, 3)):
            await store.record(record(f"b{i}000000000000000", finished=now - age * 86400), EVENTS)
        pruned = [
            await store.log_pruned(b)
            for b in (
                "running0000000000",
                "b0000000000000000",
                "b1000000000000000",
                "b2000000000000000",
            )
        ]
        events = await store.events("b0000000000000000")
        await store.close()
        return pruned, len(events or [])

    pruned, kept_events = asyncio.run(scenario())
    assert pruned == [False, True, True, False]
    assert kept_events == 0
