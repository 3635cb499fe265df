"""The hub side and the launcher's failure paths, against the real hub and engine.

No repo2docker build here: images are made directly on the engine from the
notebook base (see conftest.make_image), so these tests take seconds each.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest

from binderbuild.errors import HubError, LaunchFailed, LaunchTimeout, QuotaExceeded
from binderbuild.models import LaunchRequest, LaunchResult
from tests.hub.conftest import (
    NOTEBOOK_BASE_IMAGE,
    fake_request,
    make_launcher,
    run_async,
    run_launch,
)
from tests.hubservice import _OPENER, HubService

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def eventually(check: Any, timeout: float, what: str) -> None:
    """wait_until in a thread, so that the launcher's tasks keep running."""
    await asyncio.to_thread(wait_until, check, timeout, what)


async def temporary_user_gone(hub: HubService, before: set[str]) -> None:
    await eventually(lambda: set(hub.users()) <= before, 30, "the temporary user to go")


def container_names(hub: HubService, docker_client: Any) -> set[str]:
    return {c.name for c in hub.containers(docker_client)}


async def launch_once(
    hub: HubService, request: LaunchRequest, **options: Any
) -> tuple[list[Any], Any]:
    """One launch on a fresh launcher, closed after it (close() waits for the
    launcher's own cleanup); returns what run_launch returns."""
    launcher = make_launcher(hub, **options)
    try:
        return await run_launch(launcher, request)
    finally:
        await launcher.close()


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=20) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_spawner_refuses_image_outside_prefix(hub: HubService, docker_client: Any) -> None:
    # Straight through the hub's API, as any holder of a service token could.
    name = f"refused-{int(time.time() * 1000) % 10**8}"
    containers_before = container_names(hub, docker_client)
    assert hub.api("POST", f"users/{name}")[0] == 201
    status, _ = hub.api(
        "POST", f"users/{name}/server", {"image": NOTEBOOK_BASE_IMAGE, "token": "x" * 40}
    )
    assert status in (201, 202, 400, 403, 500), status

    def stopped() -> bool:
        server = (hub.user(name) or {}).get("servers", {}).get("")
        return server is None or not server.get("pending")

    wait_until(stopped, 30, "the refused spawn to end")
    server = hub.user(name)["servers"].get("")
    assert server is None or not server.get("ready")
    # The refusal is the hub's answer on its progress stream.
    status, body = hub.api("GET", f"users/{name}/server/progress")
    text = json.dumps(body)
    assert "is not allowed on this hub" in text, text
    assert "bbtest-local-" in text
    # Refused before any container was made.
    assert container_names(hub, docker_client) == containers_before
    hub.delete_user(name)


@run_async
async def test_launcher_reports_refusal_and_cleans_up(hub: HubService, docker_client: Any) -> None:
    before = set(hub.users())
    _, outcome = await launch_once(hub, fake_request(NOTEBOOK_BASE_IMAGE))
    assert isinstance(outcome, LaunchFailed), outcome
    assert "is not allowed on this hub" in outcome.message
    assert "Launch attempt" not in outcome.message
    # close() waited for the cleanup: the temporary user is gone again.
    await temporary_user_gone(hub, before)


@run_async
async def test_spawn_failure_reports_the_servers_reason(
    hub: HubService, make_image: Any, docker_client: Any
) -> None:
    image = await asyncio.to_thread(
        make_image,
        ['CMD ["sh", "-c", "echo cannot-start-$((6*7)) >&2; exit 3"]'],
        "broken",
    )
    before = set(hub.users())
    containers_before = container_names(hub, docker_client)
    messages, outcome = await launch_once(hub, fake_request(image))
    assert isinstance(outcome, LaunchFailed), outcome
    assert "exited with status 3" in outcome.message, outcome.message
    assert "cannot-start-42" in outcome.message, outcome.message
    # The spawner's own progress reached the client as launching events.
    assert any("Starting a container" in m.message for m in messages), messages
    await temporary_user_gone(hub, before)
    # The crashed server's container (kept for its exit status) is gone too.
    await eventually(
        lambda: container_names(hub, docker_client) <= containers_before,
        30,
        "the crashed container to be removed",
    )


