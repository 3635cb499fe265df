"""Normal operation logs no ERROR and no traceback.

A client that leaves in the middle of a launch, and /health probes while the
hub hangs, are everyday events: one INFO or WARNING line each, never an
ERROR with a traceback (Tornado's "Exception after Future was cancelled").
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from binderbuild.naming import image_spec
from tests.chaos.conftest import frozen, pinned_git_ref
from tests.conftest import service_config
from tests.hub.conftest import IMAGE_PREFIX
from tests.hub.test_spawner import wait_until
from tests.hubservice import HubService
from tests.ops.helpers import http, wait_for_health
from tests.realservices import GitServer, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService

pytestmark = [pytest.mark.hub, pytest.mark.docker]


def _prebuilt_repo(git_server: GitServer, image: str, docker_client: Any) -> str:
    """A repository whose image binderbuild will find already built (``image``
    tagged with the name it computes): a launch with no repo2docker build."""
    name = f"quiet-{time.monotonic_ns()}"
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
    url = git_server.git_url(name)
    ref = pinned_git_ref(url, sha)
    spec = image_spec(ref, IMAGE_PREFIX)
    docker_client.images.get(image).tag(spec.repository, spec.tag)
    return f"{quote(url, safe='')}/{sha}"


def _leave_during_spawn(url: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Open the event stream and close it once the hub reports the container."""
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    conn.request("GET", parts.path, headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    events: list[dict[str, Any]] = []
    try:
        while raw := resp.readline():
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            ev = json.loads(line[5:])
            events.append(ev)
            assert ev["phase"] not in ("ready", "failed"), events
            if ev["phase"] == "launching" and "container" in ev.get("message", "").lower():
                return events
    finally:
        conn.close()
    raise AssertionError(f"the stream ended before the spawn: {events}")


def test_leaving_clients_and_hung_hub_probes_log_no_errors(
    hub_keeping_servers: HubService,
    slow_image: str,
    git_server: GitServer,
    docker_client: Any,
    start_service: Callable[..., BinderBuildService],
) -> None:
    hub = hub_keeping_servers
    spec = _prebuilt_repo(git_server, slow_image, docker_client)
    service = start_service(
        service_config(None, hub.binderbuild_config() + "c.HubLauncher.retry_delay = 0.5\n")
    )

    # Two clients leave mid-spawn; their launches are cleaned up.
    for _ in range(2):
        events = _leave_during_spawn(f"{service.url}/build/git/{spec}")
        assert "building" not in [e["phase"] for e in events], events  # no build needed
    wait_until(lambda: not hub.users(), 60, "the abandoned launches to be cleaned up")
    time.sleep(2)  # the abandoned progress streams end with their servers

    # Health probes while the hub hangs: 503, several times (past the cache).
    with frozen(hub):
        wait_for_health(service, 503, timeout=30)
        time.sleep(6)  # past the checks' cache: a second probe asks the hub again
        assert http(f"{service.url}/health").status == 503
    wait_for_health(service, 200, timeout=30)

    log = service.log()
    assert "Traceback" not in log, log
    errors = [ln for ln in log.splitlines() if ln.startswith("[E ") or '"ERROR"' in ln]
    assert not errors, log
    assert "abandoned" in log, log  # one INFO line per client that left
