"""Every /build stream of a build ends with a final event when the service stops.

Real service, engine, registry and git server. One client starts a slow
build, two more ask for the same image while it runs (they join it: their
streams are the build's subscribers, with no task of their own while it
runs), then the service gets SIGTERM, as a supervisor restarting it would
send. Each of the three must read a ``failed`` event saying the service is
shutting down before its stream closes (a client that sees only a cut
stream cannot tell a restart from a broken network), and each request ends
in one launch event in the event log.
"""

from __future__ import annotations

import http.client
import json
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.api.helpers import running_containers_with, slow_repo_files, wait_for
from tests.conftest import service_config
from tests.integration.test_build_pipeline import build_url

pytestmark = [pytest.mark.docker, pytest.mark.registry]

SHUTTING_DOWN = "the service is shutting down"


class Follower(threading.Thread):
    """Reads one event stream in the background, keeping each event as it
    arrives (the test waits for the first ones before it stops the service)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        try:
            conn.request(
                "GET", f"{parts.path}?{parts.query}", headers={"Accept": "text/event-stream"}
            )
            resp = conn.getresponse()
            assert resp.status == 200, resp.status
            data: list[str] = []
            while raw := resp.readline():
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                elif line == "" and data:
                    self.events.append(json.loads("\n".join(data)))
                    data = []
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            conn.close()

    def saw(self, text: str) -> bool:
        return any(text in str(e.get("message", "")) for e in list(self.events))


def test_every_stream_of_a_build_ends_with_failed_when_the_service_stops(
    start_service: Any,
    registry: Any,
    docker_client: Any,
    make_fixture_repo: Any,
    tmp_path: Path,
) -> None:
    launches = tmp_path / "launches.jsonl"
    svc = start_service(service_config(registry, f"c.EventLog.sinks = ['file:{launches}']"))
    marker = secrets.token_hex(6)
    repo = make_fixture_repo(files=slow_repo_files(marker, ticks=90))
    url = build_url(svc, repo.spec(repo.sha), build_only="true")

    first = Follower(url)
    first.start()
    wait_for("the build step to print", lambda: first.saw(f"tick-1-{marker}"), timeout=180)
    joined = [Follower(url), Follower(url)]
    for follower in joined:
        follower.start()
    # Each joined stream has caught up with the build's log so far.
    for follower in joined:
        wait_for("a joined stream to catch up", lambda f=follower: f.saw(f"tick-1-{marker}"), 30)
    assert running_containers_with(docker_client, marker)

    svc.stop()
    for follower in (first, *joined):
        follower.join(60)
        assert not follower.is_alive(), "the stream stayed open after the service stopped"
    for name, follower in (("first", first), ("joined", joined[0]), ("joined", joined[1])):
        assert follower.error is None, (name, follower.error, follower.events[-3:])
        final = follower.events[-1]
        assert final["phase"] == "failed", (name, follower.events[-3:], svc.log()[-3000:])
        assert SHUTTING_DOWN in final["message"], (name, final)
    # Each /build request ends in one launch event (the event log closes
    # after the streams wrote their end, not before).
    events = [json.loads(line) for line in launches.read_text().splitlines()]
    ours = [e for e in events if repo.name in json.dumps(e)]
    assert len(ours) == 3, (ours, svc.log()[-3000:])
