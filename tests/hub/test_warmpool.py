"""Issue 15: warm pools of started servers, against the real hub, proxy,
BinderDockerSpawner and engine.

Each test builds its own ``WarmPoolLauncher`` around an in-process
``HubLauncher`` aimed at a real hub; the pool's listed spec resolves (through
the ``prepare`` callable the service passes in) to a test image made on the
engine.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from binderbuild.builds import BuildState
from binderbuild.errors import BinderBuildError
from binderbuild.hub import HubLauncher
from binderbuild.models import LaunchRequest, LaunchResult
from binderbuild.warmpool import WarmPoolLauncher
from tests.hub.conftest import fake_request, make_launcher, run_async
from tests.hubservice import _OPENER, HubService

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def preparer(
    requests: dict[str, LaunchRequest],
) -> Callable[[str], Awaitable[LaunchRequest | None]]:
    async def prepare(spec: str) -> LaunchRequest | None:
        return requests.get(spec)

    return prepare


def make_pool(
    hub: HubService, launcher: HubLauncher | None = None, **options: Any
) -> WarmPoolLauncher:
    options.setdefault("backoff_initial", 0.5)
    options.setdefault("refresh_interval", 0.5)
    return WarmPoolLauncher(inner=launcher or make_launcher(hub), **options)


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def launch(pool: WarmPoolLauncher, request: LaunchRequest) -> LaunchResult | BinderBuildError:
    try:
        async for item in pool.launch(request):
            if isinstance(item, LaunchResult):
                return item
    except BinderBuildError as exc:
        return exc
    raise AssertionError("launch ended without a result")


def user_tokens(hub: HubService, user: str) -> list[str]:
    """Notes of the user's tokens, less the server's own API token (the hub
    gives every server one, "Server at /user/...", held only inside its
    container)."""
    status, data = hub.api("GET", f"users/{user}/tokens")
    assert status == 200, (status, data)
    tokens = data.get("api_tokens", []) if isinstance(data, dict) else data
    return [t["note"] for t in tokens if not str(t.get("note", "")).startswith("Server at ")]


@run_async
async def test_warm_launch_hands_out_a_server_reachable_only_with_its_token(
    hub: HubService, plain_image: str
) -> None:
    request = fake_request(plain_image)
    launcher = make_launcher(hub)
    pool = make_pool(hub, launcher, images=["git/warm"], pool_size=1)
    pool.start(preparer({"git/warm": request}))
    handed: list[str] = []
    try:
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (pooled,) = pool.pooled(plain_image)
        model = hub.user(pooled.user)
        assert model is not None
        server = model["servers"][""]
        assert server["ready"]
        # Started with exactly the user_options of a cold launch of the same
        # request, less the launch token, which does not exist yet.
        cold = launcher.user_options(request, token=None)
        assert server["user_options"] == cold
        assert "token" not in cold
        # Nobody can reach it before hand-out: the user has no token at all,
        # and neither no token nor a made-up one opens the server.
        assert user_tokens(hub, pooled.user) == []
        assert status_of(pooled.url + "api/status") in (302, 401, 403)
        made_up = {"Authorization": "token " + "0" * 40}
        assert status_of(pooled.url + "api/status", made_up) in (302, 401, 403)
        assert status_of(pooled.url + "api/status?token=nope") in (302, 401, 403)

        started = time.perf_counter()
        result = await launch(pool, request)
        elapsed = time.perf_counter() - started
        assert isinstance(result, LaunchResult), result
        handed.append(result.user)
        assert result.warm
        assert result.user == pooled.user
        assert result.url == pooled.url
        assert elapsed < 2.0, elapsed
        assert pool.pooled(plain_image) == []  # taken out of the pool
        # The token minted at hand-out opens the server, nothing else does.
        assert (
            status_of(result.url + "api/status", {"Authorization": f"token {result.token}"}) == 200
        )
        assert status_of(result.url + f"api/status?token={result.token}") == 200
        assert status_of(result.url + "api/status") in (302, 401, 403)
        assert len(user_tokens(hub, result.user)) == 1

        # The pool refills with a new server under a new user.
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (refill,) = pool.pooled(plain_image)
        assert refill.user != result.user
        stats = {s.image: s for s in pool.stats()}[plain_image]
        assert stats.hits == 1 and stats.ready == 1
        # Closing the pool removes the servers still pooled.
        await pool.close()
        await wait_for(lambda: hub.user(refill.user) is None, 30, "pooled user removed on close")
    finally:
        await pool.close()
        for user in handed:
            hub.delete_user(user)


@run_async
async def test_concurrent_launches_never_share_a_server(hub: HubService, plain_image: str) -> None:
    request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/burst"], pool_size=2, total_cap=2)
    pool.start(preparer({"git/burst": request}))
    users: list[str] = []
    try:
        await pool.wait_until_ready(plain_image, 2, timeout=90)
        results = await asyncio.gather(*(launch(pool, request) for _ in range(4)))
        for result in results:
            assert isinstance(result, LaunchResult), result
            users.append(result.user)
        assert len(set(users)) == 4, users
        # Two from the pool; the two launches that found it empty waited for
        # the servers the pool started for them (wait_for_refill).
        warm = [r for r in results if isinstance(r, LaunchResult) and r.warm]
        assert len(warm) == 4, results
        first, second = warm[0], warm[-1]
        # Each token opens its own server only.
        own = {"Authorization": f"token {first.token}"}
        assert status_of(first.url + "api/status", own) == 200
        assert status_of(second.url + "api/status", own) == 403
    finally:
        await pool.close()
        for user in users:
            hub.delete_user(user)


@dataclass
class _Build:
    image_name: str
    state: BuildState = BuildState.SUCCEEDED


@run_async
async def test_rebuilt_image_is_drained_and_refilled(hub: HubService, plain_image: str) -> None:
    request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/rebuilt"], pool_size=1)
    pool.start(preparer({"git/rebuilt": request}))
    try:
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (old,) = pool.pooled(plain_image)
        pool.image_rebuilt(_Build(plain_image))  # a BuildManager on_finished hook
        assert old not in pool.pooled(plain_image)
        await wait_for(lambda: hub.user(old.user) is None, 30, "drained user removed")
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (new,) = pool.pooled(plain_image)
        assert new.user != old.user
        # A failed build does not drain anything.
        pool.image_rebuilt(_Build(plain_image, BuildState.FAILED))
        assert pool.pooled(plain_image) == [new]
    finally:
        await pool.close()


@run_async
async def test_cold_when_the_pool_is_empty_or_the_hub_refuses(
    hub: HubService, plain_image: str
) -> None:
    request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/cold"], pool_size=1)
    users: list[str] = []
    try:
        # Not started yet: the pool is empty, the launch is an ordinary cold one.
        result = await launch(pool, request)
        assert isinstance(result, LaunchResult) and not result.warm, result
        users.append(result.user)
        pool.start(preparer({"git/cold": request}))
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (pooled,) = pool.pooled(plain_image)
        # The hub loses the pooled user (an operator, a culler): minting the
        # token at hand-out is refused, the launch falls back to a cold one.
        hub.delete_user(pooled.user)
        result = await launch(pool, request)
        assert isinstance(result, LaunchResult), result
        users.append(result.user)
        assert not result.warm
        assert result.user != pooled.user
        assert (
            status_of(result.url + "api/status", {"Authorization": f"token {result.token}"}) == 200
        )
        stats = {s.image: s for s in pool.stats()}[plain_image]
        # (The first launch came before the pool existed: not a miss.)
        assert (stats.hits, stats.misses) == (0, 1)
    finally:
        await pool.close()
        for user in users:
            hub.delete_user(user)


@run_async
async def test_broken_image_backs_off_and_reports_without_failing_launches(
    hub: HubService, plain_image: str, make_image: Callable[..., str]
) -> None:
    broken = make_image(['CMD ["sh", "-c", "echo broken pool image; exit 3"]'], "broken")
    broken_request = fake_request(broken)
    good_request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/broken", "git/good"], pool_size=1, backoff_initial=30)
    pool.start(preparer({"git/broken": broken_request, "git/good": good_request}))
    users: list[str] = []
    try:
        await wait_for(
            lambda: any(s.image == broken and s.failures >= 1 for s in pool.stats()),
            60,
            "a failed pool start",
        )
        health = await pool.health()
        assert health["ok"] is False
        (entry,) = [p for p in health["pools"] if p["image"] == broken]
        assert entry["backing_off"] is True
        assert "exited with status 3" in entry["last_error"], entry
        # Backing off: no new attempt for now.
        failures = entry["failures"]
        await asyncio.sleep(2)
        assert {s.image: s for s in pool.stats()}[broken].failures == failures
        # A launch of the broken image is a cold one, failing with the real reason.
        result = await launch(pool, broken_request)
        assert isinstance(result, BinderBuildError), result
        assert "exited with status 3" in result.message
        # The other image's pool is unaffected.
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        good = await launch(pool, good_request)
        assert isinstance(good, LaunchResult) and good.warm, good
        users.append(good.user)
    finally:
        await pool.close()
        for user in users:
            hub.delete_user(user)


@run_async
async def test_pooled_servers_report_activity_so_the_culler_keeps_them(
    hub: HubService, plain_image: str
) -> None:
    request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/active"], pool_size=1, activity_interval=1.0)
    pool.start(preparer({"git/active": request}))
    try:
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (pooled,) = pool.pooled(plain_image)

        def last_activity() -> str:
            model = hub.user(pooled.user)
            assert model is not None
            return str(model["servers"][""]["last_activity"])

        first = last_activity()
        await wait_for(lambda: last_activity() > first, 10, "activity reported")
    finally:
        await pool.close()


@run_async
async def test_old_pooled_servers_are_replaced(hub: HubService, plain_image: str) -> None:
    request = fake_request(plain_image)
    pool = make_pool(hub, images=["git/aged"], pool_size=1, max_idle_age=3.0)
    pool.start(preparer({"git/aged": request}))
    try:
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        (old,) = pool.pooled(plain_image)
        await wait_for(lambda: hub.user(old.user) is None, 30, "aged server removed")
        await pool.wait_until_ready(plain_image, 1, timeout=60)
        assert pool.pooled(plain_image)[0].user != old.user
    finally:
        await pool.close()
