"""Issue 15: the warm pool's policy (sizes, caps, backoff, popularity,
signed-in launches, metrics, event log) over an in-memory pool backend.
The same behaviour against the real hub is in tests/hub/test_warmpool.py."""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import jsonschema

from binderbuild.errors import HubError
from binderbuild.eventlog import LAUNCH_EVENT_SCHEMA, EventLog
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.hub import PooledServer
from binderbuild.launcher import Launcher
from binderbuild.metrics import Metrics
from binderbuild.models import BuildRequest, LaunchRequest, LaunchResult, ResolvedRef
from binderbuild.pipeline import RunOutcome, RunReport, StageTimings
from binderbuild.quota import LaunchQuota
from binderbuild.warmpool import WarmPoolLauncher
from tests.unit.fakes import until


def request_for(image: str, user: str | None = None) -> LaunchRequest:
    repo = f"https://example.org/{image.split(':')[0]}"
    ref = ResolvedRef(
        provider_id="git",
        spec=f"{repo}/main",
        unresolved_ref="main",
        resolved_ref="a" * 40,
        resolved_spec=f"{repo}/{'a' * 40}",
        repo_url=repo,
        ref_url=repo,
        slug_source=repo,
    )
    return LaunchRequest(
        image=image,
        ref=ref,
        request_path=f"v2/git/{ref.spec}",
        persistent_request_path=f"v2/git/{ref.resolved_spec}",
        launch_host="https://binder.example.org/",
        user=user,
    )


class FakeBackend(Launcher):
    """A HubLauncher stand-in: pooled starts, hand-outs and removals in memory."""

    def __init__(self) -> None:
        self.names = itertools.count()
        self.started: list[PooledServer] = []
        self.removed: list[str] = []
        self.touched: list[str] = []
        self.cold: list[LaunchRequest] = []
        self.broken: set[str] = set()
        self.refuse_handout = False
        self.start_delay = 0.0
        self.start_attempts: dict[str, int] = {}
        self.quota = LaunchQuota(counter=_Zero())

    async def launch(  # type: ignore[override]
        self, request: LaunchRequest
    ) -> AsyncGenerator[ProgressEvent | LaunchResult, None]:
        self.cold.append(request)
        yield event(Phase.LAUNCHING, "Launching server...\n")
        user = f"cold-{next(self.names)}"
        yield LaunchResult(url=f"https://hub/user/{user}/", token="t", user=user)

    def launch_quota(self) -> LaunchQuota | None:
        return self.quota

    def user_options(self, request: LaunchRequest, token: str | None) -> dict[str, Any]:
        return {"image": request.image}

    async def start_pooled(self, request: LaunchRequest) -> PooledServer:
        self.start_attempts[request.image] = self.start_attempts.get(request.image, 0) + 1
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if request.image in self.broken:
            raise HubError("Could not start the server: the server exited with status 3")
        user = f"pool-{next(self.names)}"
        server = PooledServer(
            user=user,
            url=f"https://hub/user/{user}/",
            image=request.image,
            repo_url=request.ref.repo_url,
        )
        self.started.append(server)
        return server

    async def hand_out(self, server: PooledServer, request: LaunchRequest) -> LaunchResult:
        if self.refuse_handout:
            raise HubError("JupyterHub refused to create a server token: 404 no such user")
        return LaunchResult(url=server.url, token=f"tok-{server.user}", user=server.user, warm=True)

    async def touch(self, servers: list[PooledServer]) -> None:
        self.touched.extend(s.user for s in servers)

    async def remove_pooled(self, server: PooledServer) -> None:
        self.removed.append(server.user)


class _Zero:
    def count(self, repo_url: str | None = None) -> int:
        return 0


def pool_with(
    backend: FakeBackend, specs: dict[str, LaunchRequest], **options: Any
) -> WarmPoolLauncher:
    options.setdefault("images", list(specs))
    options.setdefault("backoff_initial", 0.05)
    options.setdefault("refresh_interval", 0.05)
    pool = WarmPoolLauncher(inner=backend, **options)

    async def prepare(spec: str) -> LaunchRequest | None:
        return specs.get(spec)

    pool.start(prepare)
    return pool


async def take(pool: Launcher, request: LaunchRequest) -> LaunchResult:
    async for item in pool.launch(request):
        if isinstance(item, LaunchResult):
            return item
    raise AssertionError("no result")


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())  # type: ignore[arg-type]


