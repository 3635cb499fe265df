"""The build sandbox: repo2docker's fetch and detection in a locked container.

Whatever reads a stranger's repository (the content providers that write
files named by a remote API, buildpack detection that follows symlinks in
the checkout, Dockerfile rendering, assembling the build context) runs here,
in a container from the builder image (``images/builder``), never on the
host and never next to the Docker socket:

- an unprivileged uid:gid (``DockerBuilder.sandbox_uid``, default
  ``SANDBOX_UID`` = 1000), all capabilities dropped, ``no-new-privileges``, read-only
  root filesystem, a small ``/tmp`` tmpfs as ``HOME``, memory and PID limits;
- network ``none``: its only way out is the build's egress proxy, whose Unix
  socket is mounted read-only at ``/run/binderbuild/egress.sock`` and relayed
  to ``127.0.0.1:3128`` inside (``sandbox_entry``);
- one writable host mount, its own work directory at ``/work`` (checkout in
  ``/work/tmp``, output in ``/work/out``); no Docker socket, no registry
  credentials, none of the service's environment.

repo2docker runs with ``binderbuild_docker_api`` in export mode: instead of
building, it leaves the context and parameters in ``/work/out``, and the
trusted step (``trusted_build``) builds and pushes them. This module holds
the container's description as data (``container_args``) and the few
Engine API calls that run it.

The sandbox dies with the service: it is created with its stdin open for one
client (``StdinOnce``), the service attaches to that stdin before starting
it (``attach_lifeline``) and holds the connection for the build's lifetime.
When the service process dies, however it dies, the kernel closes the
connection, the engine closes the container's stdin, and ``sandbox_entry``
exits at once, taking repo2docker and its children with it (PID 1 of the
container). Its labels (``leftovers.container_labels``: owner token, image,
work directory) let the next start remove one that is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from binderbuild.builders import leftovers
from binderbuild.builders.sandbox_entry import (
    ENV_EGRESS_SOCKET,
    ENV_GIT_PROXY,
    ENV_LIFELINE,
    RELAY_HOST,
    RELAY_PORT,
)

WORK_DIR = "/work"
OUT_DIR = f"{WORK_DIR}/out"
# The checkout: on the work directory (disk), not the container's tmpfs.
CHECKOUT_TMP = f"{WORK_DIR}/tmp"  # noqa: S108 - the sandbox's own directory
# The container's own tmpfs, its HOME; nothing of the host.
CONTAINER_TMP = "/tmp"  # noqa: S108
EGRESS_DIR = "/run/binderbuild"
EGRESS_SOCKET_NAME = "egress.sock"
# The default uid (and gid) of the sandbox's user (DockerBuilder.sandbox_uid,
# KubernetesBuilder.sandbox_uid): the builder image's user.
SANDBOX_UID = 1000
ROLE_LABEL = leftovers.ROLE_LABEL
ROLE = "build-sandbox"
IMAGE_LABEL = leftovers.IMAGE_LABEL
# HOME only (git and Python write a little there); the checkout is on disk.
TMPFS_SIZE = "64m"

_MAX_LINE = 1 << 20


def relay_url() -> str:
    return f"http://{RELAY_HOST}:{RELAY_PORT}"


def sandbox_env(
    *,
    proxied: bool,
    extra: Sequence[Mapping[str, str]] = (),
) -> dict[str, str]:
    """The sandbox's environment (git settings are added by the caller).

    ``extra`` (operator's ``extra_env``, the job's own, e.g. a private
    repository's credential helper) comes before the proxy settings, which
    always win.
    """
    env = {
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "HOME": CONTAINER_TMP,
        "TMPDIR": CHECKOUT_TMP,
        "BINDERBUILD_ENGINE_EXPORT_DIR": OUT_DIR,
    }
    for more in extra:
        env.update(more)
    if proxied:
        url = relay_url()
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            env[name] = url
        env.pop("ALL_PROXY", None)
        env.pop("all_proxy", None)
        env["no_proxy"] = env["NO_PROXY"] = ""
        env["GIT_PROXY_COMMAND"] = env[ENV_GIT_PROXY] = f"{WORK_DIR}/git-proxy"
        env["BINDERBUILD_EGRESS_PROXY"] = f"{RELAY_HOST}:{RELAY_PORT}"
        env[ENV_EGRESS_SOCKET] = f"{EGRESS_DIR}/{EGRESS_SOCKET_NAME}"
    return env


def container_args(
    *,
    image: str,
    r2d_args: Sequence[str],
    env: Mapping[str, str],
    work_dir: str,
    egress_dir: str | None,
    network: str,
    memory_limit: int,
    pids_limit: int,
    image_name: str,
    build: str = "",
    uid: int = SANDBOX_UID,
) -> dict[str, Any]:
    """``containers.create`` arguments of one build's sandbox.

    ``work_dir`` (host) becomes ``/work``; ``egress_dir`` (host, holding the
    proxy's socket) is mounted read-only, or not at all when builds are not
    filtered (then ``network`` is the operator's build network). ``build``
    names the build's work directory (a label, for the sweep at start);
    ``uid`` is the user (and group) it runs as, never 0.
    """
    if uid <= 0:
        raise ValueError("the build sandbox never runs as root: its uid must be positive")
    from docker.types import Mount

    mounts = [Mount(WORK_DIR, work_dir, type="bind", read_only=False)]
    if egress_dir is not None:
        mounts.append(Mount(EGRESS_DIR, egress_dir, type="bind", read_only=True))
    return {
        "image": image,
        "command": ["python", "-m", "binderbuild.builders.sandbox_entry", *r2d_args],
        "user": f"{uid}:{uid}",
        # The lifeline (see the module's docstring) wins over any extra env.
        "environment": {**env, ENV_LIFELINE: "stdin"},
        # docker-py sets StdinOnce for stdin_open only when not "detached"
        # (create() never waits either way): stdin closes when the one
        # client attached to it, the service, goes away.
        "stdin_open": True,
        "working_dir": WORK_DIR,
        "network_mode": "none" if egress_dir is not None else network,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {CONTAINER_TMP: f"rw,nosuid,nodev,size={TMPFS_SIZE}"},
        "mem_limit": memory_limit,
        "memswap_limit": memory_limit,
        "pids_limit": pids_limit,
        "mounts": mounts,
        "labels": leftovers.container_labels(ROLE, image_name, build),
        "name": f"binderbuild-sandbox-{secrets.token_hex(6)}",
        "detach": False,
    }


async def container_lines(client: Any, container_id: str) -> AsyncIterator[str]:
    """The container's output (stdout and stderr) line by line, until it exits.

    docker-py blocks, so one thread reads the stream and hands chunks over;
    removing the container ends the stream and the thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:
        try:
            for chunk in client.api.logs(
                container_id, stdout=True, stderr=True, stream=True, follow=True
            ):
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except Exception:  # noqa: BLE001 - the container is gone: the stream ends
            pass
        finally:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=read, daemon=True, name=f"sandbox-log-{container_id[:12]}").start()
    pending = b""
    while (chunk := await queue.get()) is not None:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
        while len(pending) > _MAX_LINE:
            yield pending[:_MAX_LINE].decode(errors="replace")
            pending = pending[_MAX_LINE:]
    if pending:
        yield pending.decode(errors="replace").rstrip("\r")


async def remove(client: Any, container_id: str) -> None:
    """Kill and remove the container, even while the caller is being cancelled."""
    task = asyncio.ensure_future(asyncio.to_thread(_remove_quietly, client, container_id))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _remove_quietly(client: Any, container_id: str) -> None:
    import docker.errors

    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_container(container_id, force=True, v=True)


def attach_lifeline(client: Any, container_id: str) -> Any:
    """Attach to the (not yet started) sandbox's stdin; hold the returned
    socket while the build runs, close it (``close_lifeline``) after. Blocking."""
    return client.api.attach_socket(container_id, params={"stdin": 1, "stream": 1})


def close_lifeline(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def oom_killed(client: Any, container_id: str) -> bool:
    """Whether the engine killed the container for its memory limit. Blocking."""
    import docker.errors

    try:
        state = client.api.inspect_container(container_id).get("State") or {}
    except docker.errors.DockerException:
        return False
    return bool(state.get("OOMKilled"))


def sweep(client: Any) -> list[leftovers.Leftover]:
    """Remove the sandboxes of services that are gone (``leftovers``). Blocking."""
    return leftovers.sweep_containers(client, ROLE)
