"""The whole request flow, as one async generator of progress events.

    resolve -> policy -> name -> registry check -> build (shared) -> launch -> ready

Handlers only adapt this to the wire. Nothing here imports Tornado, so a test
or a script can drive it with ``asyncio.run``. Errors are raised as
``BinderBuildError`` subclasses; the edge turns them into HTTP statuses or
``failed`` events.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass

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
from binderbuild.providers.base import RepoProvider
from binderbuild.registry import ImageStore

log = logging.getLogger("binderbuild.pipeline")


@dataclass(frozen=True)
class PipelineSettings:
    image_prefix: str
    resolve_cache_ttl: float = 60.0
    negative_resolve_cache_ttl: float = 10.0
    image_exists_cache_ttl: float = 300.0


@dataclass
class StageTimings:
    """Seconds spent per stage, for metrics and the launch event log."""

    resolve: float = 0.0
    registry: float = 0.0
    build: float = 0.0
    launch: float = 0.0

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        """Record the stage's duration however it ends (failed stages count too)."""
        started = time.monotonic()
        try:
            yield
        finally:
            setattr(self, stage, time.monotonic() - started)


# Called once per pipeline run at its end: (request, ref or None, image or
# None, status, timings, error or None).
RunObserver = Callable[
    [BuildRequest, ResolvedRef | None, ImageSpec | None, str, StageTimings, BaseException | None],
    None,
]


class Pipeline:
    def __init__(
        self,
        *,
        providers: Mapping[str, RepoProvider],
        image_store: ImageStore,
        builds: BuildManager,
        launcher: Launcher | None,
        settings: PipelineSettings,
    ) -> None:
        self.providers = providers
        self.image_store = image_store
        self.builds = builds
        self.launcher = launcher
        self.settings = settings
        self.resolve_cache: TTLCache[tuple[str, str], ResolvedRef | RefNotFound] = TTLCache()
        self.exists_cache: TTLCache[str, bool] = TTLCache()
        self.observers: list[RunObserver] = []
        builds.on_finished.append(self._remember_built)

    # --- stages usable on their own (API, pages) ----------------------------

    def provider(self, provider_id: str) -> RepoProvider:
        try:
            return self.providers[provider_id]
        except KeyError:
            known = ", ".join(sorted(self.providers))
            raise UnknownProvider(
                f"Unknown provider {provider_id!r}. Known providers: {known}."
            ) from None

    def validate(self, request: BuildRequest) -> RepoProvider:
        """Checks that need no I/O, so the edge can answer 4xx before streaming."""
        provider = self.provider(request.provider_id)
        provider.parse(request.spec)
        if provider.is_banned(request.spec):
            raise Forbidden(f"Sorry, {request.provider_id}/{request.spec} is not allowed here.")
        return provider

    async def resolve(self, provider: RepoProvider, spec: str) -> ResolvedRef:
        key = (provider.provider_id, spec)
        cached = self.resolve_cache.get(key)
        if isinstance(cached, RefNotFound):
            raise cached
        if cached is not None:
            return cached
        try:
            ref = await provider.resolve(spec)
        except RefNotFound as exc:
            self.resolve_cache.set(key, exc, self.settings.negative_resolve_cache_ttl)
            raise
        ttl = FOREVER if ref.immutable_ref else self.settings.resolve_cache_ttl
        self.resolve_cache.set(key, ref, ttl)
        return ref

    def image_for(self, ref: ResolvedRef) -> ImageSpec:
        return naming.image_spec(ref, self.settings.image_prefix)

    async def image_exists(self, image: ImageSpec) -> bool:
        if self.exists_cache.get(image.name):
            return True
        exists = await self.image_store.image_exists(image)
        if exists:
            self.exists_cache.set(image.name, True, self.settings.image_exists_cache_ttl)
        return exists

    def submit_build(
        self, ref: ResolvedRef, image: ImageSpec, provider: RepoProvider | None = None
    ) -> tuple[Build, bool]:
        """Start (or join) the build of ``image``. ``provider`` — the one that
        resolved the spec (a doi/ spec resolves to another provider's ref) —
        contributes fetch credentials for private repositories."""
        extra_env = tuple(provider.build_env(ref).items()) if provider is not None else ()
        job = BuildJob(image=image, ref=ref, push=self.image_store.pushes, extra_env=extra_env)
        return self.builds.submit(job)

    # --- the flow ---------------------------------------------------------

    async def run(self, request: BuildRequest) -> AsyncIterator[ProgressEvent]:
        timings = StageTimings()
        ref: ResolvedRef | None = None
        image: ImageSpec | None = None
        status, error = "success", None
        try:
            provider = self.validate(request)
            with timings.measure("resolve"):
                ref = await self.resolve(provider, request.spec)
                image = self.image_for(ref)

            with timings.measure("registry"):
                exists = False if request.force_rebuild else await self.image_exists(image)

            # No await between this re-check and submit: a build that finished
            # while we asked the registry has set the cache (see _remember_built),
            # so we attach to nothing and build nothing twice.
            if request.force_rebuild or not (exists or self.exists_cache.get(image.name)):
                with timings.measure("build"):
                    async for ev in self._follow_build(provider, ref, image):
                        yield ev

            if request.build_only or self.launcher is None:
                yield event(Phase.READY, f"Image {image.name} is ready.\n", imageName=image.name)
                return
            yield event(Phase.BUILT, "Found built image, launching...\n", imageName=image.name)
            with timings.measure("launch"):
                async for ev in self._launch(request, ref, image):
                    yield ev
        except BinderBuildError as exc:
            status, error = "failure", exc
            raise
        except BaseException as exc:  # GeneratorExit / CancelledError: client left
            status, error = "abandoned", exc
            raise
        finally:
            for observe in self.observers:
                try:
                    observe(request, ref, image, status, timings, error)
                except Exception:
                    log.exception("pipeline observer failed")

    async def _follow_build(
        self, provider: RepoProvider, ref: ResolvedRef, image: ImageSpec
    ) -> AsyncIterator[ProgressEvent]:
        build, _ = self.submit_build(ref, image, provider)
        async for _, ev in build.follow():
            if ev.phase in (Phase.BUILT, Phase.FAILED) and build.state.finished:
                break
            yield ev
        if build.state is not BuildState.SUCCEEDED:
            raise build.error or BuildFailed("Build failed.")

    async def _launch(
        self, request: BuildRequest, ref: ResolvedRef, image: ImageSpec
    ) -> AsyncIterator[ProgressEvent]:
        assert self.launcher is not None
        launch = LaunchRequest(
            image=image.name,
            ref=ref,
            request_path=f"v2/{ref.provider_id}/{ref.spec}",
            persistent_request_path=f"v2/{ref.provider_id}/{ref.resolved_spec}",
            launch_host=request.launch_host,
            user=request.user,
        )
        async for item in self.launcher.launch(launch):
            if isinstance(item, LaunchResult):
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

    def _remember_built(self, build: Build) -> None:
        if build.state is BuildState.SUCCEEDED:
            self.exists_cache.set(build.image_name, True, self.settings.image_exists_cache_ttl)
