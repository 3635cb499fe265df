"""Builds that hit a limit: time, silence, memory, log size (issue 12).

Real service, engine, registry and git server. Each build fails (or is cut)
with a reason that names the limit, and leaves nothing behind: no build step
running on the engine, no process, no work directory. The only times
asserted are the deadlines the tests configure.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.helpers import (
    build_status,
    call,
    post_build,
    running_containers_with,
    slow_repo_files,
    wait_for,
)
from tests.chaos.test_build_crash import alive, descendants, sandboxes_of, workdirs_of
from tests.conftest import service_config
from tests.realservices import dockerfile_repo_files, make_repo

pytestmark = [pytest.mark.docker]


def repo_with_step(git_server: Any, marker: str, step: str) -> str:
    """A fixture repository with one more RUN line; returns its spec."""
    files = dockerfile_repo_files(marker)
    lines = files["Dockerfile"].splitlines()
    lines.insert(lines.index("USER 1000"), step)
    files["Dockerfile"] = "\n".join(lines) + "\n"
    name = f"limits-{marker}"
    make_repo(git_server.root, name, files)
    return f"{quote(git_server.git_url(name), safe='')}/main"


def finished(svc: Any, build_id: str, timeout: float = 300) -> dict[str, Any]:
    return wait_for(
        "the build to finish",
        lambda: (s := build_status(svc.url, build_id))["state"] in ("succeeded", "failed", "cancelled")
        and s,
        timeout,
    )


def nothing_left(svc: Any, docker_client: Any, marker: str) -> None:
    assert svc.proc is not None
    pid = svc.proc.pid
    wait_for(
        "the build step to stop on the engine",
        lambda: not running_containers_with(docker_client, marker),
        30,
    )
    wait_for(
        "the build's processes to end",
        lambda: not [p for p in descendants(pid) if alive(p) and p != pid],
        30,
    )
    assert not workdirs_of(pid)
    assert not sandboxes_of(docker_client, pid)


def test_build_past_its_deadline(start_service: Any, registry: Any, docker_client: Any, git_server: Any) -> None:
    marker = secrets.token_hex(6)
    name = f"deadline-{marker}"
    make_repo(git_server.root, name, slow_repo_files(marker, ticks=600))
    spec = f"{quote(git_server.git_url(name), safe='')}/main"
    svc = start_service(service_config(registry, "c.BinderBuild.build_timeout = 25\n"))
    build_id = post_build(svc.url, spec).json()["id"]
    status = finished(svc, build_id)
    assert status["state"] == "failed", status
    assert status["failure"]["type"] == "BuildTimeout", status
    assert "time limit of 25 seconds" in status["failure"]["reason"], status
    nothing_left(svc, docker_client, marker)


def test_build_silent_past_its_idle_timeout(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    spec = repo_with_step(git_server, marker, f"RUN echo quiet-{marker} && sleep 600")
    svc = start_service(service_config(registry, "c.BinderBuild.build_idle_timeout = 15\n"))
    build_id = post_build(svc.url, spec).json()["id"]
    status = finished(svc, build_id)
    assert status["failure"]["type"] == "BuildTimeout", status
    assert "no output for 15 seconds" in status["failure"]["reason"], status
    nothing_left(svc, docker_client, marker)


def test_build_over_its_memory_limit(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    # 1 GiB in a build step limited to 96 MiB (and as much swap: none).
    step = f"RUN echo eat-{marker} && python3 -c 'x = bytearray(1 << 30); print(len(x))'"
    spec = repo_with_step(git_server, marker, step)
    svc = start_service(service_config(registry, "c.BinderBuild.build_memory_limit = '96M'\n"))
    build_id = post_build(svc.url, spec).json()["id"]
    status = finished(svc, build_id)
    assert status["state"] == "failed", status
    reason = status["failure"]["reason"]
    assert reason.startswith("The build ran out of memory (limit 96 MiB)"), reason
    log = call(f"{svc.url}/api/builds/{build_id}/log").text
    assert "ran out of memory (limit 96 MiB)" in log
    nothing_left(svc, docker_client, marker)


def test_a_log_flood_keeps_the_service_bounded(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    # About 40 MB of output in short lines, against a 1 MiB log cap.
    step = f"RUN yes flood-{marker}-0123456789abcdef0123456789 | head -c 40000000"
    spec = repo_with_step(git_server, marker, step)
    svc = start_service(service_config(registry, "c.BinderBuild.build_log_max_bytes = '1M'\n"))
    assert svc.proc is not None
    before = _rss(svc.proc.pid)
    build_id = post_build(svc.url, spec).json()["id"]
    peak = before
    deadline_status: dict[str, Any] = {}

    def done() -> bool:
        nonlocal peak
        peak = max(peak, _rss(svc.proc.pid))
        deadline_status.update(build_status(svc.url, build_id))
        return deadline_status["state"] in ("succeeded", "failed")

    wait_for("the flood to end", done, 600, interval=0.5)
    assert deadline_status["state"] == "succeeded", deadline_status
    log = call(f"{svc.url}/api/builds/{build_id}/log").text
    assert "[log truncated]" in log
    assert len(log.encode()) < 2 * 1024 * 1024, len(log)
    # Bounded: far less than the 40 MB the build printed.
    assert peak - before < 64 * 1024 * 1024, (before, peak)
    nothing_left(svc, docker_client, marker)


def _rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
