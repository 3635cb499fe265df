"""Stopping builds and building again: cancel by an authorized caller, the
abandoned-build policy, and forced rebuilds with their cooldown.

Real builds on the real engine: a cancelled build must leave no build step
running, and its slot must go to the next request at once.
"""

from __future__ import annotations

import secrets
import time

import pytest

from tests.api.helpers import (
    assert_schema,
    build_status,
    call,
    follow_until,
    list_builds,
    post_build,
    running_containers_with,
    slow_repo_files,
    wait_for,
)
from tests.conftest import service_config
from tests.sse import read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

TOKEN = "test-admin-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def queue_state(base: str) -> dict:
    health = call(f"{base}/health").json()
    return next(c for c in health["checks"] if c["service"] == "queue")


def wait_slots_free(base: str) -> None:
    # /health caches each check for a few seconds: poll until it catches up.
    wait_for("no build running", lambda: queue_state(base)["running"] == 0, timeout=30)


def wait_step_running(docker_client, marker: str) -> None:
    # The step's first lines can reach the build's stream before the engine
    # lists its container as running (the output is attached before the
    # start is recorded); on a loaded machine (CI) the gap was long enough
    # for an immediate check to miss it.
    wait_for(
        "the build step's container to run",
        lambda: running_containers_with(docker_client, marker),
        timeout=15,
    )


def test_cancel_stops_the_build_and_frees_its_slot(
    start_service, registry, docker_client, make_fixture_repo
):
    extra = f"c.BinderBuild.concurrent_build_limit = 1\nc.BinderBuild.api_tokens = {{{TOKEN!r}: 'tests'}}"
    svc = start_service(service_config(registry, extra))
    marker = secrets.token_hex(6)
    repo = make_fixture_repo(files=slow_repo_files(marker, ticks=90))
    first = post_build(svc.url, repo.spec()).json()
    events_url = f"{svc.url}/api/builds/{first['id']}/events"
    follow_until(events_url, f"tick-2-{marker}")
    wait_step_running(docker_client, marker)
    assert queue_state(svc.url)["running"] == 1

    # Only authorized callers may cancel.
    anonymous = call(f"{svc.url}/api/builds/{first['id']}", "DELETE")
    assert anonymous.status == 401 and anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = call(
        f"{svc.url}/api/builds/{first['id']}", "DELETE", headers={"Authorization": "Bearer nope"}
    )
    assert wrong.status == 403
    assert build_status(svc.url, first["id"])["state"] == "running"

    cancelled = call(f"{svc.url}/api/builds/{first['id']}", "DELETE", headers=AUTH)
    assert cancelled.status == 200, cancelled.text
    body = cancelled.json()
    assert_schema(body, "Build")
    assert body["state"] == "cancelled" and body["failure"]["type"] == "BuildCancelled"
    stream = read_events(events_url)
    assert stream.final["phase"] == "failed"
    assert stream.final["message"] == "Build cancelled by an API caller.\n"

    # The real build stopped: its step container is gone, the slot is free.
    wait_for(
        "the build container to stop",
        lambda: not running_containers_with(docker_client, marker),
        timeout=60,
    )
    wait_slots_free(svc.url)
    assert call(f"{svc.url}/api/builds/{first['id']}", "DELETE", headers=AUTH).status == 409
    assert call(f"{svc.url}/api/images/git/{repo.spec()}").status == 404

    # The next request builds afresh, at once (the only slot was released).
    second = post_build(svc.url, repo.spec())
    assert second.status == 201, second.text
    fresh = second.json()
    assert fresh["id"] != first["id"] and fresh["state"] == "running"
    restarted = follow_until(f"{svc.url}/api/builds/{fresh['id']}/events", f"tick-1-{marker}")
    assert "fetching" in [e["phase"] for e in restarted]
    wait_step_running(docker_client, marker)
    assert call(f"{svc.url}/api/builds/{fresh['id']}", "DELETE", headers=AUTH).status == 200
    wait_for(
        "the second build container to stop",
        lambda: not running_containers_with(docker_client, marker),
        timeout=60,
    )
    states = {b["id"]: b["state"] for b in list_builds(svc.url, "git", repo.url)}
    assert states == {first["id"]: "cancelled", fresh["id"]: "cancelled"}


