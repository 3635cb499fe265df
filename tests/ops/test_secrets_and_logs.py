"""No configured secret reaches logs, the launch event log, /metrics, /health
or the event streams; logs are JSON lines carrying request and build ids.

A real service with every kind of secret configured (the password of a real
htpasswd-protected registry it pushes to, a hub API token, git credentials,
an API token, the build-token key) runs a real build and then requests
whose *URLs contain the secrets*, which the access log and the launch event
log would print verbatim if scrubbing failed.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.ops.helpers import build_url, http, new_repo, registry_config
from tests.realservices import GitServer, RegistryServer
from tests.service import BinderBuildService
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@dataclass
class Run:
    service: BinderBuildService
    secrets: dict[str, str]
    url_password: str
    events_path: Path
    results: list[SSEResult]
    request_ids: list[str]
    metrics: str
    health: str


@pytest.fixture(scope="module")
def run(
    module_services: Callable[..., BinderBuildService],
    module_dir: Path,
    auth_registry: RegistryServer,
    git_server: GitServer,
    docker_client,
) -> Run:
    assert auth_registry.htpasswd is not None
    configured = {
        "registry password": auth_registry.htpasswd[1],
        "hub token": f"hubtok-{secrets.token_hex(16)}",
        "git credential": f"gitpw-{secrets.token_hex(16)}",
        "api token": f"apitok-{secrets.token_hex(16)}",
        "build token key": f"btkey-{secrets.token_hex(16)}",
    }
    events_path = module_dir / "secret-events.jsonl"
    service = module_services(
        registry_config(auth_registry)
        + f"c.BinderBuild.hub_api_token = {configured['hub token']!r}\n"
        + "c.RepoProvider.git_credentials = "
        + repr(f"username=bbops\npassword={configured['git credential']}")
        + "\n"
        + f"c.BinderBuild.api_tokens = {{{configured['api token']!r}: 'ci-robot'}}\n"
        + f"c.BinderBuild.build_token_secret = {configured['build token key']!r}\n"
        + "c.BinderBuild.json_logs = True\n"
        + "c.Application.log_level = 'DEBUG'\n"
        + f"c.EventLog.sinks = ['file:{events_path}']\n"
    )
    results: list[SSEResult] = []
    # A real build, pushed to the registry with its password, by an API caller,
    # with a (junk) build token in the query string.
    repo = new_repo(git_server)
    results.append(
        read_events(
            build_url(service, repo.spec("main"), build_only="true",
                      build_token=f"junk-{secrets.token_hex(8)}"),
            headers={"Authorization": f"Bearer {configured['api token']}"},
        )
    )
    assert results[0].final["phase"] == "ready", results[0].events[-5:]
    # Every secret in a request URL: the access log and the launch event log
    # print URLs and specs.
    for secret in configured.values():
        clone_url = f"http://127.0.0.1:{git_server.http_port}/{secret}.git"
        results.append(read_events(build_url(service, f"{quote(clone_url, safe='')}/main")))
    # Credentials embedded in a (percent-encoded) clone URL.
    url_password = f"urlpw-{secrets.token_hex(12)}"
    clone_url = f"http://bbops:{url_password}@127.0.0.1:{git_server.http_port}/{repo.name}.git"
    results.append(read_events(build_url(service, f"{quote(clone_url, safe='')}/main")))
    request_ids = [r.headers.get("x-request-id", "") for r in results]
    metrics = http(f"{service.url}/metrics").text
    health = http(f"{service.url}/health").text
    return Run(service, configured, url_password, events_path, results, request_ids, metrics, health)


def everything_captured(run: Run) -> dict[str, str]:
    return {
        "service log": run.service.log(),
        "launch events": run.events_path.read_text(),
        "metrics": run.metrics,
        "health": run.health,
    }


def stream_text(result: SSEResult) -> str:
    return json.dumps(result.events) + result.body


def test_every_request_ran(run: Run) -> None:
    assert len(run.results) == 7
    for result in run.results[1:-1]:
        # No such repositories: refused up front (4xx) or failed in the stream.
        assert result.status in (200, 400, 403, 404), (result.status, result.body)
        if result.status == 200:
            assert result.final["phase"] == "failed"
    # Credentials in a clone URL are refused before any work.
    assert run.results[-1].status == 400, run.results[-1].body
    assert "credentials" in run.results[-1].json()["message"]


def test_no_configured_secret_anywhere(run: Run) -> None:
    captured = everything_captured(run)
    # The captures are real: the log saw the build and the secret-bearing URLs.
    assert "build started" in captured["service log"]
    assert "***" in captured["service log"], "scrubbing never happened"
    assert len(captured["launch events"].splitlines()) >= 6
    assert "binderbuild_build_finished_total" in captured["metrics"]
    for what, text in captured.items():
        for name, secret in run.secrets.items():
            assert secret not in text, f"the {name} appears in the {what}"
    # Event streams go back to the client that sent the URL: a stream may
    # quote the client's own URL, but no other secret.
    sent = [None, *run.secrets.values(), None]
    for result, own in zip(run.results, sent, strict=True):
        for name, secret in run.secrets.items():
            if secret != own:
                assert secret not in stream_text(result), f"the {name} appears in an event stream"


def test_no_url_credentials_in_logs_or_launch_events(run: Run) -> None:
    captured = everything_captured(run)
    for what in ("service log", "launch events", "metrics"):
        assert run.url_password not in captured[what], f"URL credentials in the {what}"


def test_logs_are_json_lines_with_request_and_build_ids(run: Run) -> None:
    lines = [line for line in run.service.log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON log line: {line!r}")
    for record in records:
        assert {"time", "level", "logger", "message"} <= set(record), record
    # Every access-log line carries the id the response announced.
    access = [r for r in records if r["logger"] == "tornado.access"]
    assert access
    assert all(r.get("request_id") for r in access)
    logged_ids = {r["request_id"] for r in access}
    assert all(run.request_ids), run.request_ids
    assert set(run.request_ids) <= logged_ids
    # Build lines carry the build id; the build's start and end share it.
    started = [r for r in records if r["message"].startswith("build started")]
    finished = [r for r in records if r["message"].startswith("build finished")]
    assert started and finished
    assert started[0].get("build_id")
    assert started[0]["build_id"] == finished[0].get("build_id")
    # ...and the id of the request that started the build.
    assert started[0].get("request_id") == run.request_ids[0]
