"""A registry that is down, or hung (SIGSTOP: it accepts connections and
answers nothing), when the image is checked and while it is pushed.

Real service, engine, git server and a registry process of each test's own
(so it can be stopped and frozen). What must hold (issue 12):

- down at the check: the request fails at once with a clear message and
  nothing is built (a registry outage is not "the image is missing");
- hung at the check or at the push: each ends within one deadline,
  ``DockerRegistry.unresponsive_timeout``, whatever the per-request timeout
  (``DockerRegistry.timeout``, set longer here on purpose), with a message
  that says the registry did not answer; the service keeps serving;
- once the registry resumes (SIGCONT), the next request succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from binderbuild.naming import image_spec
from tests.api.helpers import build_status, call, list_builds, post_build, wait_for
from tests.chaos.conftest import pinned_git_ref
from tests.chaos.test_build_crash import TOKEN, alive, descendants
from tests.realservices import (
    RegistryServer,
    build_context_image,
    dockerfile_repo_files,
    make_repo,
)

pytestmark = [pytest.mark.docker]

UNRESPONSIVE = 8.0
PER_REQUEST = 25.0  # longer than the deadline: the deadline must cut it
SLACK = 7.0  # generous: two busy cores, other tests running
PREFIX = "bbchaos-"


@pytest.fixture
def own_registry(tmp_path: Path, docker_client: Any) -> Iterator[RegistryServer]:
    server = RegistryServer(tmp_path / "own-registry")
    server.start()
    try:
        yield server
    finally:
        if server.is_running():
            assert server._proc is not None
            os.kill(server._proc.pid, signal.SIGCONT)
        server.stop()
        # The engine's tags of this registry's images go with it.
        for image in docker_client.images.list():
            for tag in image.tags:
                if tag.startswith(f"{server.host}/"):
                    docker_client.images.remove(tag, noprune=False)


def freeze(registry: RegistryServer) -> None:
    assert registry._proc is not None
    os.kill(registry._proc.pid, signal.SIGSTOP)


def thaw(registry: RegistryServer) -> None:
    assert registry._proc is not None
    os.kill(registry._proc.pid, signal.SIGCONT)


def config(registry: RegistryServer, extra: str = "") -> str:
    return (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.concurrent_build_limit = 2\n"
        "c.DockerBuilder.build_network = 'none'\n"
        "c.BinderBuild.use_registry = True\n"
        f"c.DockerRegistry.url = {registry.url!r}\n"
        f"c.BinderBuild.image_prefix = '{registry.host}/{PREFIX}'\n"
        f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'chaos'}}\n"
        f"c.DockerRegistry.timeout = {PER_REQUEST}\n"
        f"c.DockerRegistry.unresponsive_timeout = {UNRESPONSIVE}\n"
        # Every request asks the registry (no "it exists" answer reused).
        "c.BinderBuild.image_exists_cache_ttl = 0\n" + extra
    )


def prebuilt(registry: RegistryServer, git_server: Any, docker_client: Any) -> tuple[str, str]:
    """A repository whose image is already in the registry (a tiny one, pushed
    here); returns its spec, pinned to the commit, and its URL."""
    name = f"regchaos-{time.monotonic_ns()}"
    sha = make_repo(git_server.root, name, dockerfile_repo_files(name))
    url = git_server.git_url(name)
    ref = pinned_git_ref(url, sha)
    image = image_spec(ref, f"{registry.host}/{PREFIX}")
    build_context_image(
        docker_client,
        image.name,
        {"Dockerfile": b"FROM scratch\nCOPY hello /hello\n", "hello": name.encode()},
    )
    for chunk in docker_client.api.push(image.repository, tag=image.tag, stream=True, decode=True):
        assert "error" not in chunk, chunk
    assert registry.manifest_status(image.repository.split("/", 1)[1], image.tag) == 200
    return f"{quote(url, safe='')}/{sha}", url


def test_registry_down_at_the_check(
    start_service: Any, own_registry: RegistryServer, git_server: Any, docker_client: Any
) -> None:
    spec, url = prebuilt(own_registry, git_server, docker_client)
    svc = start_service(config(own_registry))
    own_registry.stop()

    started = time.monotonic()
    resp = post_build(svc.url, spec)
    elapsed = time.monotonic() - started
    assert resp.status == 503, resp.text
    message = resp.json()["message"]
    assert "registry" in message and own_registry.url in message, message
    assert "not building" in message, message
    # Refused is a definite "down": no waiting for the deadline.
    assert elapsed < UNRESPONSIVE, elapsed
    # Nothing was built, queued or recorded for it.
    assert list_builds(svc.url, "git", url) == []

    own_registry.start()
    resp = post_build(svc.url, spec)
    assert resp.status in (200, 201), resp.text  # 201: a record of the image found
    assert resp.json()["found_existing"] is True, resp.text
    assert [b["found_existing"] for b in list_builds(svc.url, "git", url)] == [True]


def test_registry_hung_at_the_check(
    start_service: Any, own_registry: RegistryServer, git_server: Any, docker_client: Any
) -> None:
    spec, _ = prebuilt(own_registry, git_server, docker_client)
    svc = start_service(config(own_registry))
    freeze(own_registry)
    try:
        started = time.monotonic()
        resp = post_build(svc.url, spec)
        elapsed = time.monotonic() - started
        assert resp.status == 503, resp.text
        message = resp.json()["message"]
        assert f"did not answer within {UNRESPONSIVE:g} seconds" in message, message
        assert "DockerRegistry.unresponsive_timeout" in message, message
        assert elapsed <= UNRESPONSIVE + SLACK, elapsed
        # The service stays up meanwhile.
        assert call(f"{svc.url}/versions", timeout=5).status == 200
    finally:
        thaw(own_registry)
    resp = post_build(svc.url, spec)
    assert resp.status in (200, 201), resp.text  # 201: a record of the image found
    assert resp.json()["found_existing"] is True, resp.text


def test_registry_hung_during_the_push(
    start_service: Any, own_registry: RegistryServer, git_server: Any, docker_client: Any
) -> None:
    marker = f"push{time.monotonic_ns()}"
    name = f"regpush-{marker}"
    make_repo(git_server.root, name, dockerfile_repo_files(marker))
    spec = f"{quote(git_server.git_url(name), safe='')}/main"
    svc = start_service(config(own_registry))
    assert svc.proc is not None
    resp = post_build(svc.url, spec)
    assert resp.status == 201, resp.text
    first = resp.json()["id"]

    def log() -> str:
        return call(f"{svc.url}/api/builds/{first}/log").text

    # The push has begun: a fresh registry takes every layer of the base image.
    wait_for("the push to start", lambda: "Pushing " in log(), 300, interval=0.1)
    freeze(own_registry)
    try:
        started = time.monotonic()
        status = wait_for(
            "the build to end",
            lambda: (s := build_status(svc.url, first))["state"] != "running" and s,
            UNRESPONSIVE + 60,
            interval=0.2,
        )
        elapsed = time.monotonic() - started
        assert status["state"] == "failed", status
        reason = status["failure"]["reason"]
        assert f"did not answer for {UNRESPONSIVE:g} seconds" in reason, reason
        assert "while the image was pushed" in reason, reason
        assert elapsed <= UNRESPONSIVE + SLACK, (elapsed, status)
        assert "did not answer" in log()
        # The service stays up, and the trusted step (the push's client) is gone.
        assert call(f"{svc.url}/versions", timeout=5).status == 200
        wait_for(
            "the build's processes to end",
            lambda: not [p for p in descendants(svc.proc.pid) if alive(p)],  # type: ignore[union-attr]
            30,
        )
    finally:
        thaw(own_registry)

    # Resumed: asking again builds and pushes.
    resp = post_build(svc.url, spec)
    assert resp.status == 201, resp.text
    second = resp.json()["id"]
    assert second != first
    status = wait_for(
        "the second build",
        lambda: (s := build_status(svc.url, second))["state"] not in ("queued", "running") and s,
        300,
    )
    assert status["state"] == "succeeded", (
        status,
        call(f"{svc.url}/api/builds/{second}/log").text[-3000:],
    )
