"""BuildManager with a scripted builder: dedup, queue, cancel, timeouts, late
join, followers and the abandoned-build policy.

The builder is a fake on purpose: these tests pin down the manager's own
rules (which a real build's timing would blur). Real builds go through the
same manager in tests/api and tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from binderbuild.builders.base import Builder
from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.errors import BuildCancelled, BuildFailed, BuildTimeout
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef
from tests.unit.fakes import FakeClock, settle


class ScriptedBuilder(Builder):
    """Each build waits on its own gate; the test opens gates and injects lines."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: list[str] = []  # build names, in start order
        self.stopped: list[str] = []  # build names whose generator was closed early
        self.gates: dict[str, asyncio.Queue[ProgressEvent | BaseException | None]] = {}

    def gate(self, name: str) -> asyncio.Queue[ProgressEvent | BaseException | None]:
        return self.gates.setdefault(name, asyncio.Queue())

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        name = job.image.build_name
        self.started.append(name)
        gate = self.gate(name)
        finished = False
        try:
            while True:
                item = await gate.get()
                if item is None:
                    finished = True
                    return
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                yield item
        finally:
            if not finished:
                self.stopped.append(name)


def job(name: str) -> BuildJob:
    ref = ResolvedRef(
        provider_id="git",
        spec=f"https%3A%2F%2Fexample.org%2F{name}.git/main",
        unresolved_ref="main",
        resolved_ref="a" * 40,
        resolved_spec=f"https%3A%2F%2Fexample.org%2F{name}.git/{'a' * 40}",
        repo_url=f"https://example.org/{name}.git",
        ref_url=f"https://example.org/{name}",
        slug_source=f"https://example.org/{name}.git",
    )
    return BuildJob(image=ImageSpec(f"binder-{name}", "a" * 40, name), ref=ref, push=False)


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def manager(builder: ScriptedBuilder, **kwargs: Any) -> BuildManager:
    options: dict[str, Any] = {"concurrency": 1, "build_timeout": 60.0, "idle_timeout": 60.0}
    options.update(kwargs)
    return BuildManager(builder, **options)


async def collect(build: Build, after: int = -1) -> list[tuple[int, ProgressEvent]]:
    return [item async for item in build.follow(after)]


def test_same_image_gives_one_build() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=2)
        first, created1 = mgr.submit(job("one"))
        second, created2 = mgr.submit(job("one"))
        other, created3 = mgr.submit(job("two"))
        assert (created1, created2, created3) == (True, False, True)
        assert second is first and other is not first
        assert mgr.joins == 1
        await until(lambda: len(builder.started) == 2)
        assert sorted(builder.started) == ["one", "two"]
        for name in ("one", "two"):
            builder.gate(name).put_nowait(None)
        await first.wait()
        await other.wait()
        assert first.state is other.state is BuildState.SUCCEEDED
        assert first.events[-1].phase is Phase.BUILT
        assert first.events[-1].fields["imageName"] == "binder-one:" + "a" * 40
        # Finished builds are not joined: the next submit builds again.
        again, created = mgr.submit(job("one"))
        assert created and again is not first
        await mgr.close()

    run(scenario)


def test_paused_manager_queues_without_changing_its_slot_count() -> None:
    """A maintenance window pauses the manager: builds asked for meanwhile
    wait with their queue position, the configured slot count stays what it
    is (the health check and metrics read it), and resuming starts them."""

    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=2)
        mgr.pause()
        assert mgr.paused
        a, _ = mgr.submit(job("a"))
        b, _ = mgr.submit(job("b"))
        await settle()
        assert builder.started == []
        assert (a.state, b.state) == (BuildState.QUEUED, BuildState.QUEUED)
        assert (a.queue_position, b.queue_position) == (1, 2)
        assert mgr.concurrency == 2 and mgr.running == 0
        mgr.resume()
        assert not mgr.paused
        await until(lambda: builder.started == ["a", "b"])
        assert a.queue_position is None and b.queue_position is None
        mgr.resume()  # resuming twice is harmless
        for name in ("a", "b"):
            builder.gate(name).put_nowait(None)
        await b.wait()

    run(scenario)


def test_queue_positions_are_announced_and_advance() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=1)
        a, _ = mgr.submit(job("a"))
        b, _ = mgr.submit(job("b"))
        c, _ = mgr.submit(job("c"))
        assert a.state is BuildState.RUNNING and a.queue_position is None
        assert (b.queue_position, c.queue_position) == (1, 2)
        assert mgr.queue_length == 2 and mgr.running == 1
        waiting = [e for e in c.events if e.phase is Phase.WAITING]
        assert waiting[-1].fields["position"] == 2
        builder.gate("a").put_nowait(None)
        await a.wait()
        await until(lambda: b.state is BuildState.RUNNING)
        assert b.queue_position is None and c.queue_position == 1
        assert [e.fields.get("position") for e in c.events if "position" in e.fields] == [2, 1]
        builder.gate("b").put_nowait(None)
        builder.gate("c").put_nowait(None)
        await c.wait()
        assert builder.started == ["a", "b", "c"]
        await mgr.close()

    run(scenario)


