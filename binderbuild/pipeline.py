"""The whole request flow, as one async generator of progress events.

    validate -> resolve -> name -> registry check -> build (shared) -> launch -> ready

``ensure_build`` is the one entry point that starts or joins a build: the
event stream (``run``), ``POST /api/builds`` and the pages all go through it.

Handlers only adapt this to the wire. Nothing here imports Tornado, so a test
or a script can drive it with ``asyncio.run``. Errors are raised as
``BinderBuildError`` subclasses; the edge turns them into HTTP statuses or
``failed`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from binderbuild import naming
from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.cache import FOREVER, TTLCache
from binderbuild.errors import (
    BinderBuildError,
    BuildFailed,
    Forbidden,
    RefNotFound,
    UnknownProvider,
)
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.launcher import Launcher
from binderbuild.models import (
    BuildJob,
    BuildRequest,
    ImageSpec,
    LaunchRequest,
    LaunchResult,
    ResolvedRef,
)
from binderbuild.providers.base import ParsedSpec, RepoProvider
from binderbuild.registry import ImageStore

log = logging.getLogger("binderbuild.pipeline")


@dataclass(frozen=True)
class PipelineSettings:
    image_prefix: str
    resolve_cache_ttl: float = 60.0
    negative_resolve_cache_ttl: float = 10.0
    # Resolutions (git ls-remote, provider API calls) running at once; more
    # wait their turn. Identical ones are always shared (single-flight).
    max_concurrent_resolutions: int = 16


class RunOutcome(enum.StrEnum):
    """How one pipeline run ended."""

    SUCCESS = "success"  # ready was sent
    FAILURE = "failure"  # a BinderBuildError ended it (failed was sent)
    ABANDONED = "abandoned"  # the client left (or the service stopped) first


@dataclass(slots=True)
class StageTimings:
    """Seconds spent per stage, for metrics and the launch event log."""

    resolve: float = 0.0
    registry: float = 0.0
    build: float = 0.0
    launch: float = 0.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Record the stage's duration however it ends (failed stages count too)."""
        started = self.clock()
        try:
            yield
        finally:
            setattr(self, stage, self.clock() - started)

    @property
    def total(self) -> float:
        return self.resolve + self.registry + self.build + self.launch


@dataclass(frozen=True)
class RunReport:
    """What an observer learns when a pipeline run ends."""

    request: BuildRequest
    outcome: RunOutcome
    timings: StageTimings
    ref: ResolvedRef | None = None
    image: ImageSpec | None = None
    error: BaseException | None = None
    # The server came from a warm pool (True), was started for this run
    # (False); None: no server was handed out.
    warm: bool | None = None


# Called once per pipeline run, at its end.
RunObserver = Callable[[RunReport], None]


@dataclass(frozen=True)
class Target:
    """A request that passed the checks needing no I/O (``Pipeline.validate``)."""

    request: BuildRequest
    provider: RepoProvider
    parsed: ParsedSpec


@dataclass(frozen=True)
class Located:
    """A validated request with its ref resolved and its image named."""

    target: Target
    ref: ResolvedRef
    image: ImageSpec


@dataclass(slots=True, eq=False)
class JoinedRun:
    """A run that joined a build already running (``Pipeline.try_join``):
    what a stream keeps while the build's events are written to it directly
    (``Build.subscribe``), instead of a generator chain per stream."""

    request: BuildRequest
    ref: ResolvedRef
    build: Build
    build_started: float  # the pipeline's clock; resolve and registry cost nothing here


def lookup_provider(providers: Mapping[str, RepoProvider], provider_id: str) -> RepoProvider:
    """The provider of a prefix, or UnknownProvider naming the known ones."""
    try:
        return providers[provider_id]
    except KeyError:
        known = ", ".join(sorted(providers))
        raise UnknownProvider(
            f"Unknown provider {provider_id!r}. Known providers: {known}."
        ) from None