@run_async
async def test_missing_image_reports_the_reason(hub: HubService) -> None:
    _, outcome = await launch_once(hub, fake_request("bbtest-local-does-not-exist:nope"))
    assert isinstance(outcome, LaunchFailed), outcome
    assert "is not on this Docker engine" in outcome.message, outcome.message


@run_async
async def test_client_leaving_mid_launch_leaves_nothing(
    hub: HubService, slow_image: str, docker_client: Any
) -> None:
    users_before = set(hub.users())
    containers_before = len(hub.containers(docker_client))
    launcher = make_launcher(hub)
    launch = launcher.launch(fake_request(slow_image))
    try:
        async for item in launch:
            if "container" in getattr(item, "message", "").lower():
                break
        started = set(hub.users()) - users_before
        assert len(started) == 1, started
    finally:
        await launch.aclose()  # the client went away
    await eventually(
        lambda: (
            set(hub.users()) <= users_before
            and len(hub.containers(docker_client)) == containers_before
        ),
        40,
        "the abandoned launch to be cleaned up",
    )
    await launcher.close()


@run_async
async def test_hub_stopped_during_launch(
    start_hub: Any, slow_image: str, docker_client: Any
) -> None:
    image = slow_image
    hub: HubService = await asyncio.to_thread(start_hub)
    timeout = 15.0
    launcher = make_launcher(hub, launch_timeout=timeout, retry_delay=0.5, retry_delay_max=2.0)
    request = fake_request(image)
    got_hub_message = asyncio.Event()
    outcome: list[Any] = []

    async def launch() -> None:
        try:
            async for item in launcher.launch(request):
                if isinstance(item, LaunchResult):
                    outcome.append(item)
                    return
                if "container" in item.message.lower():
                    got_hub_message.set()
        except Exception as exc:
            outcome.append(exc)

    started = time.monotonic()
    task = asyncio.ensure_future(launch())
    await asyncio.wait_for(got_hub_message.wait(), 30)
    await asyncio.to_thread(hub.stop)
    await asyncio.wait_for(task, timeout + 10)
    elapsed = time.monotonic() - started
    assert outcome and isinstance(outcome[0], HubError | LaunchFailed | LaunchTimeout), outcome
    message = outcome[0].message
    assert "JupyterHub" in message or "did not start" in message, message
    assert elapsed <= timeout + 3, elapsed

    # The hub comes back: binderbuild's cleanup removes the temporary user,
    # and nothing of the launch is left on the engine.
    await asyncio.to_thread(hub.start)
    try:
        await eventually(
            lambda: not hub.users() and not hub.containers(docker_client),
            40,
            "no temporary user and no container",
        )
    finally:
        await launcher.close()


@run_async
async def test_named_servers_with_per_user_limit(hub: HubService, plain_image: str) -> None:
    user = f"carol{int(time.time() * 1000) % 10**8}"
    assert hub.api("POST", f"users/{user}")[0] == 201
    launcher = make_launcher(
        hub, auth_enabled=True, use_named_servers=True, named_server_limit_per_user=1
    )
    try:
        _, first = await run_launch(launcher, fake_request(plain_image, user=user))
        assert isinstance(first, LaunchResult), first
        assert first.user == user and first.server_name
        assert first.url.startswith(f"{hub.url}user/{user}/{first.server_name}")
        status = await asyncio.to_thread(
            status_of, first.url + "api/status", {"Authorization": f"token {first.token}"}
        )
        assert status == 200
        _, second = await run_launch(launcher, fake_request(plain_image, user=user))
        assert isinstance(second, QuotaExceeded), second
        assert "at most 1" in second.message
        servers = hub.user(user)["servers"]
        assert list(servers) == [first.server_name]
    finally:
        await launcher.close()
        await asyncio.to_thread(hub.delete_user, user)


@run_async
async def test_idle_culler_removes_idle_servers_and_users(
    start_hub: Any, plain_image: str, docker_client: Any
) -> None:
    hub: HubService = await asyncio.to_thread(start_hub, cull_timeout=4, cull_every=1)
    _, result = await launch_once(hub, fake_request(plain_image))
    assert isinstance(result, LaunchResult), result
    assert result.user in hub.users()
    await eventually(
        lambda: result.user not in hub.users() and not hub.containers(docker_client),
        60,
        "the culler to stop the idle server and delete its temporary user",
    )
