"""A build that floods its output keeps the service's memory bounded
(issue 11, finding 5): lines are cut, the log is capped in bytes, and the
cut is visible as '[log truncated]'."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from binderbuild.builders.base import Builder
from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef


class FloodingBuilder(Builder):
    def __init__(self, lines: int, line_bytes: int) -> None:
        super().__init__()
        self.lines = lines
        self.line_bytes = line_bytes

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:  # type: ignore[override]
        for i in range(self.lines):
            yield event(Phase.BUILDING, f"{i:06d}" + "x" * self.line_bytes + "\n")


def flood_job() -> BuildJob:
    ref = ResolvedRef(
        provider_id="git",
        spec="x/HEAD",
        unresolved_ref="HEAD",
        resolved_ref="a" * 40,
        resolved_spec="x/" + "a" * 40,
        repo_url="https://example.invalid/x",
        ref_url="https://example.invalid/x",
        slug_source="x",
    )
    return BuildJob(image=ImageSpec("binder-x", "a" * 40, "flood"), ref=ref, push=False)


def run_flood(lines: int, line_bytes: int, **limits: int) -> Build:
    async def scenario() -> Build:
        manager = BuildManager(
            FloodingBuilder(lines, line_bytes),
            concurrency=1,
            build_timeout=60,
            idle_timeout=60,
            **limits,
        )
        build, _ = manager.submit(flood_job())
        await build.wait()
        return build

    return asyncio.run(scenario())


def log_bytes(build: Build) -> int:
    return sum(len(ev.message.encode()) for ev in build.events if ev.phase is Phase.BUILDING)


def test_log_is_capped_in_bytes_with_a_visible_marker() -> None:
    # 300 lines of 1 MiB would hold 300 MiB; the cap keeps 4 MiB.
    build = run_flood(300, 1024 * 1024, max_log_bytes=4 * 1024 * 1024, max_line_bytes=2 * 1024 * 1024)
    assert build.state is BuildState.SUCCEEDED  # the build itself goes on
    assert log_bytes(build) < 5 * 1024 * 1024
    markers = [ev for ev in build.events if ev.message.startswith("[log truncated]")]
    assert len(markers) == 1 and "4 MiB" in markers[0].message


def test_long_lines_are_cut_and_marked() -> None:
    build = run_flood(3, 200_000, max_line_bytes=1000)
    lines = [ev.message for ev in build.events if ev.phase is Phase.BUILDING]
    assert len(lines) == 3
    assert all(len(line.encode()) < 1100 and line.endswith("[line truncated]\n") for line in lines)


def test_line_count_cap_still_applies() -> None:
    build = run_flood(500, 10, max_log_events=100)
    assert len(build.events) < 110
    assert any("100 lines" in ev.message for ev in build.events)
    assert build.state is BuildState.SUCCEEDED
