"""Ten identical requests while the service restarts.

Real service, engine, registry and git server. Five clients ask for an
image and follow its build; the service is stopped (SIGTERM, as an operator
or a supervisor restarts it) in the middle of the build, five more clients
arrive while it is down, and it is started again. Every client retries what
failed (refused connection, cut stream, a build stopped by the shutdown) as
any Binder client would. What must hold (issue 12): each of the ten ends
with the built image, all with the same build, and the image is built
exactly once (the build the shutdown stopped is recorded as cancelled, with
the reason).
"""

from __future__ import annotations

import http.client
import secrets
import threading
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.helpers import (
    call,
    list_builds,
    post_build,
    running_containers_with,
    slow_repo_files,
    wait_for,
)
from tests.conftest import service_config
from tests.realservices import make_repo
from tests.sse import read_events

pytestmark = [pytest.mark.docker]

CLIENTS = 10
SHUTTING_DOWN = "the service is shutting down"


def client(base: str, spec: str, deadline: float, log: list[str]) -> dict[str, Any]:
    """Ask for the image and follow its build until it is built, retrying
    whatever a restart breaks; returns the build id and what happened."""
    while time.monotonic() < deadline:
        try:
            resp = post_build(base, spec)
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            log.append(f"post: {type(exc).__name__}")
            time.sleep(0.3)
            continue
        if resp.status >= 500:
            log.append(f"post: {resp.status}")
            time.sleep(0.3)
            continue
        if resp.status not in (200, 201, 202):
            return {"error": resp.text}
        build_id = resp.json()["id"]
        try:
            result = read_events(f"{base}/api/builds/{build_id}/events", timeout=120)
        except (OSError, http.client.HTTPException) as exc:
            log.append(f"events: {type(exc).__name__}")
            continue
        final = result.events[-1] if result.events else None
        if final is not None and final["phase"] == "built":
            return {"id": build_id}
        if final is None or final["phase"] not in ("built", "failed"):
            log.append("events: cut")
            continue
        if SHUTTING_DOWN in final.get("message", ""):
            log.append("events: stopped by the shutdown")
            continue
        return {"id": build_id, "error": final}
    return {"error": "no result before the deadline"}


def test_ten_identical_requests_across_a_restart(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    name = f"restart-{marker}"
    make_repo(git_server.root, name, slow_repo_files(marker, ticks=6))
    url = git_server.git_url(name)
    spec = f"{quote(url, safe='')}/main"
    svc = start_service(service_config(registry))
    deadline = time.monotonic() + 500
    logs: list[list[str]] = [[] for _ in range(CLIENTS)]
    pool = ThreadPoolExecutor(max_workers=CLIENTS)
    early = [pool.submit(client, svc.url, spec, deadline, logs[i]) for i in range(CLIENTS // 2)]

    # The build runs (its step prints), then the service stops under it.
    wait_for(
        "the build step to run",
        lambda: running_containers_with(docker_client, marker),
        300,
        interval=0.2,
    )
    svc.stop()
    late = [
        pool.submit(client, svc.url, spec, deadline, logs[i]) for i in range(CLIENTS // 2, CLIENTS)
    ]
    time.sleep(2)  # the late ones find nothing listening, and retry
    # Sampled while the image builds again: never two build steps at once.
    most_at_once = 0
    sampling = threading.Event()

    def sample() -> None:
        nonlocal most_at_once
        while not sampling.is_set():
            most_at_once = max(most_at_once, len(running_containers_with(docker_client, marker)))
            time.sleep(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    svc.start()
    try:
        results = [f.result(timeout=max(1.0, deadline - time.monotonic())) for f in early + late]
    finally:
        sampling.set()
        sampler.join(5)
        pool.shutdown(wait=False, cancel_futures=True)

    assert all("error" not in r for r in results), (results, logs)
    ids = {r["id"] for r in results}
    assert len(ids) == 1, (results, logs)
    # The early clients saw their build stopped; the late ones a refused connection.
    assert all(
        "events: stopped by the shutdown" in logs[i] or "events: cut" in logs[i]
        for i in range(CLIENTS // 2)
    ), logs
    assert all(
        any(entry.startswith("post:") for entry in logs[i]) for i in range(CLIENTS // 2, CLIENTS)
    ), logs

    builds = list_builds(svc.url, "git", url)
    succeeded = [b for b in builds if b["state"] == "succeeded"]
    assert [b["id"] for b in succeeded] == list(ids), builds
    assert not succeeded[0]["found_existing"], succeeded
    others = [b for b in builds if b["state"] != "succeeded"]
    assert len(others) == 1, builds
    assert others[0]["state"] == "cancelled", others
    assert SHUTTING_DOWN in others[0]["failure"]["reason"], others
    assert most_at_once == 1, most_at_once
    assert "Built image." in call(f"{svc.url}/api/builds/{ids.pop()}/log").text
