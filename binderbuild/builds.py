"""One build per image, a queue for build slots, and fan-out to every client.

``BuildManager.submit`` returns the in-flight ``Build`` for an image when
there is one, so any number of clients asking for the same image attach to a
single build. Each ``Build`` keeps its events in order; a client that attaches
late (or reconnects with the index of the last event it saw) first gets the
events it has not seen, then the live ones: there is one reader of the
backend per build and every viewer just walks the list.

A client going away never stops a build by itself; ``cancel`` does, and so
does the abandoned-build policy: with ``abandoned_grace`` > 0, a build that
no client has followed (``Build.follow``) or looked at (``Build.touch``) for
that many seconds is cancelled, so nobody's slot is spent on an image nobody
waits for. ``Build.followers`` counts the clients following a build now.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from binderbuild.builders.base import Builder
from binderbuild.errors import (
    BinderBuildError,
    BuildCancelled,
    BuildFailed,
    BuildTimeout,
)
from binderbuild.events import Phase, ProgressEvent, encode_sse, event
from binderbuild.models import BuildJob

log = logging.getLogger("binderbuild.builds")

BuildHook = Callable[["Build"], None]


class Subscriber(Protocol):
    """A client a build writes its events to (``Build.subscribe``)."""

    def deliver(self, data: bytes) -> None:
        """One live event, as its Server-Sent Events frame."""

    def build_ended(self) -> None:
        """The build finished (its final event is not delivered)."""


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time for the abandoned-build policy: ``now`` in monotonic seconds and
    a timer. The default is the event loop's; unit tests drive a fake one."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopClock:
    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class BuildState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (BuildState.SUCCEEDED, BuildState.FAILED, BuildState.CANCELLED)


@dataclass(eq=False)
class Build:
    """One build of one image, shared by all its clients."""

    job: BuildJob
    id: str = field(default_factory=lambda: secrets.token_hex(8))
    state: BuildState = BuildState.QUEUED
    events: list[ProgressEvent] = field(default_factory=list)
    error: BinderBuildError | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    queue_position: int | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _dropped_lines: int = 0
    _log_bytes: int = 0  # bytes of log lines kept (building events)
    forced: bool = False  # a forced rebuild (the registry check was skipped)
    found_existing: bool = False  # records an image that existed; nothing was built
    cancel_reason: str | None = None  # why it was cancelled, shown to its clients
    followers: int = 0  # clients iterating follow() right now
    # Last sign of a client's interest (monotonic clock): a follower coming or
    # going, or a status request. The abandoned-build policy measures from it.
    last_seen: float = field(default_factory=time.monotonic, repr=False)
    _on_unwatched: Callable[[Build], None] | None = field(default=None, repr=False)
    _now: Callable[[], float] = field(default=time.monotonic, repr=False)
    # Clients written to directly (``subscribe``): each live event is encoded
    # once and its bytes handed to all of them; no generator per client.
    _subscribers: dict[Subscriber, None] = field(default_factory=dict, repr=False)

    @property
    def image_name(self) -> str:
        return self.job.image.name

    def append(self, ev: ProgressEvent) -> None:
        self.events.append(ev)
        # Wake every follower, then arm a fresh event for the next wait.
        self._changed.set()
        self._changed = asyncio.Event()
        if self._subscribers:
            self._fan_out(ev)

    def _fan_out(self, ev: ProgressEvent) -> None:
        """Hand ``ev`` to every subscriber: its SSE bytes (encoded once for
        all), or, for the build's final event, the end of the build."""
        final = self.state.finished
        data = b"" if final else encode_sse(ev)
        for subscriber in list(self._subscribers):
            try:
                if final:
                    subscriber.build_ended()
                else:
                    subscriber.deliver(data)
            except Exception:
                log.exception("a subscriber of build %s failed", self.id)
        if final:
            self._subscribers.clear()

    def subscribe(self, subscriber: Subscriber) -> None:
        """Write this build's next events to ``subscriber`` as they come, and
        tell it when the build ends (its final event is not delivered: the
        subscriber reads ``state``/``error``). Follower counting is separate
        (``watch``/``unwatch``)."""
        if self.state.finished:
            subscriber.build_ended()
        else:
            self._subscribers[subscriber] = None

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.pop(subscriber, None)

    def watch(self) -> None:
        """A client starts following the build (counted in ``followers``)."""
        self.followers += 1
        self.touch()

    def unwatch(self) -> None:
        """A client stops following; the last one leaving an unfinished build
        starts the abandoned-build clock."""
        self.followers -= 1
        self.touch()
        if self.followers == 0 and not self.state.finished and self._on_unwatched:
            self._on_unwatched(self)

    def finish(
        self, state: BuildState, final: ProgressEvent, error: BinderBuildError | None
    ) -> None:
        self.state = state
        self.error = error
        self.finished = time.time()
        self.queue_position = None
        self.append(final)

    def touch(self) -> None:
        """Note that a client is interested in this build (resets the abandon clock)."""
        self.last_seen = self._now()

    async def follow(
        self, after: int = -1, *, watch: bool = True
    ) -> AsyncGenerator[tuple[int, ProgressEvent], None]:
        """Yield (index, event) for every event after index ``after``, live, until the
        final event has been yielded.

        With ``watch`` (the default) the iteration counts as a client watching
        the build in ``followers`` until the generator is closed.
        """
        if watch:
            self.watch()
        try:
            index = after + 1
            while True:
                while index < len(self.events):
                    yield index, self.events[index]
                    index += 1
                if self.state.finished:
                    return
                await self._changed.wait()
        finally:
            if watch:
                self.unwatch()

    async def wait(self) -> None:
        async for _ in self.follow(len(self.events) - 1, watch=False):
            pass


