"""Signed-in Binder (issue 13): named servers that come back with their files,
the servers-per-user limit, storage/memory/CPU limits and profiles, against a
real JupyterHub (its own API and spawner), the Docker engine and loop-mounted
ext4 storage made by BinderDockerSpawner."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
from escapism import escape  # type: ignore[import-untyped]

from binderbuild.errors import LaunchFailed, QuotaExceeded
from binderbuild.http import HttpClient
from binderbuild.hub import HubLauncher, HubSettings, server_name_for_repo
from binderbuild.models import LaunchRequest, LaunchResult
from binderbuild.spawner import storage_key
from tests.hub.conftest import _start, fake_request, make_launcher, run_async, run_launch
from tests.hub.test_spawner import eventually, status_of
from tests.hubservice import HubService

STORAGE_LIMIT = "64M"
PROFILES = [
    {"name": "small", "cpu_limit": 0.5, "mem_limit": "256M", "default": True},
    {"name": "large", "cpu_limit": 1, "mem_limit": "512M", "storage_limit": "96M"},
]
PASSWORD = "persist-" + secrets.token_hex(8)
SIGNED_IN_EXTRA = f"""
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.BinderSpawnerMixin.storage_limit = {STORAGE_LIMIT!r}
c.BinderSpawnerMixin.profiles = {PROFILES!r}
"""


@pytest.fixture(scope="module")
def auth_hub(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[HubService]:
    """A signed-in hub with persistent storage, a storage limit and profiles."""
    service = _start(tmp_path_factory.mktemp("authhub"), auth_enabled=True, extra=SIGNED_IN_EXTRA)
    yield service
    service.stop()
    for _ in range(5):  # a container going meanwhile makes the engine's list 404
        try:
            service.remove_containers(docker_client)
            break
        except docker.errors.NotFound:
            continue
    _unmount_all(service.workdir / "storage")


def _unmount_all(storage: Path) -> None:
    import subprocess

    if storage.exists():
        for child in storage.iterdir():
            if child.is_dir() and child.is_mount():
                subprocess.run(["umount", str(child)], check=False)


@pytest.fixture(scope="module")
def repo_images(
    make_image: Callable[..., str],
) -> tuple[str, str]:
    """Two builds of one repository: the second changes a file and adds one."""
    first = make_image(
        [
            "RUN echo 'repository v1' > /home/jovyan/README.md",
            "RUN mkdir -p /home/jovyan/data && echo 42 > /home/jovyan/data/answer.txt",
        ],
        "persist1",
    )
    second = make_image(
        [
            "RUN echo 'repository v2' > /home/jovyan/README.md",
            "RUN mkdir -p /home/jovyan/data && echo 42 > /home/jovyan/data/answer.txt",
            "RUN echo new > /home/jovyan/NEW.md",
        ],
        "persist2",
    )
    return first, second


# The container's own cgroup limits, cgroup v2 or v1 ("quota period").
CPU_MAX = (
    "cat /sys/fs/cgroup/cpu.max 2>/dev/null || echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
    " $(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)"
)
MEMORY_MAX = (
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
)


def new_user(hub: HubService) -> str:
    user = f"u{secrets.token_hex(4)}"
    assert hub.api("POST", f"users/{user}")[0] == 201
    return user


def signed_in_launcher(hub: HubService, limit: int = 0) -> HubLauncher:
    return make_launcher(
        hub, auth_enabled=True, use_named_servers=True, named_server_limit_per_user=limit
    )


def container_of(hub: HubService, docker_client: Any, user: str, server: str) -> Any:
    user_part, server_part = (escape(n, escape_char="-").lower() for n in (user, server))
    wanted = f"{hub.container_prefix}-{user_part}--{server_part}"
    running = [c for c in hub.containers(docker_client, all=False) if c.name == wanted]
    assert len(running) == 1, [c.name for c in hub.containers(docker_client)]
    return running[0]


def remove_user(hub: HubService, user: str) -> None:
    """Delete the user and each named server (the hub refuses to delete a user
    whose named server is running)."""
    status, model = hub.api("GET", f"users/{user}?include_stopped_servers=1")
    for name in (model or {}).get("servers") or {} if status == 200 else {}:
        if name:
            hub.api("DELETE", f"users/{user}/servers/{name}", {"remove": True})
    hub.delete_user(user)


def storage_of(hub: HubService, user: str, server: str) -> Path:
    """The storage directory of a server (its mount point, with storage_limit)."""
    return hub.workdir / "storage" / storage_key(user, server)


def sh(container: Any, script: str) -> tuple[int, str]:
    code, out = container.exec_run(["sh", "-c", script], user="1000:1000")
    return int(code), out.decode(errors="replace")


def stop_server(hub: HubService, user: str, server: str) -> None:
    status, body = hub.api("DELETE", f"users/{user}/servers/{server}")
    assert status in (202, 204), (status, body)


def server_model(hub: HubService, user: str, server: str) -> dict[str, Any] | None:
    status, model = hub.api("GET", f"users/{user}?include_stopped_servers=1")
    assert status == 200, model
    found = (model.get("servers") or {}).get(server)
    return found if isinstance(found, dict) else None


def is_stopped(hub: HubService, user: str, server: str) -> bool:
    model = server_model(hub, user, server)
    return model is not None and bool(model.get("stopped"))


class AskingLauncher(HubLauncher):
    """A launcher whose user_options ask for more resources."""

    def __init__(self, hub: HubService, extra: dict[str, Any]) -> None:
        settings = HubSettings(
            hub_url=hub.url,
            hub_url_local=hub.local_url,
            hub_api_token=hub.token,
            auth_enabled=True,
            use_named_servers=True,
        )
        super().__init__(http=HttpClient(), settings=settings, retry_delay=0.2)
        self._extra = extra

    def user_options(self, request: LaunchRequest, token: str | None) -> dict[str, Any]:
        return {**super().user_options(request, token), **self._extra}


async def launch(launcher: HubLauncher, request: LaunchRequest) -> LaunchResult:
    _, result = await run_launch(launcher, request)
    assert isinstance(result, LaunchResult), result
    return result


@run_async
async def test_named_server_comes_back_with_its_files_and_the_repository(
    auth_hub: HubService, repo_images: tuple[str, str], docker_client: Any
) -> None:
    hub = auth_hub
    first_image, second_image = repo_images
    user = new_user(hub)
    repo_url = f"https://git.example.org/team/analysis-{secrets.token_hex(2)}.git"
    name = server_name_for_repo(repo_url)
    launcher = signed_in_launcher(hub)
    try:
        result = await launch(launcher, fake_request(first_image, repo_url, user))
        assert result.server_name == name
        box = container_of(hub, docker_client, user, name)
        # The repository's files are in the home directory, now on the storage.
        assert sh(box, "cat ~/README.md ~/data/answer.txt")[1].split() == ["repository", "v1", "42"]
        assert sh(box, "echo mine > ~/mine.txt && echo edited > ~/README.md")[0] == 0

        # Launching the same repository again resumes the running server.
        again = await launch(launcher, fake_request(first_image, repo_url, user))
        assert again.url == result.url
        assert container_of(hub, docker_client, user, name).id == box.id

        # Stopped (as from the hub's home page): kept, its container gone.
        await asyncio.to_thread(stop_server, hub, user, name)
        await eventually(lambda: is_stopped(hub, user, name), 30, "the server to stop")
        assert not [c for c in hub.containers(docker_client) if name in c.name]
        assert not storage_of(hub, user, name).is_mount()

        # Started again through the hub's API (what its home page does).
        status, body = hub.api("POST", f"users/{user}/servers/{name}", {"image": first_image})
        assert status in (201, 202), body
        await eventually(
            lambda: (server_model(hub, user, name) or {}).get("ready"), 60, "the restart"
        )
        box = container_of(hub, docker_client, user, name)
        assert sh(box, "cat ~/mine.txt ~/README.md ~/data/answer.txt")[1].split() == [
            "mine",
            "edited",
            "42",
        ]

        # A new build of the repository: the running server restarts with it;
        # the user's files and edits stay, the repository's new file appears.
        rebuilt = await launch(launcher, fake_request(second_image, repo_url, user))
        assert rebuilt.server_name == name
        box = container_of(hub, docker_client, user, name)
        assert box.attrs["Config"]["Image"] == second_image
        assert sh(box, "cat ~/mine.txt ~/README.md ~/NEW.md")[1].split() == [
            "mine",
            "edited",
            "new",
        ]
        token = {"Authorization": f"token {rebuilt.token}"}
        assert await asyncio.to_thread(status_of, rebuilt.url + "api/status", token) == 200
    finally:
        await launcher.close()
        await asyncio.to_thread(hub.api, "DELETE", f"users/{user}/servers/{name}", {"remove": True})
    # Deleting the server (not stopping it) deletes its storage.
    await eventually(
        lambda: not Path(f"{storage_of(hub, user, name)}.ext4").exists(),
        30,
        "the deleted server's storage to go",
    )


@run_async
async def test_servers_per_user_limit_counts_running_servers(
    auth_hub: HubService, repo_images: tuple[str, str]
) -> None:
    hub = auth_hub
    user = new_user(hub)
    launcher = signed_in_launcher(hub, limit=1)
    one = fake_request(
        repo_images[0], f"https://git.example.org/a/one-{secrets.token_hex(2)}", user
    )
    two = fake_request(
        repo_images[0], f"https://git.example.org/a/two-{secrets.token_hex(2)}", user
    )
    try:
        first = await launch(launcher, one)
        _, refused = await run_launch(launcher, two)
        assert isinstance(refused, QuotaExceeded), refused
        assert "already has 1 of at most 1 servers running" in refused.message
        assert "Stop one before launching another" in refused.message
        # Stopping the first lets the next launch through; the first is kept.
        await asyncio.to_thread(stop_server, hub, user, first.server_name)
        await eventually(lambda: is_stopped(hub, user, first.server_name), 30, "the stop")
        second = await launch(launcher, two)
        assert second.server_name != first.server_name
        assert is_stopped(hub, user, first.server_name)
    finally:
        await launcher.close()
        await asyncio.to_thread(remove_user, hub, user)


@run_async
async def test_storage_memory_and_cpu_limits_are_enforced(
    auth_hub: HubService, repo_images: tuple[str, str], docker_client: Any
) -> None:
    hub = auth_hub
    user = new_user(hub)
    launcher = signed_in_launcher(hub)
    try:
        result = await launch(launcher, fake_request(repo_images[0], None, user))
        box = container_of(hub, docker_client, user, result.server_name)
        # CPU: the default profile's 0.5 CPU, in the container's own cgroup.
        assert sh(box, CPU_MAX)[1].split() == ["50000", "100000"]
        # Memory: 256M; a process allocating more is killed by the kernel,
        # the server itself keeps running.
        assert sh(box, MEMORY_MAX)[1].strip() == str(256 * 1024**2)
        code, _ = sh(box, "python3 -c 'b = bytearray(400 * 1024 * 1024); print(len(b))'")
        assert code == 137, code  # SIGKILL from the kernel's OOM killer
        box.reload()
        assert box.status == "running"
        token = {"Authorization": f"token {result.token}"}
        assert await asyncio.to_thread(status_of, result.url + "api/status", token) == 200
        # Storage: 64M; writing past it fails.
        code, out = sh(box, "dd if=/dev/zero of=$HOME/big bs=1M count=100 2>&1")
        assert code != 0 and "No space left on device" in out, out
        assert sh(box, "rm $HOME/big && echo ok > $HOME/small && cat $HOME/small")[1] == "ok\n"
    finally:
        await launcher.close()
        await asyncio.to_thread(remove_user, hub, user)


@run_async
async def test_spawner_refuses_more_than_a_profile_allows(
    auth_hub: HubService, repo_images: tuple[str, str], docker_client: Any
) -> None:
    hub = auth_hub
    user = new_user(hub)
    launcher = signed_in_launcher(hub)
    base = fake_request(repo_images[0], None, user)
    try:
        for profile, extra, message in [
            ("huge", {}, "Profile 'huge' does not exist on this hub (profiles: small, large)"),
            ("small", {"cpu_limit": 2}, "cpu_limit 2 refused: profile 'small' allows at most 0.5"),
            ("large", {"mem_limit": "1G"}, "mem_limit 1G refused: profile 'large' allows at most"),
        ]:
            # Asking for more than the profile in user_options, as any client
            # of the hub's API could: the spawner is what refuses.
            asking = AskingLauncher(hub, extra)
            try:
                request = dataclasses.replace(base, profile=profile)
                _, refused = await run_launch(asking, request)
            finally:
                await asking.close()
            assert isinstance(refused, LaunchFailed), refused
            assert message in refused.message, refused.message
        # Through binderbuild: the picked profile is sent and honoured.
        large = await launch(launcher, dataclasses.replace(base, profile="large"))
        box = container_of(hub, docker_client, user, large.server_name)
        assert sh(box, CPU_MAX)[1].split() == ["100000", "100000"]
        assert sh(box, "df -k --output=size $HOME | tail -1")[1].strip() != ""
    finally:
        await launcher.close()
        await asyncio.to_thread(remove_user, hub, user)


@run_async
async def test_culler_stops_idle_named_servers_of_signed_in_users_and_keeps_them(
    start_hub: Callable[..., HubService], repo_images: tuple[str, str], docker_client: Any
) -> None:
    hub = await asyncio.to_thread(
        start_hub, auth_enabled=True, cull_timeout=4, cull_every=1, extra=SIGNED_IN_EXTRA
    )
    user = new_user(hub)
    launcher = signed_in_launcher(hub)
    request = fake_request(repo_images[0], None, user)
    try:
        result = await launch(launcher, request)
        name = result.server_name
        box = container_of(hub, docker_client, user, name)
        assert sh(box, "echo kept > ~/kept.txt")[0] == 0
        await eventually(lambda: is_stopped(hub, user, name), 60, "the culler to stop it")
        # Stopped, not deleted: the user and the server are there, and so is
        # the storage; launching the repository again brings the file back.
        assert server_model(hub, user, name) is not None
        assert Path(f"{storage_of(hub, user, name)}.ext4").exists()
        back = await launch(launcher, request)
        assert back.server_name == name
        box = container_of(hub, docker_client, user, name)
        assert sh(box, "cat ~/kept.txt")[1] == "kept\n"
    finally:
        await launcher.close()
        await asyncio.to_thread(remove_user, hub, user)
        _unmount_all(hub.workdir / "storage")


@run_async
async def test_failed_launch_keeps_the_users_stopped_server_and_its_files(
    auth_hub: HubService,
    repo_images: tuple[str, str],
    make_image: Callable[..., str],
    docker_client: Any,
) -> None:
    hub = auth_hub
    user = new_user(hub)
    repo_url = f"https://git.example.org/team/keep-{secrets.token_hex(2)}"
    launcher = signed_in_launcher(hub)
    broken = make_image(['CMD ["sh", "-c", "echo broken build; exit 3"]'], "broken")
    try:
        first = await launch(launcher, fake_request(repo_images[0], repo_url, user))
        name = first.server_name
        box = container_of(hub, docker_client, user, name)
        assert sh(box, "echo precious > ~/precious.txt")[0] == 0
        await asyncio.to_thread(stop_server, hub, user, name)
        await eventually(lambda: is_stopped(hub, user, name), 30, "the stop")
        # A new build of the repository that does not start: the launch
        # fails with the reason, and the user's server is stopped, not deleted.
        _, failed = await run_launch(launcher, fake_request(broken, repo_url, user))
        assert isinstance(failed, LaunchFailed), failed
        assert "exited with status 3" in failed.message, failed.message
        await launcher.close()  # waits for the failed launch's cleanup
        assert is_stopped(hub, user, name)
        assert Path(f"{storage_of(hub, user, name)}.ext4").exists()
        launcher = signed_in_launcher(hub)
        again = await launch(launcher, fake_request(repo_images[0], repo_url, user))
        box = container_of(hub, docker_client, user, again.server_name)
        assert sh(box, "cat ~/precious.txt")[1] == "precious\n"
    finally:
        await launcher.close()
        await asyncio.to_thread(remove_user, hub, user)
