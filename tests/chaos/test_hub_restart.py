"""The hub restarted while a server is starting.

A hub that stops cancels its pending spawns. The launch asks for the server
again (once, within its deadline) and ends ``ready`` on a server that is
really up, or ``failed`` with a reason a person can read; never "None".
Servers that were running before the restart keep running.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from binderbuild.errors import BinderBuildError
from binderbuild.models import LaunchResult
from tests.hub.conftest import fake_request, make_launcher, run_async, run_launch
from tests.hub.test_spawner import eventually, status_of
from tests.hubservice import HubService

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def _server(hub: HubService, user: str) -> dict[str, Any]:
    model = hub.user(user) or {}
    servers: dict[str, Any] = model.get("servers") or {}
    return servers.get("") or {}


@run_async
async def test_hub_restarted_during_spawn(
    hub_keeping_servers: HubService, plain_image: str, slow_image: str, docker_client: Any
) -> None:
    hub = hub_keeping_servers
    launcher = make_launcher(
        hub, launch_timeout=120.0, hub_unresponsive_timeout=20.0, retry_delay=0.5
    )
    try:
        # A server running before the restart, which must survive it.
        _, running = await run_launch(launcher, fake_request(plain_image))
        assert isinstance(running, LaunchResult), running

        outcome: list[Any] = []
        messages: list[str] = []
        spawning = asyncio.Event()

        async def launch() -> None:
            try:
                async for item in launcher.launch(fake_request(slow_image)):
                    if isinstance(item, LaunchResult):
                        outcome.append(item)
                        return
                    messages.append(item.message)
                    if "container" in item.message.lower():
                        spawning.set()
            except BinderBuildError as exc:
                outcome.append(exc)

        task = asyncio.ensure_future(launch())
        await asyncio.wait_for(spawning.wait(), 30)
        await asyncio.to_thread(hub.stop)
        await asyncio.to_thread(hub.start)
        await asyncio.wait_for(task, 150)

        assert outcome, messages
        result = outcome[0]
        if isinstance(result, LaunchResult):
            # ready means ready: the hub says so, and the server answers.
            server = _server(hub, result.user)
            assert server.get("ready") and not server.get("pending"), server
            assert status_of(f"{result.url}api/status?token={result.token}") == 200
        else:
            assert "None" not in result.message, result.message
            assert "JupyterHub" in result.message or "server" in result.message, result.message
        # The launch asked for its server at most twice (the retry after the
        # restart), never a pile.
        starts = [ln for ln in hub.log().splitlines() if "POST /hub/api/users/" in ln]
        assert len([ln for ln in starts if "/server" in ln]) <= 3, starts

        # The server from before the restart still answers.
        assert status_of(f"{running.url}api/status?token={running.token}") == 200
    finally:
        await launcher.close()
        for name in list(hub.users()):
            await asyncio.to_thread(hub.delete_user, name)
        await eventually(lambda: not hub.containers(docker_client), 40, "no containers")