class BuildManager:
    """Deduplicates builds by image build name and runs at most ``concurrency`` at once."""

    def __init__(
        self,
        builder: Builder,
        *,
        concurrency: int,
        build_timeout: float,
        idle_timeout: float,
        max_log_events: int = 50_000,
        max_log_bytes: int = 16 * 1024 * 1024,
        max_line_bytes: int = 64 * 1024,
        keep_finished: int = 500,
        abandoned_grace: float = 0.0,
        push_watch: Callable[[], Awaitable[BinderBuildError]] | None = None,
        on_queued: Sequence[BuildHook] = (),
        on_started: Sequence[BuildHook] = (),
        on_finished: Sequence[BuildHook] = (),
        clock: Clock | None = None,
        classify_failure: Callable[[Build, BinderBuildError], BinderBuildError] | None = None,
    ) -> None:
        """``on_started``/``on_finished`` are called with each build as it
        starts running / finishes (metrics, history, the known-images cache);
        ``on_queued`` with a new build that has to wait for a slot, before
        ``submit`` returns (the history's write-ahead: a build lost with the
        process while it waited is still on record). A hook that raises is
        logged and the others still run. ``push_watch`` runs while a build
        pushes (from its first ``pushing`` event) and returns an error when
        the registry stops answering (``RegistryClient.wait_unresponsive``):
        the build is then stopped and fails with it. ``clock``
        drives the abandoned-build policy (default: the running loop's).
        ``classify_failure`` may replace a failed build's error before it is
        reported (a push the registry refused for lack of disk space, issue
        16); it can also be set after construction."""
        self.builder = builder
        self.concurrency = max(1, concurrency)
        self.build_timeout = build_timeout
        self.idle_timeout = idle_timeout
        self.max_log_events = max_log_events
        self.max_log_bytes = max_log_bytes
        self.max_line_bytes = max_line_bytes
        self.keep_finished = keep_finished
        self._active: dict[str, Build] = {}  # build_name -> in-flight build
        self._by_id: OrderedDict[str, Build] = OrderedDict()
        self._queue: list[Build] = []
        self._running = 0
        self._paused = False
        self.push_watch = push_watch
        self.classify_failure = classify_failure
        self.on_queued: tuple[BuildHook, ...] = tuple(on_queued)
        self.on_started: tuple[BuildHook, ...] = tuple(on_started)
        self.on_finished: tuple[BuildHook, ...] = tuple(on_finished)
        self.clock = clock or LoopClock()
        self.joins = 0  # clients that attached to a build someone else started
        # Seconds a build may go without any client before it is cancelled; 0: never.
        self.abandoned_grace = abandoned_grace
        self.abandoned = 0  # builds cancelled because nobody was watching
        self._abandon_timers: dict[str, TimerHandle] = {}
        self._background: set[asyncio.Task[Build | None]] = set()

    # --- queries ----------------------------------------------------------

    def get(self, build_id: str) -> Build | None:
        return self._by_id.get(build_id)

    def active_for(self, build_name: str) -> Build | None:
        return self._active.get(build_name)

    def latest_for(self, build_name: str) -> Build | None:
        """The in-flight build of an image, else the newest one still remembered."""
        active = self._active.get(build_name)
        if active is not None:
            return active
        for build in reversed(self._by_id.values()):
            if build.job.image.build_name == build_name:
                return build
        return None

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return self._running

    def builds(self) -> list[Build]:
        return list(self._by_id.values())

    # --- commands ---------------------------------------------------------

    def submit(self, job: BuildJob) -> tuple[Build, bool]:
        """Return (build, created). Joins the in-flight build of the same image."""
        existing = self._active.get(job.image.build_name)
        if existing is not None:
            self.joins += 1
            return existing, False
        build = Build(job=job, _now=self.clock.now)
        build.touch()
        build._on_unwatched = self._arm_abandon
        self._active[job.image.build_name] = build
        self._remember(build)
        self._queue.append(build)
        self._schedule()
        if build.state is BuildState.QUEUED:
            self._announce_positions()
            self._notify(self.on_queued, build, "on_queued")
        # Armed from the start: a build submitted through the API and never
        # followed or polled is abandoned too.
        self._arm_abandon(build)
        return build, True

    def record_existing(self, job: BuildJob) -> Build:
        """Record that ``job.image`` already exists, as a finished build with an id.

        Gives API clients one id per image even when the image was built
        elsewhere or before this service remembered builds. Returns the
        in-flight build instead when there is one.
        """
        existing = self._active.get(job.image.build_name)
        if existing is not None:
            return existing
        build = Build(job=job, found_existing=True)
        build.started = build.created
        self._remember(build)
        found = event(
            Phase.BUILT, f"Found built image {job.image.name}.\n", imageName=job.image.name
        )
        build.finish(BuildState.SUCCEEDED, found, None)
        self._notify_finished(build)
        return build

    async def cancel(self, build_id: str, reason: str | None = None) -> Build | None:
        """Cancel a queued or running build; ``reason`` is shown to its clients."""
        build = self._by_id.get(build_id)
        if build is None or build.state.finished:
            return build
        build.cancel_reason = reason or build.cancel_reason or "Build cancelled."
        if build in self._queue:
            self._queue.remove(build)
            self._release(build)
            build.finish(
                BuildState.CANCELLED,
                _cancelled_event(build.cancel_reason),
                BuildCancelled(build.cancel_reason),
            )
            self._notify_finished(build)
            self._announce_positions()
        elif build._task is not None:
            build._task.cancel()
            await asyncio.gather(build._task, return_exceptions=True)
            self._finish_if_never_ran(build)
        return build

    async def close(self) -> None:
        for build in list(self._queue):
            await self.cancel(build.id)
        running = [b for b in self._active.values() if b._task is not None]
        for build in running:
            build.cancel_reason = (
                build.cancel_reason or "Build stopped: the service is shutting down."
            )
        for build in running:
            assert build._task is not None
            build._task.cancel()
        await asyncio.gather(*(b._task for b in running if b._task), return_exceptions=True)
        for build in running:
            self._finish_if_never_ran(build)
        for handle in self._abandon_timers.values():
            handle.cancel()
        self._abandon_timers.clear()

    # --- internals ----------------------------------------------------------

    def _finish_if_never_ran(self, build: Build) -> None:
        """A task cancelled before its first step never enters ``_run``, so
        nothing released its slot or finished it: do that here, or the build
        would stay RUNNING forever and every later request would join it."""
        if build.state.finished:
            return
        self._running -= 1
        self._release(build)
        reason = build.cancel_reason or "Build cancelled."
        build.finish(BuildState.CANCELLED, _cancelled_event(reason), BuildCancelled(reason))
        self._notify_finished(build)
        self._schedule()

    def _remember(self, build: Build) -> None:
        self._by_id[build.id] = build
        finished = [b for b in self._by_id.values() if b.state.finished]
        for old in finished[: max(0, len(finished) - self.keep_finished)]:
            self._by_id.pop(old.id, None)

    def _release(self, build: Build) -> None:
        if self._active.get(build.job.image.build_name) is build:
            del self._active[build.job.image.build_name]

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Start no build until ``resume`` (a maintenance window): builds
        asked for meanwhile queue with their position; running ones go on."""
        self._paused = True

    def resume(self) -> None:
        """Start the queued builds again, up to ``concurrency``."""
        if self._paused:
            self._paused = False
            self._schedule()

    def _schedule(self) -> None:
        while self._queue and not self._paused and self._running < self.concurrency:
            build = self._queue.pop(0)
            self._running += 1
            build.state = BuildState.RUNNING
            build.started = time.time()
            build.queue_position = None
            build._task = asyncio.create_task(self._run(build), name=f"build {build.id}")
        self._announce_positions()

    def _announce_positions(self) -> None:
        for position, build in enumerate(self._queue, start=1):
            if build.queue_position != position:
                build.queue_position = position
                build.append(
                    event(
                        Phase.WAITING,
                        f"Waiting for a build slot: position {position} in the queue "
                        f"({self._running} builds running).\n",
                        position=position,
                    )
                )

    async def _run(self, build: Build) -> None:
        job = build.job
        logger = logging.LoggerAdapter(log, {"build_id": build.id, "image": job.image.name})
        logger.info("build started: %s", job.image.name)
        for callback in self.on_started:
            try:
                callback(build)
            except Exception:
                log.exception("on_started callback failed")
        build.append(event(Phase.WAITING, "Build starting.\n"))
        loop = asyncio.get_running_loop()
        hard_deadline = loop.time() + self.build_timeout
        state: BuildState = BuildState.SUCCEEDED
        error: BinderBuildError | None = None
        watch: asyncio.Task[None] | None = None
        stalled: list[BinderBuildError] = []  # set by the push watch before it cancels
        try:
            # timeout_at: the deadline is absolute loop time (timeout() takes a delay).
            async with asyncio.timeout_at(
                min(hard_deadline, loop.time() + self.idle_timeout)
            ) as cm:
                async for ev in self.builder.build(job):
                    self._record(build, ev)
                    if ev.phase is Phase.PUSHING and watch is None and self.push_watch:
                        watch = asyncio.create_task(
                            self._watch_push(build, stalled), name=f"push watch {build.id}"
                        )
                    cm.reschedule(min(hard_deadline, loop.time() + self.idle_timeout))
        except TimeoutError:
            if loop.time() >= hard_deadline - 0.01:
                why = f"Build exceeded the time limit of {self.build_timeout:g} seconds."
            else:
                why = f"Build produced no output for {self.idle_timeout:g} seconds."
            state, error = BuildState.FAILED, BuildTimeout(why)
        except asyncio.CancelledError:
            if stalled:  # the registry stopped answering during the push
                if (task := asyncio.current_task()) is not None:
                    task.uncancel()
                state, error = BuildState.FAILED, stalled[0]
            else:
                state, error = (
                    BuildState.CANCELLED,
                    BuildCancelled(build.cancel_reason or "Build cancelled."),
                )
        except BuildFailed as exc:
            state, error = BuildState.FAILED, exc
        except BinderBuildError as exc:
            state, error = BuildState.FAILED, exc
        except Exception as exc:  # a bug in a backend must not kill the service
            logger.exception("build backend crashed")
            state, error = BuildState.FAILED, BuildFailed(f"Internal build error: {exc}")
        finally:
            if watch is not None:
                watch.cancel()
            self._running -= 1
            self._release(build)
        if state is BuildState.FAILED and error is not None and self.classify_failure:
            try:
                error = self.classify_failure(build, error)
            except Exception:  # a broken classifier must not lose the failure
                logger.exception("classifying the failure of build %s failed", build.id)
        if state is BuildState.SUCCEEDED:
            final = event(Phase.BUILT, "Built image.\n", imageName=job.image.name)
        elif state is BuildState.CANCELLED:
            final = _cancelled_event(build.cancel_reason)
        else:
            final = event(Phase.FAILED, f"Build failed: {error}\n")
        build.finish(state, final, error)
        logger.info("build finished: %s %s", job.image.name, state.value)
        self._notify_finished(build)
        self._schedule()

    async def _watch_push(self, build: Build, stalled: list[BinderBuildError]) -> None:
        """Stop the build when the registry it pushes to stops answering."""
        assert self.push_watch is not None
        try:
            error = await self.push_watch()
        except Exception:  # a broken watch must not break the build
            log.exception("the push watch of build %s failed", build.id)
            return
        if build.state.finished or build._task is None:
            return
        log.warning("stopping build %s of %s: %s", build.id, build.image_name, error)
        stalled.append(error)
        build._task.cancel()

    def _record(self, build: Build, ev: ProgressEvent) -> None:
        """Keep one event of the build. Log lines (``building``) are bounded
        three ways, since every byte is held in memory for every viewer and
        the history: a line longer than ``max_line_bytes`` is cut, and once
        the build's log passes ``max_log_bytes`` or ``max_log_events`` lines,
        further lines are dropped behind one visible marker."""
        if ev.phase is not Phase.BUILDING:
            build.append(ev)
            return
        if build._dropped_lines:
            build._dropped_lines += 1
            return
        message = ev.message
        size = len(message.encode("utf-8", "replace"))
        if size > self.max_line_bytes:
            cut = message.encode("utf-8", "replace")[: self.max_line_bytes]
            message = cut.decode("utf-8", "ignore") + " [line truncated]\n"
            ev = replace(ev, message=message)
            size = len(message.encode("utf-8", "replace"))
        if len(build.events) >= self.max_log_events:
            why = f"{self.max_log_events} lines"
        elif build._log_bytes + size > self.max_log_bytes:
            why = f"{self.max_log_bytes // (1024 * 1024)} MiB"
        else:
            build._log_bytes += size
            build.append(ev)
            return
        build._dropped_lines = 1
        build.append(
            event(
                Phase.BUILDING,
                f"[log truncated] the build log exceeds {why}; "
                "further build output is not streamed.\n",
            )
        )

    def _arm_abandon(self, build: Build) -> None:
        """(Re)start the abandon clock of a build that has no followers."""
        if self.abandoned_grace <= 0 or build.state.finished:
            return
        old = self._abandon_timers.pop(build.id, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, build.last_seen + self.abandoned_grace - self.clock.now())
        handle = self.clock.call_later(delay, lambda: self._check_abandoned(build))
        self._abandon_timers[build.id] = handle

    def _check_abandoned(self, build: Build) -> None:
        self._abandon_timers.pop(build.id, None)
        if build.state.finished or build.followers > 0:
            return  # the last follower to leave arms the clock again
        if self.clock.now() - build.last_seen < self.abandoned_grace:
            self._arm_abandon(build)  # a client looked at it meanwhile
            return
        self.abandoned += 1
        log.info("cancelling build %s of %s: nobody is watching", build.id, build.image_name)
        reason = f"Build cancelled: no client followed it for {self.abandoned_grace:g} seconds."
        task = asyncio.create_task(self.cancel(build.id, reason), name=f"abandon {build.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _notify_finished(self, build: Build) -> None:
        handle = self._abandon_timers.pop(build.id, None)
        if handle is not None:
            handle.cancel()
        self._notify(self.on_finished, build, "on_finished")

    @staticmethod
    def _notify(hooks: Sequence[BuildHook], build: Build, what: str) -> None:
        for callback in hooks:
            try:
                callback(build)
            except Exception:
                log.exception("%s callback failed", what)


def _cancelled_event(reason: str | None = None) -> ProgressEvent:
    return event(Phase.FAILED, f"{reason or 'Build cancelled.'}\n")
