"""A hub that accepts connections and answers nothing (SIGSTOP).

The launch fails within HubLauncher.hub_unresponsive_timeout, saying the hub
did not answer; once the hub resumes, it executes no pile of queued
duplicate requests, and the launch's cleanup wins: nothing is left.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from binderbuild.errors import HubError
from binderbuild.models import LaunchResult
from tests.chaos.conftest import frozen, hub_requests
from tests.hub.conftest import fake_request, make_launcher, run_async, run_launch
from tests.hub.test_spawner import eventually
from tests.hubservice import HubService

pytestmark = [pytest.mark.hub, pytest.mark.docker]

UNRESPONSIVE = 8.0
SLACK = 7.0  # generous: two busy cores, other tests running


def _launcher(hub: HubService) -> Any:
    return make_launcher(
        hub,
        hub_unresponsive_timeout=UNRESPONSIVE,
        launch_timeout=120.0,
        retry_delay=0.5,
        retry_delay_max=2.0,
    )


async def _nothing_left(hub: HubService, docker_client: Any) -> None:
    await eventually(
        lambda: not hub.users() and not hub.containers(docker_client),
        40,
        "no temporary user and no container",
    )
    # Deterministic, not lucky: nothing queued re-creates it a moment later.
    await asyncio.sleep(3)
    assert not hub.users(), hub.users()
    assert not hub.containers(docker_client)


@run_async
async def test_hub_hung_before_launch(hub_keeping_servers: HubService, docker_client: Any) -> None:
    hub = hub_keeping_servers
    launcher = _launcher(hub)
    try:
        with frozen(hub):
            started = time.monotonic()
            _, outcome = await run_launch(launcher, fake_request("bbtest-local-unused:1"))
            elapsed = time.monotonic() - started
        assert isinstance(outcome, HubError), outcome
        assert "did not answer" in outcome.message, outcome.message
        assert elapsed <= UNRESPONSIVE + SLACK, elapsed
        await _nothing_left(hub, docker_client)
        created = hub_requests(hub, "POST", r"users/[^/\s?]+")
        assert len(created) == 1, created  # one request, not one per retry
        assert not hub_requests(hub, "POST", r"users/[^/\s?]+/server")
    finally:
        await launcher.close()


@run_async
async def test_hub_hung_during_spawn(
    hub_keeping_servers: HubService, slow_image: str, docker_client: Any
) -> None:
    hub = hub_keeping_servers
    launcher = _launcher(hub)
    outcome: list[Any] = []
    spawning = asyncio.Event()

    async def launch() -> None:
        try:
            async for item in launcher.launch(fake_request(slow_image)):
                if isinstance(item, LaunchResult):
                    outcome.append(item)
                    return
                if "container" in item.message.lower():
                    spawning.set()
        except Exception as exc:
            outcome.append(exc)

    try:
        task = asyncio.ensure_future(launch())
        await asyncio.wait_for(spawning.wait(), 30)
        with frozen(hub):
            started = time.monotonic()
            await asyncio.wait_for(task, 60)
            elapsed = time.monotonic() - started
        assert outcome and isinstance(outcome[0], HubError), outcome
        assert "did not answer" in outcome[0].message, outcome[0].message
        assert elapsed <= UNRESPONSIVE + SLACK, elapsed
        await _nothing_left(hub, docker_client)
        starts = hub_requests(hub, "POST", r"users/[^/\s?]+/server")
        assert len(starts) == 1, starts
    finally:
        await launcher.close()
