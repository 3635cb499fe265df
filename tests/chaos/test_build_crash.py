"""The service killed (SIGKILL) in the middle of a build, then started again.

Real service, engine, registry and git server. What must hold (issue 12):

- what the build ran dies with the service: the trusted step's process
  (PR_SET_PDEATHSIG), the build step on the engine (its client is gone), the
  sandbox container (its stdin lifeline), without waiting for a restart;
- the restarted service removes the rest (the work directory) before it
  serves, says in /api/builds that the old build was interrupted, and a new
  request runs exactly one build of the image;
- nothing is left after a build ends in any way, here by a cancel.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from binderbuild.builders import leftovers
from tests.api.helpers import (
    build_status,
    call,
    post_build,
    running_containers_with,
    wait_for,
)
from tests.conftest import service_config
from tests.realservices import dockerfile_repo_files, make_repo
from tests.service import BinderBuildService

pytestmark = [pytest.mark.docker]

TOKEN = "chaos-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Deadlines this test gives what must die or be removed; generous for two busy cores.
DIES_WITHIN = 30.0


# --- what a service process owns, seen from outside ---------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, by parent links."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def workdirs_of(pid: int) -> list[Path]:
    """Build work directories whose owner file names process ``pid``."""
    found = []
    for path in Path(tempfile.gettempdir()).glob(leftovers.WORKDIR_PREFIX + "*"):
        try:
            info = json.loads((path / leftovers.OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if str(info.get("owner", "")).split(":")[2:3] == [str(pid)]:
            found.append(path)
    return found


def sandboxes_of(docker_client: Any, pid: int) -> list[Any]:
    found = []
    for c in docker_client.containers.list(
        all=True, filters={"label": f"{leftovers.ROLE_LABEL}=build-sandbox"}
    ):
        owner = c.labels.get(leftovers.OWNER_LABEL, "")
        if owner.split(":")[2:3] == [str(pid)]:
            found.append(c)
    return found


def eventually(what: str, probe: Any, timeout: float = DIES_WITHIN) -> None:
    wait_for(what, probe, timeout=timeout, interval=0.2)


def log_text(svc: BinderBuildService, build_id: str) -> str:
    resp = call(f"{svc.url}/api/builds/{build_id}/log")
    return resp.text if resp.status == 200 else ""


def crash_config(registry: Any) -> str:
    return service_config(
        registry,
        f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'chaos'}}\n"
        "c.BinderBuild.build_timeout = 600\n",
    )


# --- a git server that accepts and never answers (the fetch hangs) ----------------


@pytest.fixture
def tarpit() -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    listener.close()


# --- the scenarios -----------------------------------------------------------------------


def test_killed_mid_build_then_restarted(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    name = f"crash-{marker}"
    # A few lines, then silence: nothing the trusted step writes would fail
    # (SIGPIPE) once the service is gone, so only PR_SET_PDEATHSIG stops it.
    files = dockerfile_repo_files(marker)
    lines = files["Dockerfile"].splitlines()
    step = f"RUN for i in $(seq 1 5); do echo tick-$i-{marker}; sleep 1; done; sleep 600"
    lines.insert(lines.index("USER 1000"), step)
    files["Dockerfile"] = "\n".join(lines) + "\n"
    make_repo(git_server.root, name, files)
    spec = f"{quote(git_server.git_url(name), safe='')}/main"
    svc = start_service(crash_config(registry))
    assert svc.proc is not None
    old_pid = svc.proc.pid

    resp = post_build(svc.url, spec)
    assert resp.status in (200, 201, 202), resp.text
    first = resp.json()["id"]
    # The build step runs on the engine (the trusted step is building).
    try:
        wait_for("the build step's output", lambda: f"tick-5-{marker}" in log_text(svc, first), 240)
    except AssertionError:
        raise AssertionError(f"{build_status(svc.url, first)}\n{log_text(svc, first)[-3000:]}") from None
    trusted = [p for p in descendants(old_pid) if b"trusted_build" in _cmdline(p)]
    assert trusted, "the trusted step is a child of the service"
    assert running_containers_with(docker_client, marker), "the build step runs on the engine"
    assert workdirs_of(old_pid), "the build's work directory is owned by the service"

    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)

    # Without waiting for a restart: what the build ran dies with the service.
    eventually("the trusted step to die with the service", lambda: not any(map(alive, trusted)))
    eventually(
        "the build step to stop on the engine",
        lambda: not running_containers_with(docker_client, marker),
    )
    assert not sandboxes_of(docker_client, old_pid)

    # Started again on the same data directory.
    svc.start()
    assert svc.proc is not None and svc.proc.pid != old_pid
    # Removed before the service answered its first request.
    assert not workdirs_of(old_pid), workdirs_of(old_pid)

    old = build_status(svc.url, first)
    assert old["state"] == "failed", old
    assert old["failure"]["type"] == "BuildInterrupted", old
    assert "interrupted" in old["failure"]["reason"], old
    assert "interrupted" in log_text(svc, first)
    assert "Removed the workdir" in svc.log(), svc.log()[-3000:]

    # Asked again: one new build, and only one build step running for the image.
    resp = post_build(svc.url, spec)
    assert resp.status in (200, 201, 202), resp.text
    second = resp.json()["id"]
    assert second != first
    again = post_build(svc.url, spec).json()["id"]
    assert again == second, "a second request joins the running build"
    wait_for("the new build's step", lambda: f"tick-5-{marker}" in log_text(svc, second), 240)
    for _ in range(10):
        assert len(running_containers_with(docker_client, marker)) == 1
        time.sleep(0.3)

    # Cancelled: nothing of it is left.
    new_pid = svc.proc.pid
    children = descendants(new_pid)
    resp = call(f"{svc.url}/api/builds/{second}", "DELETE", headers=AUTH)
    assert resp.status in (200, 202), resp.text
    wait_for("the cancel", lambda: build_status(svc.url, second)["state"] == "cancelled", 60)
    eventually(
        "the cancelled build's step to stop",
        lambda: not running_containers_with(docker_client, marker),
    )
    eventually(
        "the cancelled build's processes to end",
        lambda: not [p for p in children if alive(p) and b"trusted_build" in _cmdline(p)],
    )
    assert not workdirs_of(new_pid)
    assert not sandboxes_of(docker_client, new_pid)


def test_killed_while_fetching_the_sandbox_dies_with_it(
    start_service: Any, registry: Any, docker_client: Any, tarpit: int
) -> None:
    # A full commit id: nothing to resolve, so only the sandbox's fetch hangs.
    url = f"http://127.0.0.1:{tarpit}/hangs.git"
    spec = f"{quote(url, safe='')}/{'a' * 40}"
    # The sandbox reaches the tarpit directly, not through the service's
    # egress proxy (whose end would also end the fetch): only the lifeline
    # can stop it.
    svc = start_service(
        crash_config(registry)
        + "c.DockerBuilder.egress_filter = False\nc.DockerBuilder.build_network = 'host'\n"
    )
    assert svc.proc is not None
    old_pid = svc.proc.pid
    resp = post_build(svc.url, spec)
    assert resp.status in (200, 201, 202), resp.text
    first = resp.json()["id"]
    wait_for(
        "the sandbox to run",
        lambda: any(c.status == "running" for c in sandboxes_of(docker_client, old_pid)),
        120,
    )
    time.sleep(1)  # inside the fetch
    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)

    def sandbox_gone() -> bool:
        for c in sandboxes_of(docker_client, old_pid):
            c.reload()
            if c.status == "running":
                return False
        return True

    # Its stdin lifeline ended: the sandbox exits by itself, before any restart.
    eventually("the sandbox to exit with the service", sandbox_gone)

    svc.start()
    assert not sandboxes_of(docker_client, old_pid), "the restart removed the exited sandbox"
    assert not workdirs_of(old_pid)
    old = build_status(svc.url, first)
    assert (old["state"], old["failure"]["type"]) == ("failed", "BuildInterrupted"), old


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
