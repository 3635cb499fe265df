"""Issue 2: the single-machine build pipeline against a real engine, registry and git server."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import service_config
from tests.ops.helpers import http, scrape, value
from tests.realservices import FAILURE_MESSAGE, RegistryServer, dockerfile_repo_files
from tests.sse import read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]

PHASE_ORDER = ["waiting", "fetching", "building", "pushing", "ready"]


def build_url(service, spec: str, provider: str = "git", **query: str) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"{service.url}/build/{provider}/{spec}" + (f"?{qs}" if qs else "")


def builds_of(service, spec: str, image_name: str, provider: str = "git") -> list[dict[str, Any]]:
    """The builds this service ran of ``image_name`` (the builds API's list for
    the spec's repository; records of images found already built don't count)."""
    query = f"provider={provider}&spec={quote(spec, safe='')}&limit=100"
    resp = http(f"{service.url}/api/builds?{query}")
    assert resp.status == 200, resp.text
    return [b for b in resp.json()["builds"] if b["image"] == image_name and not b["found_existing"]]


def builds_started(service) -> int:
    """Builds this service process has started, of any image (every build that
    gets a slot observes its queue wait once)."""
    return int(value(scrape(service), "binderbuild_build_queue_wait_seconds_count"))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def assert_in_order(phases: list[str], expected: list[str]) -> None:
    firsts = [phases.index(p) for p in expected]
    assert firsts == sorted(firsts), f"phases out of order: {phases}"


def test_build_streams_every_phase_and_pushes(service, registry, make_fixture_repo):
    repo = make_fixture_repo()
    result = read_events(build_url(service, repo.spec("main"), build_only="true"))

    assert result.status == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    phases = result.phases
    for phase in PHASE_ORDER:
        assert phase in phases, f"missing {phase}: {phases}"
    assert_in_order(phases, PHASE_ORDER)
    assert phases[-1] == "ready"
    image = result.final["imageName"]
    assert image.startswith(f"{registry.host}/bbtest-")
    assert image.endswith(f":{repo.sha}")
    assert all(isinstance(e["message"], str) for e in result.events)
    # Finished streams tell EventSource clients not to reconnect.
    assert result.retry == 2147483647
    # The build log reached the client.
    assert any(repo.marker in e["message"] for e in result.events)

    repository, tag = image.split("/", 1)[1].rsplit(":", 1)
    assert registry.manifest_status(repository, tag) == 200

    # Same ref again, from a fresh service process (no caches): nothing is built,
    # the answer comes from the registry.
    second = read_events(build_url(service, repo.spec("main"), build_only="true"))
    assert second.phases == ["ready"]
    assert second.final["imageName"] == image
    (build,) = builds_of(service, repo.spec("main"), image)
    assert build["state"] == "succeeded"
    assert builds_started(service) == 1


def test_cached_answer_survives_restart(start_service, registry, docker_client, make_fixture_repo):
    repo = make_fixture_repo()
    first = start_service(service_config(registry))
    built = read_events(build_url(first, repo.spec(repo.sha)))
    assert built.final["phase"] == "ready", built.events[-3:]
    first.stop()
    again = start_service(service_config(registry))
    result = read_events(build_url(again, repo.spec(repo.sha)))
    assert result.phases == ["ready"]
    assert builds_of(again, repo.spec(repo.sha), result.final["imageName"]) == []
    assert builds_started(again) == 0


def test_ten_concurrent_requests_cause_one_build(service, make_fixture_repo):
    files = dockerfile_repo_files("concurrent0")
    # A slow step keeps the build running while all ten clients attach.
    files["Dockerfile"] = files["Dockerfile"].replace("USER 1000", "RUN sleep 3\nUSER 1000")
    repo = make_fixture_repo(files=files)
    url = build_url(service, repo.spec("main"), build_only="true")
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: read_events(url), range(10)))
    images = {r.final.get("imageName") for r in results}
    assert [r.final["phase"] for r in results] == ["ready"] * 10, [r.final for r in results]
    assert len(images) == 1
    (build,) = builds_of(service, repo.spec("main"), images.pop())
    assert build["state"] == "succeeded"
    assert builds_started(service) == 1
    # Every client saw the build's log, late joiners included: the nine that
    # did not start the build joined it.
    assert all("building" in r.phases for r in results)
    assert value(scrape(service), "binderbuild_build_joined_total") == 9


def test_keepalive_comments_while_idle(start_service, registry, docker_client, make_fixture_repo):
    files = dockerfile_repo_files("keepalive0")
    files["Dockerfile"] = files["Dockerfile"].replace("USER 1000", "RUN sleep 4\nUSER 1000")
    repo = make_fixture_repo(files=files)
    svc = start_service(service_config(registry, "c.BinderBuild.keepalive_interval = 0.5"))
    result = read_events(build_url(svc, repo.spec("main")))
    assert result.final["phase"] == "ready"
    assert "keepalive" in result.comments


def test_failing_dockerfile_reports_the_reason(service, registry, make_fixture_repo):
    repo = make_fixture_repo(fail=True)
    result = read_events(build_url(service, repo.spec("main")))
    final = result.final
    assert final["phase"] == "failed"
    assert final["status_code"] == 500
    assert FAILURE_MESSAGE in final["message"] or any(
        FAILURE_MESSAGE in e["message"] for e in result.events
    )
    assert "repo2docker exited" in final["message"]
    # Nothing was pushed for it.
    with urllib.request.urlopen(f"{registry.url}/v2/_catalog") as resp:
        catalog = json.load(resp)["repositories"]
    assert not any(repo.marker in name for name in catalog)
    # The service keeps serving.
    assert read_events(f"{service.url}/versions").status == 200


def test_unknown_ref_is_a_clear_404(service, make_fixture_repo):
    repo = make_fixture_repo()
    result = read_events(build_url(service, repo.spec("no-such-branch")))
    assert result.final["phase"] == "failed"
    assert result.final["status_code"] == 404
    assert "no-such-branch" in result.final["message"]


@pytest.mark.parametrize(
    ("provider", "spec", "status"),
    [
        ("nope", "a/b/c", 404),
        ("git", "no-slash-at-all", 400),
        ("git", quote("ext::sh -c touch% /tmp/pwned", safe="") + "/HEAD", 400),
        ("git", quote("fd::17", safe="") + "/HEAD", 400),
        ("git", quote("file:///etc", safe="") + "/HEAD", 400),
        ("git", quote("--upload-pack=touch /tmp/pwned", safe="") + "/HEAD", 400),
        ("git", quote("ssh://example.org/repo", safe="") + "/HEAD", 400),
        ("git", quote("https://example.org/repo", safe="") + "/--output=/tmp/x", 400),
        ("git", quote("https://example.org/repo", safe="") + "/a..b", 400),
        ("git", quote("https://exa\nmple.org/repo", safe="") + "/HEAD", 400),
        # Internal hosts are refused with the words and status of an
        # unreachable one (no oracle for internal names or open ports).
        ("git", quote("http://169.254.169.254/latest", safe="") + "/HEAD", 502),
        ("git", quote("http://10.1.2.3/repo.git", safe="") + "/HEAD", 502),
        ("git", quote("http://[::1]:9/repo.git", safe="") + "/HEAD", 502),
        ("git", quote("http://127.0.0.1:1/repo.git", safe="") + "/HEAD", 502),
    ],
)
def test_bad_and_hostile_specs_are_refused(start_service, docker_client, provider, spec, status):
    # Loopback is allowed in the test config, so 127.0.0.1 (not ::1) passes the address check and
    # fails at the git server (connection refused): 502, never a crash.
    svc = start_service(service_config(None))
    result = read_events(build_url(svc, spec, provider))
    # Checks that need no I/O answer before the stream (HTTP status); those that
    # need DNS or git answer with a failed event carrying the status.
    if result.status != 200:
        refused_with, message = result.status, result.json()["message"]
        assert result.json()["status_code"] == result.status
    else:
        assert result.phases == ["failed"], result.events
        refused_with, message = result.final["status_code"], result.final["message"]
    assert refused_with == status, (refused_with, message)
    assert message
    # Nothing was built, the service still answers.
    assert builds_started(svc) == 0
    assert read_events(f"{svc.url}/versions").status == 200


def test_internal_addresses_refused_without_allow_list(start_service, docker_client, make_fixture_repo):
    repo = make_fixture_repo()
    svc = start_service("c.BinderBuild.image_prefix = 'bbtest-local-'\n")
    result = read_events(build_url(svc, repo.spec("main")))
    assert result.final["phase"] == "failed"
    # Refused with the words of an unreachable host: a stranger cannot tell
    # internal names or open ports apart (issue 11). The log says why.
    assert result.final["status_code"] == 502
    assert "Could not reach the repository" in result.final["message"]
    assert "internal address" in svc.log()


@pytest.mark.parametrize("accept", [None, "application/json"])
def test_stream_without_event_stream_accept_fails_inside_the_stream(service, accept):
    """BinderHub's answer: the stream opens (200, text/event-stream) and its one
    event is ``failed`` with status_code 400, so a client that reads events
    sees why; nothing is resolved or built."""
    headers = {"Accept": accept} if accept else {}
    req = urllib.request.Request(f"{service.url}/build/git/x/y", headers=headers)
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        body = resp.read().decode()
    events = [json.loads(line[len("data:"):]) for line in body.splitlines() if line.startswith("data:")]
    assert len(events) == 1, body
    assert events[0]["phase"] == "failed"
    assert events[0]["status_code"] == 400
    assert "Accept" in events[0]["message"] and "text/event-stream" in events[0]["message"]


def test_malformed_build_only_is_refused_before_any_stream(service):
    for accept in ("text/event-stream", None):
        headers = {"Accept": accept} if accept else {}
        req = urllib.request.Request(f"{service.url}/build/git/x/y?build_only=maybe", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=30)
        assert info.value.code == 400
        assert "build_only" in json.load(info.value)["message"]


def test_registry_down_is_an_error_not_a_rebuild(start_service, docker_client, tmp_path, make_fixture_repo):
    outage = RegistryServer(tmp_path / "outage-registry")
    outage.start()
    try:
        svc = start_service(service_config(outage))
        outage.stop()
        repo = make_fixture_repo()
        result = read_events(build_url(svc, repo.spec("main")))
        assert result.final["phase"] == "failed"
        assert result.final["status_code"] == 503
        assert "registry" in result.final["message"].lower()
        assert "building" not in result.phases
        assert builds_started(svc) == 0
        # Back up: the same request now builds.
        outage.start()
        result = read_events(build_url(svc, repo.spec("main")))
        assert result.final["phase"] == "ready", result.events[-3:]
    finally:
        outage.stop()


def slow_repo(make_fixture_repo, seconds: int):
    files = dockerfile_repo_files(secrets.token_hex(4))
    files["Dockerfile"] = files["Dockerfile"].replace("USER 1000", f"RUN sleep {seconds}\nUSER 1000")
    return make_fixture_repo(files=files)


def test_queue_reports_positions(start_service, registry, docker_client, make_fixture_repo):
    svc = start_service(service_config(registry, "c.BinderBuild.concurrent_build_limit = 1"))
    first, second = slow_repo(make_fixture_repo, 3), make_fixture_repo()
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(read_events, build_url(svc, first.spec("main")))
        # The first build takes the only slot before the second request comes.
        wait_until(
            lambda: value(scrape(svc), "binderbuild_build_running_builds") == 1,
            "the first build is running",
        )
        assert not running.done()
        queued = pool.submit(read_events, build_url(svc, second.spec("main")))
        results = [running.result(), queued.result()]
    assert [r.final["phase"] for r in results] == ["ready", "ready"]
    waiting = [e for e in results[1].events if e["phase"] == "waiting" and "position" in e]
    assert waiting and waiting[0]["position"] == 1, results[1].events[:3]
    assert "queue" in waiting[0]["message"]


def test_client_leaving_does_not_stop_the_build(service, make_fixture_repo):
    repo = slow_repo(make_fixture_repo, 3)
    url = build_url(service, repo.spec("main"))
    partial = read_events(url, stop_after=2)  # then the connection closes
    assert len(partial.events) == 2 and partial.events[-1]["phase"] != "ready"
    result = read_events(url)
    assert result.final["phase"] == "ready"
    (build,) = builds_of(service, repo.spec("main"), result.final["imageName"])
    assert build["state"] == "succeeded"
    assert builds_started(service) == 1