def test_cancel_queued_and_running_builds_frees_the_slot() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=1)
        running, _ = mgr.submit(job("running"))
        queued, _ = mgr.submit(job("queued"))
        later, _ = mgr.submit(job("later"))
        await until(lambda: builder.started == ["running"])

        cancelled = await mgr.cancel(queued.id, "Stop it.")
        assert cancelled is queued and queued.state is BuildState.CANCELLED
        assert isinstance(queued.error, BuildCancelled) and queued.error.message == "Stop it."
        assert queued.events[-1].phase is Phase.FAILED
        assert queued.events[-1].message == "Stop it.\n"
        assert later.queue_position == 1  # moved up

        await mgr.cancel(running.id)
        assert running.state is BuildState.CANCELLED
        assert builder.stopped == ["running"]  # the backend's generator was closed
        assert running.events[-1].message == "Build cancelled.\n"
        # The slot went to the next build in the queue.
        await until(lambda: builder.started == ["running", "later"])
        assert mgr.running == 1 and mgr.queue_length == 0
        # A cancelled image builds afresh on the next submit.
        again, created = mgr.submit(job("running"))
        assert created and again is not running
        # Cancelling a finished build changes nothing.
        assert (await mgr.cancel(queued.id)) is queued and queued.state is BuildState.CANCELLED
        assert await mgr.cancel("no-such-id") is None
        await mgr.close()

    run(scenario)


def test_cancel_in_the_same_loop_turn_as_submit_finishes_the_build() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=1)
        build, _ = mgr.submit(job("instant"))
        await mgr.cancel(build.id, "Stop it.")  # before the build task ever ran
        await asyncio.wait_for(build.wait(), 2)
        assert build.state is BuildState.CANCELLED and mgr.running == 0
        again, created = mgr.submit(job("instant"))
        assert created and again is not build
        await mgr.close()

    run(scenario)


def test_failure_reason_is_kept() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder)
        build, _ = mgr.submit(job("broken"))
        builder.gate("broken").put_nowait(event(Phase.BUILDING, "step 1\n"))
        builder.gate("broken").put_nowait(BuildFailed("repo2docker exited with code 1: boom"))
        await build.wait()
        assert build.state is BuildState.FAILED
        assert build.error is not None and "boom" in build.error.message
        assert build.events[-1].phase is Phase.FAILED and "boom" in build.events[-1].message
        await mgr.close()

    run(scenario)


def test_idle_and_total_timeouts() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=2, idle_timeout=0.2, build_timeout=60)
        idle, _ = mgr.submit(job("idle"))
        await idle.wait()
        assert idle.state is BuildState.FAILED and isinstance(idle.error, BuildTimeout)
        assert "no output for 0.2 seconds" in idle.error.message

        mgr2 = manager(builder, concurrency=1, idle_timeout=5, build_timeout=0.4)
        chatty, _ = mgr2.submit(job("chatty"))

        async def talk() -> None:
            while not chatty.state.finished:
                builder.gate("chatty").put_nowait(event(Phase.BUILDING, "tick\n"))
                await asyncio.sleep(0.05)

        talker = asyncio.create_task(talk())
        await chatty.wait()
        await talker
        assert isinstance(chatty.error, BuildTimeout)
        assert "time limit of 0.4 seconds" in chatty.error.message
        await mgr.close()
        await mgr2.close()

    run(scenario)


def test_late_join_and_resume_get_every_event_once() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder)
        build, _ = mgr.submit(job("log"))
        gate = builder.gate("log")
        for i in range(3):
            gate.put_nowait(event(Phase.BUILDING, f"line {i}\n"))
        await until(lambda: len(build.events) >= 4)

        late = asyncio.create_task(collect(build))  # joins after 4 events
        resumed = asyncio.create_task(collect(build, after=2))  # saw ids 0..2
        await until(lambda: build.followers == 2)
        for i in range(3, 6):
            gate.put_nowait(event(Phase.BUILDING, f"line {i}\n"))
        gate.put_nowait(None)
        full, tail = await late, await resumed
        ids = [i for i, _ in full]
        assert ids == list(range(len(build.events)))
        assert [i for i, _ in tail] == ids[3:]
        assert [e for _, e in tail] == [e for _, e in full][3:]
        assert full[-1][1].phase is Phase.BUILT
        # After the end: a replay from any point, and nothing after the last id.
        assert [i for i, _ in await collect(build, after=5)] == ids[6:]
        assert await collect(build, after=ids[-1]) == []
        await mgr.close()

    run(scenario)