def test_pool_fills_per_image_up_to_the_total_cap() -> None:
    async def main() -> None:
        backend = FakeBackend()
        specs = {"git/a": request_for("img-a:1"), "git/b": request_for("img-b:1")}
        pool = pool_with(backend, specs, pool_size=3, total_cap=4)
        await until(lambda: len(backend.started) == 4)
        await asyncio.sleep(0.2)
        assert len(backend.started) == 4  # never more than the cap
        counts = {s.image: s.ready for s in pool.stats()}
        assert sum(counts.values()) == 4 and all(c >= 1 for c in counts.values()), counts
        await pool.close()
        assert sorted(backend.removed) == sorted(s.user for s in backend.started)

    run(main)


def test_hand_out_is_warm_and_refills_and_concurrent_launches_differ() -> None:
    async def main() -> None:
        backend = FakeBackend()
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=2)
        await pool.wait_until_ready("img-a:1", 2, timeout=5)
        pool.wait_for_refill = False
        results = await asyncio.gather(*(take(pool, req) for _ in range(3)))
        assert len({r.user for r in results}) == 3
        assert [r.warm for r in results].count(True) == 2
        assert len(backend.cold) == 1
        await pool.wait_until_ready("img-a:1", 2, timeout=5)
        stats = pool.stats()[0]
        assert (stats.hits, stats.misses) == (2, 1)
        await pool.close()

    run(main)


def test_a_burst_waits_for_refills_in_order_within_the_start_cap() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.start_delay = 0.1
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=2, concurrent_starts=3)
        await pool.wait_until_ready("img-a:1", 2, timeout=5)
        filled = len(backend.started)
        in_flight: list[int] = []
        real_start = backend.start_pooled

        async def counted(request: LaunchRequest) -> PooledServer:
            in_flight.append(sum(p.starting for p in pool._pools.values()))
            return await real_start(request)

        backend.start_pooled = counted  # type: ignore[method-assign]
        order: list[int] = []

        async def launch(i: int) -> LaunchResult:
            await asyncio.sleep(0.001 * i)  # arrive in order
            result = await take(pool, req)
            order.append(i)
            return result

        results = await asyncio.gather(*(launch(i) for i in range(8)))
        # Nobody went cold: the 6 beyond the pool were served by starts made
        # for them, never more than concurrent_starts at once, oldest first.
        assert backend.cold == []
        assert all(r.warm for r in results)
        assert len({r.user for r in results}) == 8
        assert max(in_flight) <= 3, in_flight
        assert order[:2] == [0, 1] and sorted(order[2:]) == order[2:], order
        # Then the pool is refilled to its size, no more.
        await pool.wait_until_ready("img-a:1", 2, timeout=5)
        await asyncio.sleep(0.3)
        assert pool.stats()[0].ready == 2
        assert len(backend.started) == filled + 6 + 2
        await pool.close()

    run(main)


def test_waiting_launches_go_cold_when_starts_fail_or_time_out() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.start_delay = 0.2
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=1, backoff_initial=5)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        # The image breaks: the start made for the waiting launch fails, and
        # the launch is cold at once (not after wait_timeout).
        await take(pool, req)
        backend.broken.add("img-a:1")
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await take(pool, req)
        assert not result.warm and len(backend.cold) == 1
        assert loop.time() - started < 2
        # Backing off: launches do not wait at all.
        result = await take(pool, req)
        assert not result.warm and len(backend.cold) == 2
        await pool.close()

        backend = FakeBackend()
        backend.start_delay = 0.5
        pool = pool_with(backend, {"git/a": req}, pool_size=1, wait_timeout=0.1)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await take(pool, req)
        result = await take(pool, req)  # its start takes longer than the wait
        assert not result.warm and len(backend.cold) == 1
        # The server started for it is not lost: it fills the pool.
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await pool.close()

    run(main)


def test_a_waiting_launch_that_leaves_gives_its_server_to_the_next() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.start_delay = 0.2
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=1, concurrent_starts=1)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await take(pool, req)
        leaving = asyncio.ensure_future(take(pool, req))
        await asyncio.sleep(0.05)
        staying = asyncio.ensure_future(take(pool, req))
        await asyncio.sleep(0.01)
        leaving.cancel()
        result = await staying
        assert result.warm and backend.cold == []
        assert pool._pools["img-a:1"].waiters == collections.deque()
        await pool.close()

    run(main)


def test_signed_in_launches_stay_cold() -> None:
    async def main() -> None:
        backend = FakeBackend()
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=1)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        result = await take(pool, replace(req, user="alice"))
        assert not result.warm and backend.cold[-1].user == "alice"
        assert pool.stats()[0].ready == 1  # untouched
        await pool.close()

    run(main)


