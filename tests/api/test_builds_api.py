"""The builds API against real builds: resume with Last-Event-ID, one build per
image under concurrent POSTs, image lookups, and the /build stream sharing
the same build.

binderbuild runs as its own process, builds with repo2docker on the real
Docker engine and pushes to the session's real registry.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest

from tests.api.helpers import (
    assert_schema,
    build_status,
    call,
    list_builds,
    post_build,
    slow_repo_files,
    wait_for,
)
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]


def test_resume_with_last_event_id_gets_each_missed_event_once(service, make_fixture_repo):
    marker = secrets.token_hex(6)
    repo = make_fixture_repo(files=slow_repo_files(marker, ticks=8))
    created = post_build(service.url, repo.spec())
    assert created.status == 201, created.text
    build = created.json()
    assert_schema(build, "Build")
    assert created.headers["location"] == f"/api/builds/{build['id']}"
    events_url = f"{service.url}/api/builds/{build['id']}/events"

    k = 3
    first = read_events(events_url, stop_after=k)  # then the client drops
    assert first.status == 200 and first.ids == ["0", "1", "2"]

    # The build goes on while nobody is connected; come back mid-build.
    def progressed() -> dict | None:
        status = build_status(service.url, build["id"])
        return status if status["event_count"] >= k + 3 else None

    at_reconnect = wait_for("events produced while disconnected", progressed, timeout=180)
    assert at_reconnect["state"] == "running", at_reconnect
    rest = read_events(events_url, headers={"Last-Event-ID": first.ids[-1]})
    assert rest.status == 200

    ids = [int(i) for i in first.ids + rest.ids]
    assert ids == list(range(len(ids))), f"gaps or duplicates: {ids}"
    assert rest.final["phase"] == "built", rest.final
    assert rest.retry == 2147483647  # no automatic reconnect after the end
    # Missed events were replayed, and the stream then went on live.
    assert len(rest.events) > at_reconnect["event_count"] - k

    # Every tick of the build's output arrived exactly once across both streams.
    messages = "".join(e["message"] for e in first.events + rest.events)
    for tick in range(1, 9):
        assert messages.count(f"tick-{tick}-{marker}") == 1, tick

    # A replay of the finished build is the same stream, id for id.
    full = read_events(events_url)
    assert full.ids == first.ids + rest.ids
    assert full.events == first.events + rest.events
    # ?last_event_id= does the same for clients that cannot set headers.
    tail = read_events(f"{events_url}?last_event_id=4")
    assert tail.ids == full.ids[5:] and tail.events == full.events[5:]

    finished = build_status(service.url, build["id"])
    assert finished["state"] == "succeeded" and finished["phase"] == "built"
    assert finished["resolved_ref"] == repo.sha and finished["failure"] is None
    assert finished["timings"]["finished"] and finished["timings"]["build_seconds"] > 5
    assert finished["event_count"] == len(full.events)


def test_bad_resume_requests_are_refused(service, make_fixture_repo):
    repo = make_fixture_repo()
    build = post_build(service.url, repo.spec()).json()
    events_url = f"{service.url}/api/builds/{build['id']}/events"
    read_events(events_url)  # until it is finished
    count = build_status(service.url, build["id"])["event_count"]
    for bad in ("abc", "-2", "1.5", str(count), "99999999999999"):
        resp = read_events(events_url, headers={"Last-Event-ID": bad})
        assert resp.status == 400, (bad, resp.status, resp.body)
        assert_schema(resp.json(), "Error")
    unknown = read_events(f"{service.url}/api/builds/0123456789abcdef/events")
    assert unknown.status == 404 and "0123456789abcdef" in unknown.json()["message"]
    last = read_events(events_url, headers={"Last-Event-ID": str(count - 2)})
    assert last.ids == [str(count - 1)] and last.final["phase"] == "built"


def test_concurrent_posts_for_one_image_give_one_build(service, make_fixture_repo):
    marker = secrets.token_hex(6)
    repo = make_fixture_repo(files=slow_repo_files(marker, ticks=6))
    spec = repo.spec()

    missing = call(f"{service.url}/api/images/git/{spec}")
    assert missing.status == 404, missing.text
    missing_body = missing.json()
    assert_schema(missing_body, "Error")
    assert missing_body["resolved_ref"] == repo.sha
    assert missing_body["image"].endswith(f":{repo.sha}") and "bbtest-" in missing_body["image"]

    start = threading.Barrier(8)

    def post(_: int):
        start.wait()
        return post_build(service.url, spec)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1, [a.text for a in answers]
    assert sorted(a.status for a in answers) == [200] * 7 + [201]
    build_id = ids.pop()
    for answer in answers:
        assert_schema(answer.json(), "Build")

    # The Binder protocol's stream for the same image joins that build too.
    protocol: list[SSEResult] = []
    reader = threading.Thread(
        target=lambda: protocol.append(
            read_events(f"{service.url}/build/git/{spec}?build_only=true")
        )
    )
    reader.start()
    own = read_events(f"{service.url}/api/builds/{build_id}/events")
    reader.join(120)
    assert own.final["phase"] == "built"
    assert protocol and protocol[0].status == 200, protocol and protocol[0].body
    shared = protocol[0]
    assert shared.final["phase"] == "ready" and shared.final["imageName"] == own.final["imageName"]
    # It streamed the build's own output: it followed the build, not a copy.
    assert f"tick-6-{marker}" in "".join(e["message"] for e in shared.events)

    builds = list_builds(service.url, "git", repo.url)
    assert [b["id"] for b in builds] == [build_id], builds
    assert builds[0]["state"] == "succeeded"
    # Listing by any spec of the repository finds the same builds.
    by_spec = call(f"{service.url}/api/builds?provider=git&spec={quote(spec, safe='')}")
    assert [b["id"] for b in by_spec.json()["builds"]] == [build_id]

    # Once built: the image exists, and POST is still idempotent on it.
    found = call(f"{service.url}/api/images/git/{spec}")
    assert found.status == 200, found.text
    image = found.json()
    assert_schema(image, "Image")
    assert image["image"] == own.final["imageName"] and image["digest"].startswith("sha256:")
    again = post_build(service.url, spec)
    assert again.status == 200 and again.json()["id"] == build_id


def test_malformed_requests_are_4xx(service):
    base = service.url
    cases = [
        call(
            f"{base}/api/builds",
            "POST",
            raw=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        call(
            f"{base}/api/builds",
            "POST",
            raw=b'{"provider": "git"}',
            headers={"Content-Type": "application/json"},
        ),
        call(f"{base}/api/builds", "POST", {"provider": "git", "spec": "x/y", "extra": 1}),
        call(f"{base}/api/builds", "POST", {"provider": "git", "spec": 5}),
        call(f"{base}/api/builds", "POST", {"provider": "git", "spec": "x/y", "build_only": False}),
        call(f"{base}/api/builds", "POST", {"provider": "git", "spec": "no-slash"}),
        call(f"{base}/api/builds", "POST", {"provider": "git", "spec": "file%3A%2F%2F%2Fetc/main"}),
        call(f"{base}/api/builds?provider=git"),
        call(f"{base}/api/builds?provider=git&repo=a&limit=0"),
        call(f"{base}/api/images/git/not-a-spec"),
    ]
    for resp in cases:
        assert resp.status == 400, (resp.status, resp.text)
        assert_schema(resp.json(), "Error")
    wrong_type = call(
        f"{base}/api/builds", "POST", raw=b"provider=git", headers={"Content-Type": "text/plain"}
    )
    assert wrong_type.status == 415
    unknown_provider = call(f"{base}/api/builds", "POST", {"provider": "nope", "spec": "a/b"})
    assert (
        unknown_provider.status == 404 and "Known providers" in unknown_provider.json()["message"]
    )
    not_allowed = call(f"{base}/api/builds/0123456789abcdef", "PUT", raw=b"")
    assert not_allowed.status == 405 and not_allowed.headers["allow"] == "GET, DELETE"
    assert call(f"{base}/api/builds/0123456789abcdef").status == 404
    assert call(f"{base}/api/builds/0123456789abcdef/log").status == 404