def test_followers_are_counted_and_released() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder)
        build, _ = mgr.submit(job("watched"))
        assert build.followers == 0

        async def watch_one_event() -> None:
            async for _ in build.follow():
                break  # the client left

        readers = [asyncio.create_task(collect(build)) for _ in range(3)]
        await until(lambda: build.followers == 3)
        await watch_one_event()
        await until(lambda: build.followers == 3)  # the leaver is gone again
        readers[0].cancel()  # a client disconnecting cancels its reader
        await asyncio.gather(readers[0], return_exceptions=True)
        assert build.followers == 2
        builder.gate("watched").put_nowait(None)
        await asyncio.gather(*readers[1:])
        assert build.followers == 0
        await mgr.close()

    run(scenario)


def test_wait_does_not_count_as_watching() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder)
        build, _ = mgr.submit(job("quiet"))
        waiter = asyncio.create_task(build.wait())
        await settle()
        assert not waiter.done() and build.followers == 0
        builder.gate("quiet").put_nowait(None)
        await waiter
        await mgr.close()

    run(scenario)


def test_abandoned_build_is_cancelled_after_grace() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        clock = FakeClock()
        mgr = manager(builder, concurrency=1, abandoned_grace=0.3, clock=clock)
        build, _ = mgr.submit(job("lonely"))
        queued, _ = mgr.submit(job("next"))  # queued behind it, nobody watching
        reader = asyncio.create_task(collect(build))
        await until(lambda: build.followers == 1 and builder.started == ["lonely"])
        clock.advance(0.5)  # longer than the grace, but watched
        await until(lambda: queued.state.finished)  # the cancel runs as a task
        await settle()
        assert build.state is BuildState.RUNNING
        # The unwatched queued build was dropped from the queue, never started.
        assert queued.state is BuildState.CANCELLED and builder.started == ["lonely"]
        assert mgr.abandoned == 1 and mgr.queue_length == 0

        reader.cancel()  # the only client leaves
        await asyncio.gather(reader, return_exceptions=True)
        assert build.followers == 0
        clock.advance(0.25)  # not yet the grace since the client left
        await settle()
        assert not build.state.finished and mgr.abandoned == 1
        clock.advance(0.1)
        await until(lambda: build.state.finished, timeout=3)
        assert build.state is BuildState.CANCELLED
        assert "no client followed it for 0.3 seconds" in build.events[-1].message
        assert builder.stopped == ["lonely"] and mgr.abandoned == 2
        assert mgr.running == 0  # the slot is free
        await mgr.close()

    run(scenario)


def test_status_polls_keep_a_build_alive() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        clock = FakeClock()
        mgr = manager(builder, abandoned_grace=0.3, clock=clock)
        build, _ = mgr.submit(job("polled"))
        for _ in range(8):  # 0.8 s of polling, never a follower
            build.touch()
            clock.advance(0.1)
            await settle()
        assert build.state is BuildState.RUNNING and mgr.abandoned == 0
        assert clock.pending == 1  # the policy is armed all along
        builder.gate("polled").put_nowait(None)
        await build.wait()
        assert build.state is BuildState.SUCCEEDED
        await mgr.close()

    run(scenario)


def test_no_policy_by_default() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        clock = FakeClock()
        mgr = manager(builder, clock=clock)
        build, _ = mgr.submit(job("patient"))
        clock.advance(3600)
        await settle()
        assert build.state is BuildState.RUNNING and not mgr._abandon_timers
        assert clock.pending == 0
        builder.gate("patient").put_nowait(None)
        await build.wait()
        await mgr.close()

    run(scenario)


def test_record_existing_and_latest_for() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        finished: list[Build] = []
        mgr = manager(builder, on_finished=[finished.append])
        assert mgr.latest_for("present") is None
        record = mgr.record_existing(job("present"))
        assert record.state is BuildState.SUCCEEDED and record.found_existing
        assert record.events[-1].phase is Phase.BUILT and finished == [record]
        assert mgr.get(record.id) is record and mgr.latest_for("present") is record
        assert builder.started == []  # nothing was built
        # A build in flight wins over a record.
        running, _ = mgr.submit(job("present"))
        assert mgr.latest_for("present") is running
        assert mgr.record_existing(job("present")) is running
        builder.gate("present").put_nowait(None)
        await running.wait()
        assert mgr.latest_for("present") is running
        await mgr.close()

    run(scenario)


def test_close_cancels_everything_with_a_reason() -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder, concurrency=1)
        running, _ = mgr.submit(job("r"))
        queued, _ = mgr.submit(job("q"))
        await until(lambda: builder.started == ["r"])
        await mgr.close()
        assert running.state is queued.state is BuildState.CANCELLED
        assert "shutting down" in running.events[-1].message

    run(scenario)


@pytest.mark.parametrize("after", [-1, 0, 1])
def test_follow_after_index(after: int) -> None:
    async def scenario() -> None:
        builder = ScriptedBuilder()
        mgr = manager(builder)
        build, _ = mgr.submit(job("ix"))
        builder.gate("ix").put_nowait(event(Phase.BUILDING, "x\n"))
        builder.gate("ix").put_nowait(None)
        await build.wait()
        got = await collect(build, after)
        assert [i for i, _ in got] == list(range(after + 1, len(build.events)))
        await mgr.close()

    run(scenario)