def test_refused_hand_out_falls_back_to_cold_and_removes_the_server() -> None:
    async def main() -> None:
        backend = FakeBackend()
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=1)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        (server,) = pool.pooled("img-a:1")
        backend.refuse_handout = True
        result = await take(pool, req)
        assert not result.warm and len(backend.cold) == 1
        await until(lambda: server.user in backend.removed)
        await pool.close()

    run(main)


def test_failing_starts_back_off_exponentially_and_report() -> None:
    async def main() -> None:
        backend = FakeBackend()
        backend.broken.add("img-a:1")
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=2, backoff_initial=0.2, backoff_max=0.4)
        await until(lambda: backend.start_attempts.get("img-a:1", 0) >= 1)
        await asyncio.sleep(0.1)
        assert backend.start_attempts["img-a:1"] == 1  # not retried at once
        health = await pool.health()
        assert health["ok"] is False
        assert health["pools"][0]["backing_off"] is True
        assert "exited with status 3" in health["pools"][0]["last_error"]
        # The launch does not fail because of the pool: it is a cold one.
        result = await take(pool, req)
        assert not result.warm
        # Fixed image: after the backoff the pool fills and reports ok.
        backend.broken.clear()
        await pool.wait_until_ready("img-a:1", 2, timeout=5)
        assert (await pool.health())["ok"] is True
        await pool.close()

    run(main)


def test_most_launched_images_of_the_window_get_pools() -> None:
    async def main() -> None:
        backend = FakeBackend()
        pool = pool_with(backend, {}, images=[], popular_images=1, pool_size=1)
        a, b = request_for("img-a:1"), request_for("img-b:1")
        for req in (a, a, b):
            await take(pool, req)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await asyncio.sleep(0.2)
        assert {s.image for s in backend.started} == {"img-a:1"}
        # Signed-in launches do not make an image popular for anonymous pools.
        for _ in range(3):
            await take(pool, replace(b, user="bob"))
        await asyncio.sleep(0.2)
        assert {s.image for s in backend.started} == {"img-a:1"}
        await pool.close()

    run(main)


def test_an_image_no_longer_listed_is_drained() -> None:
    async def main() -> None:
        backend = FakeBackend()
        specs = {"git/a": request_for("img-a:1")}
        pool = pool_with(backend, specs, pool_size=1)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        (old,) = pool.pooled("img-a:1")
        # The listed spec's branch moved: it now resolves to another image.
        specs["git/a"] = request_for("img-a:2")
        await pool.wait_until_ready("img-a:2", 1, timeout=5)
        await until(lambda: old.user in backend.removed)
        assert pool.pooled("img-a:1") == []
        # The image was removed from the store: its pool is drained too.
        pool.image_removed("img-a:2")
        await until(lambda: all(s.user in backend.removed for s in backend.started))
        await pool.close()

    run(main)


def test_pooled_servers_are_touched_and_aged_out() -> None:
    async def main() -> None:
        backend = FakeBackend()
        pool = pool_with(
            backend,
            {"git/a": request_for("img-a:1")},
            pool_size=1,
            activity_interval=0.05,
            max_idle_age=0.3,
        )
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        (first,) = pool.pooled("img-a:1")
        await until(lambda: first.user in backend.touched)
        await until(lambda: first.user in backend.removed)
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await pool.close()

    run(main)


def test_metrics_show_pool_sizes_hits_misses_and_hand_out_latency() -> None:
    async def main() -> None:
        backend = FakeBackend()
        metrics = Metrics()
        req = request_for("img-a:1")
        pool = pool_with(backend, {"git/a": req}, pool_size=1)
        metrics.watch_pool(pool)
        pool.metrics = metrics
        await pool.wait_until_ready("img-a:1", 1, timeout=5)
        await take(pool, req)
        await take(pool, req)  # the refill may not be ready: a miss or a hit
        body = metrics.exposition()[0].decode()
        assert 'binderbuild_warm_pool_servers{image="img-a:1",state="ready"}' in body
        assert "binderbuild_warm_pool_handouts_total" in body
        assert 'binderbuild_warm_pool_misses_total{reason="empty"}' in body
        assert "binderbuild_warm_pool_handout_duration_seconds_count" in body
        assert "binderbuild_warm_pool_start_failures_total" in body
        await pool.close()

    run(main)


def test_launch_event_records_warm_or_cold() -> None:
    log = EventLog()
    request = BuildRequest(provider_id="git", spec="x/main")
    for warm, expected in ((True, "warm"), (False, "cold"), (None, None)):
        report = RunReport(
            request=request, outcome=RunOutcome.SUCCESS, timings=StageTimings(), warm=warm
        )
        ev = log.launch_event(report)
        jsonschema.validate(ev, LAUNCH_EVENT_SCHEMA)
        assert ev["launch"] == expected