class KnownImages:
    """Images known to exist, for ``ttl`` seconds after the store said so or a
    build of them succeeded. Shared by the pipeline (lookups) and the build
    manager (``remember_built`` is one of its on_finished hooks), so a build
    that finishes while a request asks the store is seen by the re-check."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.cache: TTLCache[str, bool] = TTLCache(clock=clock)

    def __contains__(self, image_name: object) -> bool:
        return isinstance(image_name, str) and bool(self.cache.get(image_name))

    def remember(self, image_name: str) -> None:
        self.cache.set(image_name, True, self.ttl)

    def remember_built(self, build: Build) -> None:
        if build.state is BuildState.SUCCEEDED:
            self.remember(build.image_name)


class Pipeline:
    def __init__(
        self,
        *,
        providers: Mapping[str, RepoProvider],
        image_store: ImageStore,
        builds: BuildManager,
        known_images: KnownImages,
        launcher: Launcher | None,
        settings: PipelineSettings,
        observers: Sequence[RunObserver] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``known_images`` must be the one whose ``remember_built`` the build
        manager calls when a build finishes (the composition root wires both)."""
        self.providers = providers
        self.image_store = image_store
        self.builds = builds
        self.known_images = known_images
        self.launcher = launcher
        self.settings = settings
        self.resolve_cache: TTLCache[tuple[str, str], ResolvedRef | RefNotFound] = TTLCache(
            clock=clock
        )
        self.clock = clock
        self.observers = tuple(observers)
        self._resolving: dict[tuple[str, str], asyncio.Future[ResolvedRef]] = {}
        self._resolve_slots = asyncio.Semaphore(max(1, settings.max_concurrent_resolutions))

    # --- stages usable on their own (API, pages) ----------------------------

    def provider(self, provider_id: str) -> RepoProvider:
        return lookup_provider(self.providers, provider_id)

    def validate(self, request: BuildRequest) -> Target:
        """Checks that need no I/O, so the edge can answer 4xx before streaming."""
        provider = self.provider(request.provider_id)
        parsed = provider.parse(request.spec)
        if provider.is_banned(request.spec):
            raise Forbidden(f"Sorry, {request.provider_id}/{request.spec} is not allowed here.")
        return Target(request, provider, parsed)

    async def resolve(self, provider: RepoProvider, spec: str) -> ResolvedRef:
        """The immutable ref of ``spec``: cached, and single-flight, so any
        number of clients asking for one spec at once cost one resolution
        (one ``git ls-remote``), and at most ``max_concurrent_resolutions``
        run at all (the rest queue rather than fail)."""
        key = (provider.provider_id, spec)
        cached = self.resolve_cache.get(key)
        if isinstance(cached, RefNotFound):
            raise cached
        if cached is not None:
            return cached
        task = self._resolving.get(key)
        if task is None:
            task = asyncio.ensure_future(self._resolve_uncached(provider, spec, key))
            self._resolving[key] = task
            task.add_done_callback(lambda _t: self._resolving.pop(key, None))
            # A failure nobody awaits any more (all clients left) is still
            # "retrieved": no "exception was never retrieved" noise.
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        # shield: one client leaving must not cancel the resolution others wait for.
        return await asyncio.shield(task)

    async def _resolve_uncached(
        self, provider: RepoProvider, spec: str, key: tuple[str, str]
    ) -> ResolvedRef:
        async with self._resolve_slots:
            try:
                ref = await provider.resolve(spec)
            except RefNotFound as exc:
                self.resolve_cache.set(key, exc, self.settings.negative_resolve_cache_ttl)
                raise
        ttl = FOREVER if ref.immutable_ref else self.settings.resolve_cache_ttl
        self.resolve_cache.set(key, ref, ttl)
        return ref

    async def locate(self, target: Target) -> Located:
        """Resolve the ref to an immutable one and name the image."""
        ref = await self.resolve(target.provider, target.request.spec)
        return Located(target, ref, self.image_for(ref))

    def image_for(self, ref: ResolvedRef) -> ImageSpec:
        return naming.image_spec(ref, self.settings.image_prefix)

    async def image_exists(self, image: ImageSpec) -> bool:
        if image.name in self.known_images:
            return True
        exists = await self.image_store.image_exists(image)
        if exists:
            self.known_images.remember(image.name)
        return exists

    async def ensure_build(
        self, located: Located, *, force: bool = False
    ) -> tuple[Build | None, bool]:
        """Start or join the build of ``located.image``: the one place that
        decides whether a request builds.

        Returns ``(build, created)``: the in-flight build of the image when
        there is one (``created`` False), a new build when the image is
        missing or ``force`` (``created`` True), or ``(None, False)`` when the
        image exists and nothing runs for it. Concurrent calls for one image
        get one build: between the last await (the store lookup) and the
        submit nothing yields, and a build that finished during the lookup
        has already told ``known_images``.
        """
        image = located.image
        if not force:
            active = self.builds.active_for(image.build_name)
            if active is not None and not active.forced:
                # The image was missing when this build started: join it
                # without asking the store again (a popular badge during a
                # build would otherwise cost one engine/registry call per viewer).
                return active, False
            exists = await self.image_exists(image)
            if exists or image.name in self.known_images:
                return None, False
        build, created = self._submit(located)
        if created and force:
            build.forced = True
        return build, created

    def _submit(self, located: Located) -> tuple[Build, bool]:
        # The provider that resolved the spec (a doi/ spec resolves to another
        # provider's ref) contributes fetch credentials for private repositories.
        ref = located.ref
        extra_env = tuple(located.target.provider.build_env(ref).items())
        job = BuildJob(
            image=located.image, ref=ref, push=self.image_store.pushes, extra_env=extra_env
        )
        return self.builds.submit(job)

    # --- the flow ---------------------------------------------------------

    async def run(self, target: Target) -> AsyncGenerator[ProgressEvent, None]:
        """The whole flow for a validated request, as progress events."""
        request = target.request
        timings = StageTimings(clock=self.clock)
        located: Located | None = None
        outcome: RunOutcome = RunOutcome.SUCCESS
        error: BaseException | None = None
        launched: list[LaunchResult] = []
        try:
            with timings.measure("resolve"):
                located = await self.locate(target)
            image = located.image
            with timings.measure("registry"):
                build, _ = await self.ensure_build(located, force=request.force_rebuild)
            if build is not None:
                with timings.measure("build"):
                    # aclosing: a client that leaves stops following now
                    # (the build's follower count drops at once, which the
                    # abandoned-build policy reads), not at garbage collection.
                    # Followed here rather than in a generator of its own:
                    # every open /build stream holds this chain (issue 15).
                    async with contextlib.aclosing(build.follow()) as following:
                        async for _, ev in following:
                            if ev.phase in (Phase.BUILT, Phase.FAILED) and build.state.finished:
                                break
                            yield ev
                    if build.state is not BuildState.SUCCEEDED:
                        raise build.error or BuildFailed("Build failed.")

            async for ev in self._ready_or_launch(request, located.ref, image, timings, launched):
                yield ev
        except BinderBuildError as exc:
            outcome, error = RunOutcome.FAILURE, exc
            raise
        except BaseException as exc:  # GeneratorExit / CancelledError: client left
            outcome, error = RunOutcome.ABANDONED, exc
            raise
        finally:
            self._report(
                request,
                outcome,
                timings,
                located.ref if located else None,
                located.image if located else None,
                error,
                launched,
            )

    def _report(
        self,
        request: BuildRequest,
        outcome: RunOutcome,
        timings: StageTimings,
        ref: ResolvedRef | None,
        image: ImageSpec | None,
        error: BaseException | None,
        launched: Sequence[LaunchResult] = (),
    ) -> None:
        report = RunReport(
            request=request,
            outcome=outcome,
            timings=timings,
            ref=ref,
            image=image,
            error=error,
            warm=launched[0].warm if launched else None,
        )
        for observe in self.observers:
            try:
                observe(report)
            except Exception:
                log.exception("pipeline observer failed")

    # --- joining a running build without a generator per stream -------------

    def try_join(self, target: Target) -> JoinedRun | None:
        """The build ``target`` would join, when that is known without I/O:
        its ref is in the resolve cache and a (not forced) build of its image
        is running. None otherwise (``run`` then does the whole flow). The
        caller follows ``JoinedRun.build`` itself (``Build.subscribe``) and
        then walks ``after_join``, or calls ``abandon_join`` if it stops.
        Same stages as ``run``: resolve and registry check cost nothing here
        (cached, as ``ensure_build`` joins an active build without the store)."""
        request = target.request
        if request.force_rebuild:
            return None
        cached = self.resolve_cache.get((target.provider.provider_id, request.spec))
        if not isinstance(cached, ResolvedRef):
            return None
        build_name = self.image_for(cached).build_name
        build = self.builds.active_for(build_name)
        if build is None or build.forced:
            return None
        # Only what the run's end needs is kept (no Target, Located, image
        # or StageTimings per waiting stream).
        return JoinedRun(request, cached, build, self.clock())

    def _joined_timings(self, joined: JoinedRun) -> StageTimings:
        timings = StageTimings(clock=self.clock)
        timings.build = self.clock() - joined.build_started
        return timings

    def abandon_join(self, joined: JoinedRun, error: BaseException) -> None:
        """The client of a joined run left (or the service stopped) while it
        followed the build: report it as ``run`` would."""
        timings = self._joined_timings(joined)
        image = self.image_for(joined.ref)
        self._report(joined.request, RunOutcome.ABANDONED, timings, joined.ref, image, error)

    async def after_join(self, joined: JoinedRun) -> AsyncGenerator[ProgressEvent, None]:
        """The rest of a joined run once its build has finished: ``failed``
        (raised) or ``ready``/``built`` and the launch, as ``run`` goes on."""
        request, ref, build = joined.request, joined.ref, joined.build
        timings = self._joined_timings(joined)
        image = self.image_for(ref)  # as run() names it (the same as the build's)
        outcome: RunOutcome = RunOutcome.SUCCESS
        error: BaseException | None = None
        launched: list[LaunchResult] = []
        try:
            if build.state is not BuildState.SUCCEEDED:
                raise build.error or BuildFailed("Build failed.")
            async for ev in self._ready_or_launch(request, ref, image, timings, launched):
                yield ev
        except BinderBuildError as exc:
            outcome, error = RunOutcome.FAILURE, exc
            raise
        except BaseException as exc:  # GeneratorExit / CancelledError: client left
            outcome, error = RunOutcome.ABANDONED, exc
            raise
        finally:
            self._report(request, outcome, timings, ref, image, error, launched)

    async def _ready_or_launch(
        self,
        request: BuildRequest,
        ref: ResolvedRef,
        image: ImageSpec,
        timings: StageTimings,
        launched: list[LaunchResult],
    ) -> AsyncGenerator[ProgressEvent, None]:
        """The end of a run whose image exists: ``ready`` (build only), or
        ``built`` and the launch (``run`` and ``after_join`` share it)."""
        if request.build_only or self.launcher is None:
            yield event(Phase.READY, f"Image {image.name} is ready.\n", imageName=image.name)
            return
        yield event(Phase.BUILT, "Found built image, launching...\n", imageName=image.name)
        with timings.measure("launch"):
            async for ev in self._launch(request, ref, image, launched):
                yield ev

    def launch_request(
        self, request: BuildRequest, ref: ResolvedRef, image: ImageSpec
    ) -> LaunchRequest:
        return LaunchRequest(
            image=image.name,
            ref=ref,
            request_path=f"v2/{ref.provider_id}/{ref.spec}",
            persistent_request_path=f"v2/{ref.provider_id}/{ref.resolved_spec}",
            launch_host=request.launch_host,
            user=request.user,
            profile=request.profile,
        )

    async def prepare_launch(self, request: BuildRequest) -> LaunchRequest | None:
        """The LaunchRequest a launch of ``request`` would make, when its
        image exists; None when it would have to be built first. Builds
        nothing (warm pools ask this for the specs they keep servers for)."""
        located = await self.locate(self.validate(request))
        if not await self.image_exists(located.image):
            return None
        return self.launch_request(request, located.ref, located.image)

    async def _launch(
        self,
        request: BuildRequest,
        ref: ResolvedRef,
        image: ImageSpec,
        launched: list[LaunchResult],
    ) -> AsyncIterator[ProgressEvent]:
        assert self.launcher is not None
        launch = self.launch_request(request, ref, image)
        async for item in self.launcher.launch(launch):
            if isinstance(item, LaunchResult):
                launched.append(item)
                yield event(
                    Phase.READY,
                    f"Server ready at {item.url}\n",
                    url=item.url,
                    token=item.token,
                    image=image.name,
                    repo_url=ref.repo_url,
                    binder_ref_url=ref.ref_url,
                    binder_launch_host=request.launch_host,
                    binder_request=launch.request_path,
                    binder_persistent_request=launch.persistent_request_path,
                )
                return
            yield item
