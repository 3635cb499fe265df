"""Pipeline with in-memory collaborators, driven by ``asyncio.run``: one build
per image however many requests ask, the re-check race, forced rebuilds,
failure mapping, clients leaving mid-build, the build-only and launch paths,
and run observers.

The fakes (tests/unit/fakes.py) record what they were asked, so each test
checks what reached the store, the builder and the launcher as well as the
events a client saw. Real collaborators are tested through the same pipeline
in tests/integration and tests/api.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest

from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.errors import (
    BuildCancelled,
    BuildFailed,
    Forbidden,
    LaunchFailed,
    RefNotFound,
    UnknownProvider,
)
from binderbuild.events import Phase, ProgressEvent
from binderbuild.models import BuildRequest, LaunchRequest, LaunchResult
from binderbuild.pipeline import (
    KnownImages,
    Pipeline,
    PipelineSettings,
    RunObserver,
    RunOutcome,
    RunReport,
    Target,
)
from tests.unit.fakes import (
    FakeBuilder,
    FakeClock,
    FakeLauncher,
    FakeProvider,
    MemoryImageStore,
    Script,
    settle,
    until,
)

SHA = "c0ffee" + "0" * 34
OTHER_SHA = "beef" + "1" * 36
SPEC = "octo/demo/main"
REFS = {SPEC: SHA, "octo/other/main": OTHER_SHA}
IMAGE_TTL = 60.0


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


@dataclass
class World:
    """A pipeline wired the way binderbuild.services wires it, with fakes."""

    pipeline: Pipeline
    builds: BuildManager
    store: MemoryImageStore
    builder: FakeBuilder
    provider: FakeProvider
    known: KnownImages
    clock: FakeClock
    launcher: FakeLauncher | None
    reports: list[RunReport] = field(default_factory=list)

    def request(self, spec: str = SPEC, **options: object) -> BuildRequest:
        return BuildRequest(provider_id="fake", spec=spec, **options)  # type: ignore[arg-type]

    def target(self, spec: str = SPEC, **options: object) -> Target:
        return self.pipeline.validate(self.request(spec, **options))

    async def events(self, spec: str = SPEC, **options: object) -> list[ProgressEvent]:
        """Every event of one run (raises what the run raises)."""
        return [ev async for ev in self.pipeline.run(self.target(spec, **options))]


def world(
    *,
    images: set[str] | None = None,
    launcher: FakeLauncher | None = None,
    observers: Sequence[RunObserver] = (),
    concurrency: int = 4,
    pushes: bool = True,
) -> World:
    clock = FakeClock()
    store = MemoryImageStore(images, pushes=pushes)
    builder = FakeBuilder(store)
    provider = FakeProvider(REFS)
    known = KnownImages(ttl=IMAGE_TTL, clock=clock.now)
    builds = BuildManager(
        builder,
        concurrency=concurrency,
        build_timeout=60.0,
        idle_timeout=60.0,
        on_finished=[known.remember_built],
        clock=clock,
    )
    reports: list[RunReport] = []
    pipeline = Pipeline(
        providers={"fake": provider},
        image_store=store,
        builds=builds,
        known_images=known,
        launcher=launcher,
        settings=PipelineSettings(image_prefix="registry.example.org/binder-"),
        observers=[reports.append, *observers],
        clock=clock.now,
    )
    return World(pipeline, builds, store, builder, provider, known, clock, launcher, reports)


def phases(events: Sequence[ProgressEvent]) -> list[Phase]:
    return [ev.phase for ev in events]


def messages(events: Sequence[ProgressEvent]) -> list[str]:
    return [ev.message for ev in events]


def only_build(w: World) -> Build:
    builds = w.builds.builds()
    assert len(builds) == 1, builds
    return builds[0]


# --- dedup ----------------------------------------------------------------------------


def test_concurrent_runs_of_one_image_share_one_build() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        runs = [asyncio.create_task(w.events(build_only=True)) for _ in range(5)]
        # Every run is attached before the build can finish.
        await until(lambda: len(w.builds.builds()) == 1 and only_build(w).followers == 5)
        build = only_build(w)
        await until(lambda: w.builder.started == [build.job.image.build_name])
        gate.set()
        results = await asyncio.gather(*runs)

        assert len(w.builder.jobs) == 1, "one build for five requests"
        assert w.builds.joins == 4
        assert build.state is BuildState.SUCCEEDED
        # Every store lookup said "missing" (nobody pushed yet), so all five
        # reached the build manager and four joined.
        assert w.store.answers == [False] * 5
        for events in results:
            assert "Step 1/2: FROM scratch\n" in messages(events), "each client saw the log"
            assert phases(events)[-1] is Phase.READY
            assert events[-1].fields["imageName"] == build.image_name
            assert Phase.FAILED not in phases(events)
        assert all(r.outcome is RunOutcome.SUCCESS for r in w.reports)
        assert len(w.reports) == 5
        # Afterwards the image is known: a sixth run neither builds nor asks the store.
        again = await w.events(build_only=True)
        assert phases(again) == [Phase.READY]
        assert len(w.builder.jobs) == 1 and len(w.store.lookups) == 5
        await w.builds.close()

    run(scenario)


def test_different_images_build_separately() -> None:
    async def scenario() -> None:
        w = world()
        one, two = await asyncio.gather(
            w.events(build_only=True), w.events("octo/other/main", build_only=True)
        )
        assert len(w.builder.jobs) == 2 and w.builds.joins == 0
        assert one[-1].fields["imageName"] != two[-1].fields["imageName"]
        assert two[-1].fields["imageName"].endswith(f":{OTHER_SHA}")
        await w.builds.close()

    run(scenario)


# --- ensure_build and the re-check race ---------------------------------------------


def test_ensure_build_starts_joins_or_finds_nothing_to_do() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        located = await w.pipeline.locate(w.target())
        assert located.ref.resolved_ref == SHA
        assert located.image.name.startswith("registry.example.org/binder-")

        build, created = await w.pipeline.ensure_build(located)
        assert build is not None and created
        assert build.job.push is True and build.job.ref == located.ref
        asked = len(w.store.lookups)
        joined, created_again = await w.pipeline.ensure_build(located)
        assert joined is build and not created_again
        assert len(w.store.lookups) == asked, "joining a running build asks no store"
        gate.set()
        await build.wait()
        assert build.state is BuildState.SUCCEEDED

        lookups = len(w.store.lookups)
        assert await w.pipeline.ensure_build(located) == (None, False)
        assert len(w.store.lookups) == lookups, "answered from the known images"
        assert len(w.builder.jobs) == 1
        await w.builds.close()

    run(scenario)


def test_ensure_build_returns_nothing_when_the_store_has_the_image() -> None:
    async def scenario() -> None:
        w = world()
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)
        assert await w.pipeline.ensure_build(located) == (None, False)
        assert w.store.answers == [True]
        assert located.image.name in w.known
        assert w.builder.jobs == [] and w.builds.builds() == []
        # The answer is remembered for the known-images TTL, then asked again.
        assert await w.pipeline.ensure_build(located) == (None, False)
        assert len(w.store.lookups) == 1
        w.clock.advance(IMAGE_TTL + 1)
        assert located.image.name not in w.known
        assert await w.pipeline.ensure_build(located) == (None, False)
        assert len(w.store.lookups) == 2
        await w.builds.close()

    run(scenario)


def test_build_finishing_during_the_store_lookup_is_not_built_again() -> None:
    async def scenario() -> None:
        # A store that only learns of the image later (a local engine the
        # build did not push to): every lookup says "missing".
        w = world()
        w.builder.store = None
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        located = await w.pipeline.locate(w.target())
        # The second request's lookup starts before the build exists (a
        # request arriving while one runs joins it without a lookup).
        w.store.hold()
        second = asyncio.create_task(w.pipeline.ensure_build(located))
        await until(lambda: w.store.waiting == 1)  # suspended in image_exists
        first, created = await w.pipeline.ensure_build(located, force=True)
        assert first is not None and created
        await until(lambda: w.builder.started == [located.image.build_name])
        gate.set()  # the build finishes meanwhile...
        await first.wait()
        assert first.state is BuildState.SUCCEEDED
        assert located.image.name in w.known  # ...and told the known images
        w.store.release()  # ...and only then does the store answer "missing"

        assert await second == (None, False)
        assert w.store.answers == [False]
        assert len(w.builder.jobs) == 1, "no second build of a finished image"
        assert w.builds.joins == 0
        await w.builds.close()

    run(scenario)


def test_build_failing_during_the_store_lookup_is_built_again() -> None:
    async def scenario() -> None:
        # The counterpart of the race above: only a *successful* build is
        # remembered, so a lookup that overlapped a failed one builds afresh.
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate, error=BuildFailed("boom"))
        located = await w.pipeline.locate(w.target())
        w.store.hold()
        second = asyncio.create_task(w.pipeline.ensure_build(located))
        await until(lambda: w.store.waiting == 1)
        first, _ = await w.pipeline.ensure_build(located, force=True)
        assert first is not None
        await until(lambda: len(w.builder.jobs) == 1)
        gate.set()
        await first.wait()
        assert first.state is BuildState.FAILED
        assert located.image.name not in w.known
        w.store.release()

        rebuilt, created = await second
        assert created and rebuilt is not None and rebuilt is not first
        await rebuilt.wait()
        assert len(w.builder.jobs) == 2
        await w.builds.close()

    run(scenario)


def test_build_job_carries_the_providers_fetch_env_and_the_stores_push_flag() -> None:
    async def scenario() -> None:
        w = world(pushes=False)
        w.provider.env = {"GIT_CREDENTIAL_ENV": "secret-token"}
        await w.events(build_only=True)
        (job,) = w.builder.jobs
        assert job.extra_env == (("GIT_CREDENTIAL_ENV", "secret-token"),)
        assert job.push is False
        await w.builds.close()

    run(scenario)


# --- forced rebuilds ------------------------------------------------------------------


def test_force_rebuild_builds_an_existing_image_and_marks_it() -> None:
    async def scenario() -> None:
        w = world()
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)

        plain = await w.events(build_only=True)
        assert phases(plain) == [Phase.READY] and w.builder.jobs == []
        lookups = len(w.store.lookups)

        forced = await w.events(build_only=True, force_rebuild=True)
        assert len(w.builder.jobs) == 1
        build = only_build(w)
        assert build.forced and build.state is BuildState.SUCCEEDED
        assert len(w.store.lookups) == lookups, "a forced rebuild skips the store"
        assert "Step 1/2: FROM scratch\n" in messages(forced)
        assert forced[-1].phase is Phase.READY
        assert forced[-1].fields["imageName"] == located.image.name
        await w.builds.close()

    run(scenario)


def test_forced_request_joins_a_running_build_without_marking_it() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        located = await w.pipeline.locate(w.target())
        build, created = await w.pipeline.ensure_build(located)
        assert build is not None and created and not build.forced
        joined, created = await w.pipeline.ensure_build(located, force=True)
        assert joined is build and not created
        assert not build.forced, "forced is the flag of the build the force started"
        gate.set()
        await build.wait()
        assert len(w.builder.jobs) == 1
        await w.builds.close()

    run(scenario)


# --- failures -------------------------------------------------------------------------


def test_build_failure_is_raised_and_reported() -> None:
    async def scenario() -> None:
        w = world()
        failure = BuildFailed("repo2docker exited with code 1: boom")
        w.builder.default = Script(error=failure)
        seen: list[ProgressEvent] = []
        with pytest.raises(BuildFailed) as info:
            async for ev in w.pipeline.run(w.target(build_only=True)):
                seen.append(ev)
        assert info.value is failure
        build = only_build(w)
        assert build.state is BuildState.FAILED and build.error is failure
        # The client saw the log; the failure itself reaches it as the exception
        # (the edge turns it into one failed event), never as a READY.
        assert "Step 1/2: FROM scratch\n" in messages(seen)
        assert Phase.READY not in phases(seen) and Phase.FAILED not in phases(seen)

        (report,) = w.reports
        assert report.outcome is RunOutcome.FAILURE
        assert report.error is failure
        assert report.ref is not None and report.ref.resolved_ref == SHA
        assert report.image is not None and report.image.name == build.image_name
        assert build.image_name not in w.known
        await w.builds.close()

    run(scenario)


def test_cancelled_build_ends_its_runs_with_the_reason() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        runs = [asyncio.create_task(w.events(build_only=True)) for _ in range(2)]
        await until(lambda: len(w.builds.builds()) == 1 and only_build(w).followers == 2)
        # (Cancelled once the backend runs: see the xfail in test_builds.py for
        # a cancel in the same loop turn as the submit.)
        await until(lambda: len(w.builder.jobs) == 1)
        await w.builds.cancel(only_build(w).id, "Cancelled by an operator.")
        results = await asyncio.gather(*runs, return_exceptions=True)
        for result in results:
            assert isinstance(result, BuildCancelled), result
            assert result.message == "Cancelled by an operator."
            assert result.status == 409
        assert [r.outcome for r in w.reports] == [RunOutcome.FAILURE] * 2
        assert w.builder.stopped == [only_build(w).job.image.build_name]
        await w.builds.close()

    run(scenario)


def test_unknown_ref_fails_and_is_cached_negatively() -> None:
    async def scenario() -> None:
        w = world()
        for _ in range(2):
            with pytest.raises(RefNotFound) as info:
                await w.events("octo/demo/no-such-branch")
            assert "no-such-branch" in info.value.message
        assert w.provider.resolved == ["octo/demo/no-such-branch"], "second answer from cache"
        assert w.builder.jobs == [] and w.store.lookups == []
        assert [r.outcome for r in w.reports] == [RunOutcome.FAILURE] * 2
        assert all(isinstance(r.error, RefNotFound) for r in w.reports)
        assert w.reports[0].ref is None and w.reports[0].image is None

        # Negative answers expire quickly (the branch may be pushed meanwhile).
        w.clock.advance(w.pipeline.settings.negative_resolve_cache_ttl + 0.1)
        w.provider.refs["octo/demo/no-such-branch"] = SHA
        events = await w.events("octo/demo/no-such-branch", build_only=True)
        assert events[-1].phase is Phase.READY
        assert len(w.provider.resolved) == 2
        await w.builds.close()

    run(scenario)


def test_resolved_refs_are_cached_until_their_ttl() -> None:
    async def scenario() -> None:
        w = world()
        await w.events(build_only=True)
        await w.events(build_only=True)
        assert w.provider.resolved == [SPEC]
        w.clock.advance(w.pipeline.settings.resolve_cache_ttl + 0.1)
        await w.events(build_only=True)
        assert w.provider.resolved == [SPEC, SPEC], "a branch is resolved again after the TTL"
        # An immutable ref never expires.
        immutable = f"octo/demo/{SHA}"
        await w.events(immutable, build_only=True)
        w.clock.advance(10 * 365 * 86400)
        await w.events(immutable, build_only=True)
        assert w.provider.resolved.count(immutable) == 1
        await w.builds.close()

    run(scenario)


def test_validate_refuses_unknown_providers_and_banned_specs() -> None:
    async def scenario() -> None:
        w = world()
        with pytest.raises(UnknownProvider) as info:
            w.pipeline.validate(BuildRequest(provider_id="nope", spec=SPEC))
        assert "fake" in info.value.message  # names the known providers
        w.provider.banned_specs = ["^octo/banned"]
        with pytest.raises(Forbidden):
            w.pipeline.validate(w.request("octo/banned/main"))
        target = w.pipeline.validate(w.request())
        assert target.provider is w.provider and target.parsed.ref == "main"
        assert w.provider.resolved == [], "validate does no I/O"
        await w.builds.close()

    run(scenario)


# --- clients leaving ----------------------------------------------------------------


def test_closing_a_run_mid_build_leaves_the_shared_build_running() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        staying = asyncio.create_task(w.events(build_only=True))
        leaving = cast(
            AsyncGenerator[ProgressEvent, None], w.pipeline.run(w.target(build_only=True))
        )
        seen = [await anext(leaving)]
        while "Step 1/2" not in seen[-1].message:
            seen.append(await anext(leaving))
        build = only_build(w)
        await until(lambda: build.followers == 2)

        await leaving.aclose()  # the client disconnected
        (report,) = w.reports
        assert report.outcome is RunOutcome.ABANDONED
        assert isinstance(report.error, GeneratorExit)
        assert report.image is not None and report.image.name == build.image_name
        await until(lambda: build.followers == 1)
        await settle()
        assert not build.state.finished, "a leaving client never stops a build"
        assert w.builder.stopped == []

        gate.set()
        events = await staying
        assert events[-1].phase is Phase.READY
        assert build.state is BuildState.SUCCEEDED
        assert [r.outcome for r in w.reports] == [RunOutcome.ABANDONED, RunOutcome.SUCCESS]
        await w.builds.close()

    run(scenario)


def test_cancelled_run_task_is_reported_abandoned_and_the_build_goes_on() -> None:
    async def scenario() -> None:
        w = world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        task = asyncio.create_task(w.events(build_only=True))
        await until(lambda: len(w.builds.builds()) == 1 and only_build(w).followers == 1)
        build = only_build(w)
        task.cancel()  # the connection's handler task was cancelled
        with pytest.raises(asyncio.CancelledError):
            await task
        (report,) = w.reports
        assert report.outcome is RunOutcome.ABANDONED
        assert isinstance(report.error, asyncio.CancelledError)
        await until(lambda: build.followers == 0)
        assert not build.state.finished
        gate.set()
        await build.wait()
        assert build.state is BuildState.SUCCEEDED and w.builder.stopped == []
        # Nobody waited, but the image is known now: the next client is served at once.
        assert phases(await w.events(build_only=True)) == [Phase.READY]
        await w.builds.close()

    run(scenario)


# --- build only / launch ------------------------------------------------------------


def test_build_only_stops_at_ready_even_with_a_launcher() -> None:
    async def scenario() -> None:
        launcher = FakeLauncher()
        w = world(launcher=launcher)
        events = await w.events(build_only=True)
        build = only_build(w)
        assert phases(events) == [Phase.WAITING, Phase.FETCHING, Phase.BUILDING, Phase.READY]
        assert events[-1].fields["imageName"] == build.image_name
        assert "url" not in events[-1].fields
        assert launcher.requests == []
        await w.builds.close()

    run(scenario)


def test_without_a_launcher_every_run_stops_at_ready() -> None:
    async def scenario() -> None:
        w = world()
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)
        events = await w.events()  # not build_only
        assert phases(events) == [Phase.READY]
        assert events[-1].fields == {"imageName": located.image.name}
        assert events[-1].message == f"Image {located.image.name} is ready.\n"
        await w.builds.close()

    run(scenario)


def test_launch_yields_launching_events_then_ready_with_url_and_token() -> None:
    async def scenario() -> None:
        launcher = FakeLauncher(steps=2)
        w = world(launcher=launcher)
        events = await w.events(user="ada", launch_host="https://binder.example.org/")
        build = only_build(w)
        assert phases(events) == [
            Phase.WAITING,
            Phase.FETCHING,
            Phase.BUILDING,
            Phase.BUILT,
            Phase.LAUNCHING,
            Phase.LAUNCHING,
            Phase.READY,
        ]
        assert events[3].fields["imageName"] == build.image_name
        ready = events[-1].fields
        assert ready["url"] == "https://hub.example.org/user/ada/"
        assert ready["token"] == "token-ada"
        assert ready["image"] == build.image_name
        assert ready["repo_url"] == "https://git.example.org/octo/demo.git"
        assert ready["binder_ref_url"] == f"https://git.example.org/octo/demo/tree/{SHA}"
        assert ready["binder_launch_host"] == "https://binder.example.org/"
        assert ready["binder_request"] == f"v2/fake/{SPEC}"
        assert ready["binder_persistent_request"] == f"v2/fake/octo/demo/{SHA}"
        assert events[-1].message == "Server ready at https://hub.example.org/user/ada/\n"

        (request,) = launcher.requests
        assert request.image == build.image_name
        assert request.user == "ada" and request.launch_host == "https://binder.example.org/"
        assert request.ref.resolved_ref == SHA
        assert w.reports[0].outcome is RunOutcome.SUCCESS
        await w.builds.close()

    run(scenario)


def test_launch_of_an_existing_image_builds_nothing() -> None:
    async def scenario() -> None:
        launcher = FakeLauncher(steps=1)
        w = world(launcher=launcher)
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)
        events = await w.events()
        assert phases(events) == [Phase.BUILT, Phase.LAUNCHING, Phase.READY]
        assert events[0].message == "Found built image, launching...\n"
        assert w.builder.jobs == [] and len(launcher.requests) == 1
        await w.builds.close()

    run(scenario)


def test_launch_failure_is_raised_and_reported() -> None:
    async def scenario() -> None:
        failure = LaunchFailed("Spawn failed: the hub said no.")
        launcher = FakeLauncher(steps=1, error=failure)
        w = world(launcher=launcher)
        seen: list[ProgressEvent] = []
        with pytest.raises(LaunchFailed) as info:
            async for ev in w.pipeline.run(w.target()):
                seen.append(ev)
        assert info.value is failure
        assert phases(seen)[-2:] == [Phase.BUILT, Phase.LAUNCHING]
        (report,) = w.reports
        assert report.outcome is RunOutcome.FAILURE and report.error is failure
        # The image was built all the same, and is known for the next try.
        assert only_build(w).state is BuildState.SUCCEEDED
        assert only_build(w).image_name in w.known
        await w.builds.close()

    run(scenario)


# --- observers ------------------------------------------------------------------------


def test_observers_get_one_report_with_stage_timings() -> None:
    async def scenario() -> None:
        launcher = FakeLauncher(steps=2, delay=0.02)
        w = world(launcher=launcher)
        # The scripted builder and launcher sleep for real, so the stage
        # timings are read off the real clock in this test.
        w.pipeline.clock = time.monotonic
        w.builder.default = Script(delay=0.02)
        request = w.request(user="ada")
        events = [ev async for ev in w.pipeline.run(w.pipeline.validate(request))]
        assert events[-1].phase is Phase.READY
        (report,) = w.reports
        assert report.request is request
        assert report.outcome is RunOutcome.SUCCESS and report.error is None
        assert report.ref is not None and report.ref.resolved_ref == SHA
        assert report.image is not None and report.image.name == only_build(w).image_name
        t = report.timings
        assert t.build >= 0.04, t  # two script events 0.02 s apart
        assert t.launch >= 0.04, t  # two launching steps 0.02 s apart
        assert t.resolve >= 0 and t.registry >= 0
        assert t.total == pytest.approx(t.resolve + t.registry + t.build + t.launch)
        assert t.total >= t.build + t.launch
        await w.builds.close()

    run(scenario)


def test_timings_of_a_run_without_a_build_have_no_build_time() -> None:
    async def scenario() -> None:
        w = world()
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)
        await w.events()
        (report,) = w.reports
        assert report.timings.build == 0.0 and report.timings.launch == 0.0
        await w.builds.close()

    run(scenario)


def test_an_observer_that_raises_does_not_break_the_run(caplog: pytest.LogCaptureFixture) -> None:
    later: list[RunReport] = []

    def broken(report: RunReport) -> None:
        raise RuntimeError("observer bug")

    async def scenario() -> None:
        w = world(observers=[broken, later.append])
        events = await w.events(build_only=True)
        assert events[-1].phase is Phase.READY
        # A failing run is not changed by a failing observer either: the
        # client still gets the pipeline's own error.
        with pytest.raises(RefNotFound):
            await w.events("octo/demo/missing")
        assert [r.outcome for r in later] == [RunOutcome.SUCCESS, RunOutcome.FAILURE]
        assert len(w.reports) == 2
        await w.builds.close()

    with caplog.at_level(logging.ERROR, logger="binderbuild.pipeline"):
        run(scenario)
    failures = [r for r in caplog.records if r.getMessage() == "pipeline observer failed"]
    assert len(failures) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in failures)


# --- known images -------------------------------------------------------------------


def test_known_images_expire_and_remember_only_successful_builds() -> None:
    clock = FakeClock()
    known = KnownImages(ttl=10.0, clock=clock.now)
    known.remember("img:1")
    assert "img:1" in known and "img:2" not in known and 42 not in known
    clock.advance(9.9)
    assert "img:1" in known
    clock.advance(0.2)
    assert "img:1" not in known

    def finished(state: BuildState, name: str) -> Build:
        from tests.unit.test_builds import job

        build = Build(job=job(name))
        build.state = state
        return build

    for state in (BuildState.FAILED, BuildState.CANCELLED, BuildState.RUNNING):
        known.remember_built(finished(state, "nope"))
    assert "binder-nope:" + "a" * 40 not in known
    known.remember_built(finished(BuildState.SUCCEEDED, "yes"))
    assert "binder-yes:" + "a" * 40 in known


# --- warm pools (issue 15) ----------------------------------------------------------


class _WarmLauncher(FakeLauncher):
    async def launch(  # type: ignore[override]
        self, request: LaunchRequest
    ) -> AsyncIterator[ProgressEvent | LaunchResult]:
        self.requests.append(request)
        yield LaunchResult(url="https://hub.example.org/user/w/", token="t", user="w", warm=True)


def test_reports_say_whether_the_server_was_warm_or_cold() -> None:
    async def scenario() -> None:
        for launcher, expected in ((FakeLauncher(steps=1), False), (_WarmLauncher(), True)):
            w = world(launcher=launcher)
            await w.events()
            (report,) = w.reports
            assert report.warm is expected
            await w.builds.close()
        w = world(launcher=FakeLauncher(steps=1))
        await w.events(build_only=True)
        assert w.reports[0].warm is None
        await w.builds.close()

    run(scenario)


def test_prepare_launch_resolves_and_never_builds() -> None:
    async def scenario() -> None:
        w = world(launcher=FakeLauncher(steps=1))
        assert await w.pipeline.prepare_launch(w.request()) is None  # not built: no build either
        assert w.builder.jobs == []
        located = await w.pipeline.locate(w.target())
        w.store.images.add(located.image.name)
        prepared = await w.pipeline.prepare_launch(w.request())
        assert prepared is not None and prepared.image == located.image.name
        assert prepared.persistent_request_path == f"v2/fake/{located.ref.resolved_spec}"
        await w.builds.close()

    run(scenario)
