"""Launch quotas: the hub-API counter against the real hub, and the bookkeeping rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binderbuild.errors import HubError, QuotaExceeded
from binderbuild.http import HttpClient
from binderbuild.hub_client import HubClient
from binderbuild.models import LaunchResult
from binderbuild.quota import HubServerCounter, LaunchQuota
from tests.hub.conftest import fake_request, make_launcher, run_async, run_launch
from tests.hubservice import HubService


@pytest.mark.hub
@pytest.mark.docker
@run_async
async def test_hub_counter_counts_per_repo_with_a_short_lived_cache(
    hub: HubService, plain_image: str
) -> None:
    launcher = make_launcher(hub)
    repos = ["git://127.0.0.1:9/quota-a.git", "git://127.0.0.1:9/quota-b.git"]
    results: list[LaunchResult] = []
    http = HttpClient()
    try:
        for repo in repos:
            _, result = await run_launch(launcher, fake_request(plain_image, repo_url=repo))
            assert isinstance(result, LaunchResult), result
            results.append(result)
        client = HubClient(http, hub.api_url, hub.token)
        # page_size=1: every user is its own page, so pagination is exercised.
        counter = HubServerCounter(client.get_json, cache_ttl=60, page_size=1)
        total = await counter.count()
        assert total >= 2
        assert await counter.count(repos[0]) == 1
        assert await counter.count(repos[1]) == 1
        assert await counter.count("git://127.0.0.1:9/nobody.git") == 0
        # Servers of launches still in flight are not counted twice.
        assert await counter.count(repos[0], exclude=frozenset({f"{results[0].user}/"})) == 0
        # All of that was one listing of the hub.
        assert counter.refreshes == 1
        # A server stopped: visible once the cache is refreshed.
        await asyncio.to_thread(hub.delete_user, results[0].user)
        assert await counter.count(repos[0]) == 1  # cached
        counter.invalidate()
        assert await counter.count(repos[0]) == 0
        assert counter.refreshes == 2
    finally:
        await launcher.close()
        http.close()
        for result in results:
            await asyncio.to_thread(hub.delete_user, result.user)


@pytest.mark.hub
@run_async
async def test_hub_counter_down_is_an_error_not_zero() -> None:
    http = HttpClient()
    try:
        client = HubClient(http, "http://127.0.0.1:9/hub/api/", "x" * 32)
        client.retry = client.retry.__class__(attempts=2, delay=0.05)
        quota = LaunchQuota(HubServerCounter(client.get_json), total_quota=10)
        with pytest.raises(HubError, match="not reachable"):
            await quota.check_and_reserve("r", 0, "u/")
    finally:
        http.close()


class Counter:
    """A counter like a deployment's own (sync, with start/close)."""

    def __init__(self, running: dict[str, int]) -> None:
        self.running = running
        self.started = 0
        self.closed = False

    async def start(self) -> None:
        self.started += 1

    async def close(self) -> None:
        self.closed = True

    def count(self, repo_url: str | None = None) -> int:
        if repo_url is None:
            return sum(self.running.values())
        return self.running.get(repo_url, 0)


@run_async
async def test_quota_limits_and_in_flight_bookkeeping() -> None:
    counter = Counter({"a": 1, "b": 1})
    quota = LaunchQuota(counter, total_quota=5)
    first = await quota.check_and_reserve("a", 3, "u1/")
    assert counter.started == 1
    second = await quota.check_and_reserve("a", 3, "u2/")
    # Running 1 + two in flight: the per-repository limit of 3 is reached.
    with pytest.raises(QuotaExceeded, match="Too many users are running a"):
        await quota.check_and_reserve("a", 3, "u3/")
    other = await quota.check_and_reserve("c", 0, "u4/")
    # 2 running + 3 in flight: the total is reached.
    with pytest.raises(QuotaExceeded, match="This Binder is full: 5 of 5"):
        await quota.check_and_reserve("d", 0, "u5/")
    first.failed()
    other.failed()
    second.succeeded()
    counter.running["a"] = 2  # the counter now sees the second server
    third = await quota.check_and_reserve("a", 3, "u6/")
    third.failed()
    third.failed()  # idempotent
    assert quota.inflight() == []
    await quota.close()
    assert counter.closed and counter.started == 1


@run_async
async def test_concurrent_checks_never_share_the_last_place() -> None:
    class SlowCounter(Counter):
        async def count(self, repo_url: str | None = None) -> int:  # type: ignore[override]
            await asyncio.sleep(0.01)
            return 0

    quota = LaunchQuota(SlowCounter({}), total_quota=None)
    outcomes = await asyncio.gather(
        *(quota.check_and_reserve("a", 1, f"u{i}/") for i in range(5)), return_exceptions=True
    )
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(admitted) == 1 and len(refused) == 4


@run_async
async def test_total_quota_zero_means_no_launches() -> None:
    quota = LaunchQuota(Counter({}), total_quota=0)
    with pytest.raises(QuotaExceeded, match="full"):
        await quota.check_and_reserve("a", 0, "u/")


def test_counter_failures_become_binderbuild_errors() -> None:
    class Broken(Counter):
        def count(self, repo_url: str | None = None) -> int:
            raise RuntimeError("watch not started")

    async def main() -> Any:
        return await LaunchQuota(Broken({}), total_quota=1).check_and_reserve("a", 0, "u/")

    with pytest.raises(HubError, match="watch not started"):
        asyncio.run(main())
