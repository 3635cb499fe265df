"""In-memory stand-ins for the pipeline's collaborators, for unit tests driven
by ``asyncio.run``: a fake clock, an image store, a scripted builder, a
launcher and a repository provider. Each records what it was asked, so tests
can assert on the calls as well as on the events."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from binderbuild.builders.base import Builder
from binderbuild.errors import RefNotFound, SpecError
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.launcher import Launcher
from binderbuild.models import BuildJob, ImageSpec, LaunchRequest, LaunchResult, ResolvedRef
from binderbuild.providers.base import ParsedSpec, RepoProvider
from binderbuild.registry import ImageStore


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate`` holds (an AssertionError after ``timeout``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


async def settle(rounds: int = 20) -> None:
    """Give every ready task a few turns of the loop (no wall-clock wait)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


# --- time -------------------------------------------------------------------------


class FakeTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A ``binderbuild.builds.Clock`` (and, through ``now``, a TTLCache clock)
    that moves only when the test calls ``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self.time = start
        self._timers: list[tuple[float, int, FakeTimer, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.time

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer()
        heapq.heappush(
            self._timers, (self.time + max(0.0, delay), next(self._seq), timer, callback)
        )
        return timer

    @property
    def pending(self) -> int:
        """Timers armed and not cancelled."""
        return sum(1 for _, _, timer, _ in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward and run, in order, every timer now due (also those
        armed by a callback and already due)."""
        self.time += seconds
        for _ in range(10_000):
            if not self._timers or self._timers[0][0] > self.time:
                return
            _, _, timer, callback = heapq.heappop(self._timers)
            if not timer.cancelled:
                callback()
        raise AssertionError("timers keep re-arming themselves at the current time")


# --- image store -----------------------------------------------------------------


class MemoryImageStore(ImageStore):
    """Images are names in a set. ``hold()`` makes the next lookups wait until
    ``release()``, to interleave a build with a lookup."""

    def __init__(self, images: set[str] | None = None, pushes: bool = True) -> None:
        self.images = set(images or ())
        self.pushes = pushes
        self.lookups: list[str] = []  # image names asked about, in order
        self.answers: list[bool] = []  # what each finished lookup answered
        self.waiting = 0  # lookups held right now
        self._gate: asyncio.Event | None = None

    def hold(self) -> None:
        self._gate = asyncio.Event()

    def release(self) -> None:
        assert self._gate is not None, "hold() first"
        self._gate.set()
        self._gate = None

    async def image_digest(self, image: ImageSpec) -> str | None:
        self.lookups.append(image.name)
        gate = self._gate
        if gate is not None:
            self.waiting += 1
            try:
                await gate.wait()
            finally:
                self.waiting -= 1
        else:
            await asyncio.sleep(0)  # a real store always yields
        found = image.name in self.images
        self.answers.append(found)
        return f"sha256:{abs(hash(image.name)):x}" if found else None

    async def check(self) -> dict[str, Any]:
        return {"images": len(self.images)}


# --- builder -----------------------------------------------------------------------


@dataclass
class Script:
    """What the builder does for one image: yield ``events`` (``delay``
    seconds apart), wait for ``gate`` when one is given, then succeed or
    raise ``error``."""

    events: list[ProgressEvent] = field(
        default_factory=lambda: [
            event(Phase.FETCHING, "Fetching the repository.\n"),
            event(Phase.BUILDING, "Step 1/2: FROM scratch\n"),
        ]
    )
    error: BaseException | None = None
    gate: asyncio.Event | None = None
    delay: float = 0.0


class FakeBuilder(Builder):
    """Builds by script, keyed by build name (``default`` for the others).
    A successful build adds the image to ``store`` when one is given, as a
    push would."""

    needs_local_engine = False

    def __init__(self, store: MemoryImageStore | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self.scripts: dict[str, Script] = {}
        self.default = Script()
        self.jobs: list[BuildJob] = []  # every build started, in order
        self.stopped: list[str] = []  # build names whose generator was closed early

    def script(self, build_name: str, script: Script) -> Script:
        self.scripts[build_name] = script
        return script

    @property
    def started(self) -> list[str]:
        return [job.image.build_name for job in self.jobs]

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        self.jobs.append(job)
        script = self.scripts.get(job.image.build_name, self.default)
        done = False
        try:
            for ev in script.events:
                if script.delay:
                    await asyncio.sleep(script.delay)
                yield ev
            if script.gate is not None:
                await script.gate.wait()
            done = True
            if script.error is not None:
                raise script.error
            if self.store is not None:
                self.store.images.add(job.image.name)
        finally:
            if not done:
                self.stopped.append(job.image.build_name)


# --- launcher ----------------------------------------------------------------------


class FakeLauncher(Launcher):
    """Yields ``launching`` events, then a LaunchResult (or raises ``error``)."""

    def __init__(
        self, steps: int = 2, error: BaseException | None = None, delay: float = 0.0
    ) -> None:
        self.steps = steps
        self.error = error
        self.delay = delay
        self.requests: list[LaunchRequest] = []

    async def launch(  # type: ignore[override]
        self, request: LaunchRequest
    ) -> AsyncIterator[ProgressEvent | LaunchResult]:
        self.requests.append(request)
        for i in range(self.steps):
            if self.delay:
                await asyncio.sleep(self.delay)
            yield event(Phase.LAUNCHING, f"Launching server ({i + 1}/{self.steps}).\n")
        if self.error is not None:
            raise self.error
        user = request.user or "anonymous"
        yield LaunchResult(
            url=f"https://hub.example.org/user/{user}/", token=f"token-{user}", user=user
        )


# --- provider ----------------------------------------------------------------------


class FakeProvider(RepoProvider):
    """Specs are ``owner/repo/ref``. ``refs`` maps ``owner/repo/ref`` to the
    commit it resolves to; anything else is RefNotFound. A ref that is 40 hex
    digits resolves to itself (immutable)."""

    provider_id: ClassVar[str] = "fake"
    display_name: ClassVar[str] = "Fake"

    def __init__(self, refs: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refs = dict(refs or {})
        self.resolved: list[str] = []  # specs passed to resolve, in order
        self.env: dict[str, str] = {}

    def parse(self, spec: str) -> ParsedSpec:
        parts = spec.split("/")
        if len(parts) != 3 or not all(parts):
            raise SpecError("A fake spec is owner/repo/ref.")
        return ParsedSpec(repo="/".join(parts[:2]), ref=parts[2])

    async def resolve(self, spec: str) -> ResolvedRef:
        self.resolved.append(spec)
        await asyncio.sleep(0)
        parsed = self.parse(spec)
        immutable = len(parsed.ref) == 40 and all(c in "0123456789abcdef" for c in parsed.ref)
        sha = parsed.ref if immutable else self.refs.get(spec)
        if sha is None:
            raise RefNotFound(f"No ref {parsed.ref!r} in {parsed.repo}.")
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=parsed.ref,
            resolved_ref=sha,
            resolved_spec=f"{parsed.repo}/{sha}",
            repo_url=f"https://git.example.org/{parsed.repo}.git",
            ref_url=f"https://git.example.org/{parsed.repo}/tree/{sha}",
            slug_source=f"git.example.org/{parsed.repo}",
            content_provider="git",
            immutable_ref=immutable,
        )

    def build_env(self, ref: ResolvedRef) -> dict[str, str]:
        return dict(self.env)
