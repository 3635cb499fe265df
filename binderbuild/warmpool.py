"""Warm pools: servers started before anyone asks, handed out on launch.

A launch of an image that has a warm pool takes a server that is already
running, mints its launch token, and is ``ready`` in the time of one hub API
call instead of a container start (docs/launching.md, "Warm pools"). A
replacement starts in the background.

``WarmPoolLauncher`` wraps the ``HubLauncher`` (the composition root puts it
inside the metrics wrapper) and keeps, per pooled image, ``pool_size``
servers started by ``HubLauncher.start_pooled``: the default server of a
fresh temporary user, started with the ``user_options`` of a cold launch
less the token. Which images:

- ``images``: specs the operator lists (``gh/org/repo/HEAD``), resolved every
  ``refresh_interval`` through the pipeline (``Pipeline.prepare_launch``:
  resolution and an image lookup, never a build); a spec whose ref moves gets
  a pool for its new image and the old one is drained;
- ``popular_images``: the N images launched most (anonymously) in the last
  ``popular_window`` seconds.

Correctness:

- a pooled server has no token until hand-out, so nothing can reach it (the
  temporary user's name has 41 random bits, and the proxy route answers only
  hub credentials that do not exist yet);
- taking a server from the pool has no ``await`` between the check and the
  pop: two launches never get one server;
- pooled servers report activity every ``activity_interval`` seconds, so the
  idle culler leaves them alone while they wait; once handed out they are
  culled like any other (their last activity is the hand-out). A server
  pooled for ``max_idle_age`` seconds is replaced;
- a rebuilt image (``image_rebuilt``, a BuildManager on_finished hook) or a
  removed one (``image_removed``, the image cleaners' hook) is drained;
- a pool whose starts fail backs off exponentially (``backoff_initial`` ..
  ``backoff_max``) and says so in ``/health`` (``warm-pool``) and
  ``/metrics``; launches of its image are cold meanwhile, never failed by
  the pool. A hand-out the hub refuses falls back to a cold launch too.
- a launch that finds its pool empty (a burst: a class clicking one badge)
  waits for the pool's next server instead of spawning cold
  (``wait_for_refill``): the launches waiting are served in order of
  arrival by the starts in flight, and the pool starts one more server per
  waiting launch, at most ``concurrent_starts`` at a time in all pools. On
  a small machine a burst of cold spawns all at once makes every one of
  them slow; a capped stream of starts hands the first servers out soon.
  A waiting launch goes cold after ``wait_timeout`` seconds, or at once when
  the pool fails a start, is drained or is backing off;
- signed-in launches are always cold: JupyterHub starts a server for one
  user, and a running server cannot change owner, so a server started
  before the user asked cannot become theirs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from binderbuild.builds import Build, BuildState
from binderbuild.errors import BinderBuildError, QuotaExceeded
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.hub import PooledServer, _LauncherMeta
from binderbuild.launcher import Launcher
from binderbuild.metrics import Metrics, PoolMiss
from binderbuild.models import BuildRequest, LaunchRequest, LaunchResult
from binderbuild.quota import LaunchQuota

# spec ("gh/org/repo/HEAD") -> the LaunchRequest of its image, None while
# the image is not built.
Prepare = Callable[[str], Awaitable[LaunchRequest | None]]


class PoolBackend(Protocol):
    """What a pool needs of the launcher it wraps (``HubLauncher`` has it)."""

    def launch(
        self, request: LaunchRequest
    ) -> AsyncGenerator[ProgressEvent | LaunchResult, None]: ...

    async def check(self) -> dict[str, Any]: ...

    def launch_quota(self) -> LaunchQuota | None: ...

    async def close(self) -> None: ...

    async def start_pooled(self, request: LaunchRequest) -> PooledServer: ...

    async def hand_out(self, server: PooledServer, request: LaunchRequest) -> LaunchResult: ...

    async def touch(self, servers: list[PooledServer]) -> None: ...

    async def remove_pooled(self, server: PooledServer) -> None: ...


class PipelineLike(Protocol):
    async def prepare_launch(self, request: BuildRequest) -> LaunchRequest | None: ...


def pipeline_preparer(pipeline: PipelineLike, launch_host: str) -> Prepare:
    """``prepare`` for ``WarmPoolLauncher.start``: a listed spec, as in a
    launch URL after ``/v2/`` (``gh/org/repo/HEAD``), to its launch request."""

    async def prepare(spec: str) -> LaunchRequest | None:
        provider_id, _, rest = spec.strip("/").partition("/")
        return await pipeline.prepare_launch(
            BuildRequest(provider_id=provider_id, spec=rest, launch_host=launch_host)
        )

    return prepare


@dataclass(frozen=True)
class PoolStats:
    image: str
    ready: int
    starting: int
    hits: int
    misses: int
    failures: int  # failed starts, ever
    backing_off: bool
    last_error: str
    quota_full: bool


@dataclass(eq=False)
class _Pool:
    image: str
    template: LaunchRequest
    ready: collections.deque[PooledServer] = field(default_factory=collections.deque)
    starting: int = 0
    # Launches waiting for this pool's next server, oldest first; each gets
    # a server, or None (launch cold).
    waiters: collections.deque[asyncio.Future[PooledServer | None]] = field(
        default_factory=collections.deque
    )
    # Bumped by a drain: servers whose start began before it are not pooled.
    generation: int = 0
    hits: int = 0
    misses: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    quota_full: bool = False
    # A start has succeeded and none failed since: fill in parallel. Until
    # then one start at a time probes the image (a broken one fails once
    # per backoff, not pool_size times).
    proven: bool = False

    @property
    def size(self) -> int:
        return len(self.ready) + self.starting

    @property
    def healthy(self) -> bool:
        """Its starts succeed: worth waiting for."""
        return self.proven and self.consecutive_failures == 0 and not self.quota_full

    def waiting(self) -> int:
        return sum(1 for w in self.waiters if not w.done())

    def serve(self, server: PooledServer) -> bool:
        """Give ``server`` to the oldest waiting launch, if there is one."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(server)
                return True
        return False

    def release_waiters(self) -> None:
        """Nothing is coming: the launches waiting go cold."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class WarmPoolLauncher(LoggingConfigurable, Launcher, metaclass=_LauncherMeta):
    """Keeps servers of popular images started and hands them out on launch."""

    images = List(
        Unicode(),
        config=True,
        help="Specs whose image gets a warm pool, written as in a launch URL after "
        "/v2/, e.g. 'gh/org/course/HEAD' or 'git/<url-encoded URL>/main'. Resolved every "
        "refresh_interval seconds; only built images are pooled (the pool never builds).",
    )
    popular_images = Integer(
        0,
        config=True,
        help="Also keep pools for the N images launched most (anonymously) in the last "
        "popular_window seconds. 0: only the listed images.",
    )
    popular_window = Float(
        3600.0, config=True, help="Seconds of launches that popular_images looks at."
    )
    popular_min_launches = Integer(
        2,
        config=True,
        help="Launches within popular_window an image needs to count as popular.",
    )
    pool_size = Integer(
        2, config=True, help="Servers kept started (ready or starting) per pooled image."
    )
    total_cap = Integer(
        10,
        config=True,
        help="Servers kept started in all pools together. Pooled servers are running "
        "servers: they take places of the total launch quota (BinderBuild.pod_quota), "
        "and a pool stops growing when the quota is full.",
    )
    max_idle_age = Float(
        1800.0,
        config=True,
        help="Seconds a server may wait in a pool; older ones are replaced by fresh ones. "
        "With the idle culler's --max-age (hubconfig cull_max_age), keep this well below "
        "it: a handed-out server's age counts from its start.",
    )
    activity_interval = Float(
        120.0,
        config=True,
        help="Seconds between activity reports of pooled servers to the hub, so the idle "
        "culler does not cull them while they wait (keep it below the culler's timeout). "
        "Needs the users:activity scope (in admin:users).",
    )
    refresh_interval = Float(
        60.0, config=True, help="Seconds between resolutions of the listed specs."
    )
    backoff_initial = Float(
        10.0,
        config=True,
        help="Seconds a pool waits after a failed start before trying again; doubles with "
        "each failure in a row up to backoff_max. Launches are cold meanwhile.",
    )
    backoff_max = Float(600.0, config=True, help="Upper bound of a pool's backoff.")
    wait_for_refill = Bool(
        True,
        config=True,
        help="A launch that finds its image's pool empty waits for the pool's next server "
        "(launches waiting are served in order of arrival; the pool starts one more server "
        "per waiting launch, within concurrent_starts) instead of spawning cold at once. "
        "It goes cold after wait_timeout, or at once when the pool's starts fail. False: "
        "launches finding the pool empty are cold.",
    )
    wait_timeout = Float(
        60.0,
        config=True,
        help="Seconds a launch waits for a pooled server (wait_for_refill) before it "
        "launches cold.",
    )
    concurrent_starts = Integer(
        2,
        config=True,
        help="Pooled servers starting at once in all pools together (refills and starts "
        "for waiting launches). Every start is a container and a Jupyter server starting "
        "(about 2.5 CPU-seconds each): many at once make each of them slower, and on a "
        "small machine all of them later than one after another would.",
    )

    def __init__(
        self,
        *,
        inner: PoolBackend,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        self.metrics = metrics
        self.clock = clock
        self._pools: dict[str, _Pool] = {}
        self._listed: dict[str, LaunchRequest | None] = {}
        self._recent: collections.deque[tuple[float, LaunchRequest]] = collections.deque(
            maxlen=20000
        )
        self._removed: set[str] = set()  # images gone from the store, until built again
        self._prepare: Prepare | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # starts
        self._removals: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._closed = False
        self._last_refresh = float("-inf")
        self._last_touch = clock()

    @property
    def enabled(self) -> bool:
        return bool(self.images) or self.popular_images > 0

    # --- life cycle ------------------------------------------------------------

    def start(self, prepare: Prepare) -> None:
        """Begin keeping pools (call inside the loop). ``prepare`` resolves a
        listed spec to the launch request of its image (``pipeline_preparer``)."""
        self._prepare = prepare
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._maintain())

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=10)
            for pool in list(self._pools.values()):
                self._drain(pool)
            self._pools.clear()
            if self._removals:
                # Pooled servers are nobody's: remove them now rather than
                # leave them to the culler (which they keep at bay).
                await asyncio.wait(list(self._removals), timeout=30)
        await self.inner.close()

    # --- the launcher contract ---------------------------------------------------

    async def launch(
        self, request: LaunchRequest
    ) -> AsyncGenerator[ProgressEvent | LaunchResult, None]:
        pool = None
        if request.user is None:
            self._recent.append((self.clock(), request))
            pool = self._pools.get(request.image)
        # No await between looking and taking: one server, one launch.
        server = pool.ready.popleft() if pool is not None and pool.ready else None
        announced = False
        if (
            pool is not None
            and server is None
            and self.wait_for_refill
            and pool.healthy
            and self._pools.get(pool.image) is pool
        ):
            yield event(Phase.LAUNCHING, "Launching server...\n")
            announced = True
            server = await self._wait_for_server(pool)
        if pool is not None and server is None:
            self._missed(pool, PoolMiss.EMPTY)
        if server is not None and pool is not None:
            self._wake.set()  # refill
            started = time.monotonic()
            result: LaunchResult | None = None
            try:
                result = await self.inner.hand_out(server, request)
            except QuotaExceeded:
                # Its repository is at its quota: the server stays pooled.
                self._give_back(pool, server)
                raise
            except BinderBuildError as exc:
                self.log.warning(
                    "could not hand out pooled server %s of %s (%s); launching cold",
                    server.user,
                    server.image,
                    exc.message,
                )
                self._discard(server)
                self._missed(pool, PoolMiss.HANDOUT_FAILED)
            except BaseException:
                self._discard(server)  # the client left: nobody gets it
                raise
            if result is not None:
                elapsed = time.monotonic() - started
                pool.hits += 1
                if self.metrics is not None:
                    self.metrics.pool_handed_out(elapsed)
                self.log.info(
                    "handed out pooled server %s of %s in %.3fs", server.user, server.image, elapsed
                )
                if not announced:
                    try:
                        yield event(Phase.LAUNCHING, "Launching server...\n")
                    except GeneratorExit:
                        self._discard(server)
                        raise
                yield result
                return
        async with contextlib.aclosing(self.inner.launch(request)) as items:
            async for item in items:
                if isinstance(item, LaunchResult):
                    # Launched fine: the image is there (again).
                    self._removed.discard(request.image)
                yield item

    async def _wait_for_server(self, pool: _Pool) -> PooledServer | None:
        """Wait in line for the pool's next server: None to launch cold."""
        waiter: asyncio.Future[PooledServer | None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(waiter)
        self._wake.set()  # start a server for this launch
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.wait_timeout):
                server = await waiter
        except TimeoutError:
            server = None
        except BaseException:
            # The client left. A server given to it in the meantime goes back.
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                given = waiter.result()
                assert given is not None
                self._give_back(pool, given)
            waiter.cancel()
            with contextlib.suppress(ValueError):
                pool.waiters.remove(waiter)
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
        if server is None and waiter.done() and not waiter.cancelled():
            server = waiter.result()  # handed to it just as the wait timed out
        with contextlib.suppress(ValueError):
            pool.waiters.remove(waiter)
        self.log.info(
            "launch of %s waited %.2fs for a pooled server: %s",
            pool.image,
            time.monotonic() - started,
            server.user if server is not None else "none, launching cold",
        )
        return server

    async def check(self) -> dict[str, Any]:
        return await self.inner.check()

    def launch_quota(self) -> LaunchQuota | None:
        return self.inner.launch_quota()

    # --- hooks -------------------------------------------------------------------

    def image_rebuilt(self, build: Build) -> None:
        """BuildManager on_finished hook: servers of an image built again run
        the old image; drain them (the pool refills with the new one)."""
        if build.state is not BuildState.SUCCEEDED:
            return
        self._removed.discard(build.image_name)
        pool = self._pools.get(build.image_name)
        if pool is not None:
            self.log.info("image %s was rebuilt: draining its warm pool", build.image_name)
            self._drain(pool)
            pool.consecutive_failures = 0
            pool.retry_at = 0.0
            self._wake.set()

    def image_removed(self, image: str) -> None:
        """The image cleaners' hook: no pool for an image that is gone, until
        it is built or launched again."""
        self._removed.add(image)
        pool = self._pools.pop(image, None)
        if pool is not None:
            self.log.info("image %s was removed: draining its warm pool", image)
            self._drain(pool)

    # --- what tests, /health and /metrics read -----------------------------------

    def pooled(self, image: str) -> list[PooledServer]:
        pool = self._pools.get(image)
        return list(pool.ready) if pool is not None else []

    def stats(self) -> list[PoolStats]:
        now = self.clock()
        return [
            PoolStats(
                image=p.image,
                ready=len(p.ready),
                starting=p.starting,
                hits=p.hits,
                misses=p.misses,
                failures=p.failures,
                backing_off=p.consecutive_failures > 0 and now < p.retry_at,
                last_error=p.last_error,
                quota_full=p.quota_full,
            )
            for p in self._pools.values()
        ]

    async def health(self) -> dict[str, Any]:
        """The ``warm-pool`` check of /health (informational: never required)."""
        pools = [asdict(s) for s in self.stats()]
        for entry, pool in zip(pools, self._pools.values(), strict=True):
            entry["backing_off"] = pool.consecutive_failures > 0
        servers = sum(p["ready"] + p["starting"] for p in pools)
        return {
            "ok": not any(p["backing_off"] for p in pools),
            "servers": servers,
            "total_cap": self.total_cap,
            "pools": pools,
        }

    async def wait_until_ready(self, image: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.pooled(image)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"warm pool of {image} has {len(self.pooled(image))} of {count} servers "
                    f"after {timeout:g}s: {self.stats()}"
                )
            await asyncio.sleep(0.05)

    # --- keeping the pools -------------------------------------------------------

    def _tick(self) -> float:
        return max(
            0.01,
            min(
                1.0,
                self.refresh_interval,
                self.activity_interval,
                self.backoff_initial,
                self.max_idle_age / 4,
            ),
        )

    async def _maintain(self) -> None:
        while not self._closed:
            try:
                await self._refresh()
                self._reconcile()
                await self._touch()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("warm pool maintenance failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._tick())

    async def _refresh(self) -> None:
        now = self.clock()
        if self._prepare is None or now - self._last_refresh < self.refresh_interval:
            return
        self._last_refresh = now
        for spec in self.images:
            try:
                self._listed[spec] = await self._prepare(spec)
            except BinderBuildError as exc:
                self.log.warning("warm pool: cannot resolve %s: %s", spec, exc.message)
            except Exception as exc:
                self.log.warning(
                    "warm pool: cannot resolve %s: %s: %s", spec, type(exc).__name__, exc
                )

    def _wanted(self) -> dict[str, LaunchRequest]:
        wanted: dict[str, LaunchRequest] = {}
        for spec in self.images:
            request = self._listed.get(spec)
            if request is not None:
                wanted.setdefault(request.image, request)
        if self.popular_images > 0:
            horizon = self.clock() - self.popular_window
            while self._recent and self._recent[0][0] < horizon:
                self._recent.popleft()
            counts: collections.Counter[str] = collections.Counter()
            latest: dict[str, LaunchRequest] = {}
            for _, request in self._recent:
                counts[request.image] += 1
                latest[request.image] = request
            popular = [
                image for image, n in counts.most_common() if n >= self.popular_min_launches
            ][: self.popular_images]
            for image in popular:
                wanted.setdefault(image, latest[image])
        return {image: r for image, r in wanted.items() if image not in self._removed}

    def _reconcile(self) -> None:
        if self._closed:
            return
        wanted = self._wanted()
        for image in list(self._pools):
            if image not in wanted:
                self.log.info("warm pool of %s no longer wanted: draining it", image)
                self._drain(self._pools.pop(image))
        for image, template in wanted.items():
            pool = self._pools.get(image)
            if pool is None:
                self._pools[image] = _Pool(image, template)
            else:
                pool.template = template
        now = self.clock()
        for pool in self._pools.values():
            while pool.ready and now - pool.ready[0].ready_at > self.max_idle_age:
                server = pool.ready.popleft()
                self.log.info(
                    "pooled server %s of %s is too old: replacing it", server.user, pool.image
                )
                self._discard(server)
        starting = sum(p.starting for p in self._pools.values())
        # Launches waiting first: one start in flight per waiting launch.
        for pool in self._pools.values():
            if pool.waiters and not pool.healthy:
                pool.release_waiters()
            while starting < self.concurrent_starts and pool.starting < pool.waiting():
                self._start_one(pool)
                starting += 1
        for pool in self._pools.values():
            # Served everyone waiting and more: keep pool_size.
            while len(pool.ready) > self.pool_size and not pool.waiters:
                self._discard(pool.ready.pop())
        total = sum(p.size for p in self._pools.values())
        while total < self.total_cap and starting < self.concurrent_starts:
            candidates = [
                p
                for p in self._pools.values()
                if p.size < self.pool_size
                and now >= p.retry_at
                and (p.starting == 0 or (p.proven and p.consecutive_failures == 0))
            ]
            if not candidates:
                break
            pool = min(candidates, key=lambda p: p.size)
            self._start_one(pool)
            total += 1
            starting += 1

    def _start_one(self, pool: _Pool) -> None:
        pool.starting += 1
        task = asyncio.ensure_future(self._start(pool, pool.generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, pool: _Pool, generation: int) -> None:
        try:
            server = await self.inner.start_pooled(pool.template)
        except QuotaExceeded as exc:
            # Not a failure: the deployment is full. Look again later.
            pool.quota_full = True
            pool.retry_at = self.clock() + self.backoff_initial
            pool.release_waiters()
            self.log.info("warm pool of %s waits: %s", pool.image, exc.message)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = (
                exc.message if isinstance(exc, BinderBuildError) else f"{type(exc).__name__}: {exc}"
            )
            pool.failures += 1
            pool.consecutive_failures += 1
            pool.proven = False
            delay = min(
                self.backoff_max,
                self.backoff_initial * 2 ** (pool.consecutive_failures - 1),
            )
            pool.retry_at = self.clock() + delay
            pool.last_error = message
            pool.release_waiters()
            if self.metrics is not None:
                self.metrics.pool_start_failed()
            self.log.warning(
                "warm pool of %s could not start a server (%d in a row); next try in %gs: %s",
                pool.image,
                pool.consecutive_failures,
                delay,
                message,
            )
            return
        finally:
            pool.starting -= 1
            self._wake.set()
        pool.consecutive_failures = 0
        pool.proven = True
        pool.quota_full = False
        if self._closed or self._pools.get(pool.image) is not pool or pool.generation != generation:
            self._discard(server)  # drained while it started
            return
        if not pool.serve(server):
            pool.ready.append(server)

    async def _touch(self) -> None:
        now = self.clock()
        if now - self._last_touch < self.activity_interval:
            return
        self._last_touch = now
        servers = [s for p in self._pools.values() for s in p.ready]
        if not servers:
            return
        try:
            await self.inner.touch(servers)
        except BinderBuildError as exc:
            self.log.warning("warm pool: could not report activity: %s", exc.message)

    def _drain(self, pool: _Pool) -> None:
        pool.generation += 1
        pool.release_waiters()
        while pool.ready:
            self._discard(pool.ready.popleft())

    def _give_back(self, pool: _Pool, server: PooledServer) -> None:
        if not self._closed and self._pools.get(pool.image) is pool:
            if not pool.serve(server):
                pool.ready.appendleft(server)
        else:
            self._discard(server)

    def _discard(self, server: PooledServer) -> None:
        task = asyncio.ensure_future(self._remove(server))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, server: PooledServer) -> None:
        try:
            await self.inner.remove_pooled(server)
        except Exception as exc:
            self.log.warning("could not remove pooled server %s: %s", server.user, exc)

    def _missed(self, pool: _Pool, reason: PoolMiss) -> None:
        pool.misses += 1
        if self.metrics is not None:
            self.metrics.pool_missed(reason)
