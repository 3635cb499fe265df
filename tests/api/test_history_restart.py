"""Finished builds outlive the process: status, events, log and the
repository's history are read back after a restart of the real service."""

from __future__ import annotations

import secrets

import pytest

from tests.api.helpers import build_status, call, list_builds, post_build
from tests.conftest import service_config
from tests.realservices import FAILURE_MESSAGE, add_commit, dockerfile_repo_files
from tests.sse import read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

# Fields that describe the live process, not the stored outcome.
LIVE_ONLY = ("watchers", "queue_position", "timings")


def stable(status: dict) -> dict:
    return {k: v for k, v in status.items() if k not in LIVE_ONLY}


def test_logs_and_outcomes_survive_a_restart(
    start_service, registry, docker_client, git_server, make_fixture_repo
):
    # No resolve cache: the branch moves during the test.
    svc = start_service(service_config(registry, "c.BinderBuild.resolve_cache_ttl = 0"))
    repo = make_fixture_repo()
    good = post_build(svc.url, repo.spec()).json()
    good_events = read_events(f"{svc.url}/api/builds/{good['id']}/events")
    assert good_events.final["phase"] == "built"

    # A second commit on the same branch breaks the build.
    marker = secrets.token_hex(6)
    bad_sha = add_commit(
        git_server.root, repo.name, dockerfile_repo_files(marker, fail=True), "break it"
    )
    bad = post_build(svc.url, repo.spec()).json()
    assert bad["id"] != good["id"] and bad["resolved_ref"] == bad_sha
    bad_events = read_events(f"{svc.url}/api/builds/{bad['id']}/events")
    assert bad_events.final["phase"] == "failed"

    before = {b: build_status(svc.url, b) for b in (good["id"], bad["id"])}
    logs = {b: call(f"{svc.url}/api/builds/{b}/log").text for b in before}
    assert "Built image." in logs[good["id"]]
    assert FAILURE_MESSAGE in logs[bad["id"]] and marker in logs[bad["id"]]
    assert before[bad["id"]]["failure"]["type"] == "BuildFailed"
    assert "repo2docker exited with code" in before[bad["id"]]["failure"]["reason"]

    svc.restart()

    for build_id, status in before.items():
        after = build_status(svc.url, build_id)
        assert stable(after) == stable(status)
        assert after["timings"]["finished"] == status["timings"]["finished"]
        log = call(f"{svc.url}/api/builds/{build_id}/log")
        assert log.status == 200 and log.headers["content-type"].startswith("text/plain")
        assert log.text == logs[build_id]
    replay = read_events(f"{svc.url}/api/builds/{good['id']}/events")
    assert replay.ids == good_events.ids and replay.events == good_events.events
    resumed = read_events(
        f"{svc.url}/api/builds/{bad['id']}/events", headers={"Last-Event-ID": "3"}
    )
    assert resumed.ids == bad_events.ids[4:] and resumed.events == bad_events.events[4:]

    # The repository's history, newest first, from the store.
    assert [b["id"] for b in list_builds(svc.url, "git", repo.url)] == [bad["id"], good["id"]]
    # POST stays idempotent on an image built before the restart.
    pinned = post_build(svc.url, f"{repo.spec(repo.sha)}")
    assert pinned.status == 200 and pinned.json()["id"] == good["id"]
    # A failed build is not reused: asking again builds again.
    retry = post_build(svc.url, repo.spec())
    assert retry.status == 201 and retry.json()["id"] != bad["id"]
    assert (
        read_events(f"{svc.url}/api/builds/{retry.json()['id']}/events").final["phase"] == "failed"
    )