def test_abandoned_build_is_cancelled_after_grace(
    start_service, registry, docker_client, make_fixture_repo
):
    extra = "c.BinderBuild.abandoned_build_grace = 3\nc.BinderBuild.keepalive_interval = 0.5"
    svc = start_service(service_config(registry, extra))
    marker = secrets.token_hex(6)
    repo = make_fixture_repo(files=slow_repo_files(marker, ticks=90))
    build = post_build(svc.url, repo.spec()).json()
    # Watched for longer than the grace period: it keeps running.
    follow_until(f"{svc.url}/api/builds/{build['id']}/events", f"tick-6-{marker}")
    left = time.monotonic()
    (now,) = [b for b in list_builds(svc.url, "git", repo.url) if b["id"] == build["id"]]
    assert now["state"] == "running", now

    # Nobody watches any more (the list endpoint does not count as watching).
    def cancelled() -> dict | None:
        (b,) = [b for b in list_builds(svc.url, "git", repo.url) if b["id"] == build["id"]]
        return b if b["state"] != "running" else None

    final = wait_for("the abandoned build to be cancelled", cancelled, timeout=60)
    assert time.monotonic() - left >= 2.5
    assert final["state"] == "cancelled"
    assert "no client followed it for 3 seconds" in final["failure"]["reason"]
    wait_for(
        "the build container to stop",
        lambda: not running_containers_with(docker_client, marker),
        timeout=60,
    )
    wait_slots_free(svc.url)


def test_forced_rebuild_needs_authorization_and_respects_cooldown(
    start_service, registry, docker_client, make_fixture_repo
):
    extra = f"c.BinderBuild.api_tokens = {{{TOKEN!r}: 'tests'}}\nc.BuildsAPI.rebuild_cooldown = 300"
    svc = start_service(service_config(registry, extra))
    repo = make_fixture_repo()
    spec = repo.spec()
    original = post_build(svc.url, spec).json()
    assert read_events(f"{svc.url}/api/builds/{original['id']}/events").final["phase"] == "built"
    assert post_build(svc.url, spec).json()["id"] == original["id"]

    assert post_build(svc.url, spec, force_rebuild=True).status == 401
    refused = post_build(
        svc.url, spec, headers={"Authorization": "Bearer nope"}, force_rebuild=True
    )
    assert refused.status == 403

    forced = post_build(svc.url, spec, headers=AUTH, force_rebuild=True)
    assert forced.status == 201, forced.text
    rebuild = forced.json()
    assert rebuild["id"] != original["id"] and rebuild["forced"] is True
    # While it runs, every request for the image joins it.
    assert post_build(svc.url, spec).json()["id"] == rebuild["id"]
    assert post_build(svc.url, spec, headers=AUTH, force_rebuild=True).json()["id"] == rebuild["id"]
    stream = read_events(f"{svc.url}/api/builds/{rebuild['id']}/events")
    assert stream.final["phase"] == "built" and "fetching" in stream.phases  # really built

    # The repository's cooldown now runs, for any ref of it.
    again = post_build(svc.url, spec, headers=AUTH, force_rebuild=True)
    assert again.status == 429, again.text
    assert 0 < int(again.headers["retry-after"]) <= 301
    assert_schema(again.json(), "Error")
    latest = post_build(svc.url, spec)
    assert latest.status == 200 and latest.json()["id"] == rebuild["id"]
    ids = [b["id"] for b in list_builds(svc.url, "git", repo.url)]
    assert ids == [rebuild["id"], original["id"]]
