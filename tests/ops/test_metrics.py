"""/metrics and the launch event log change as real builds happen.

One module-scoped service (session registry, session git server, real
engine) and two real builds shared by the tests: one that succeeds, asked
for by two clients at once (one build, one dedup join), and one that fails.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from binderbuild.eventlog import LAUNCH_EVENT_SCHEMA
from tests.conftest import FixtureRepo, service_config
from tests.ops.helpers import Samples, build_url, new_repo, scrape, value
from tests.realservices import GitServer, RegistryServer
from tests.service import BinderBuildService
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.docker, pytest.mark.registry]


@dataclass
class Scenario:
    service: BinderBuildService
    events_path: Path
    before: Samples
    after_build: Samples
    after_hit: Samples
    after_failure: Samples
    repo: FixtureRepo
    failing: FixtureRepo
    concurrent: list[SSEResult]
    hit: SSEResult
    failed: SSEResult


@pytest.fixture(scope="module")
def scenario(
    module_services: Callable[..., BinderBuildService],
    module_dir: Path,
    registry: RegistryServer,
    git_server: GitServer,
    docker_client,
) -> Scenario:
    events_path = module_dir / "events" / "launches.jsonl"
    service = module_services(
        service_config(registry, f"c.EventLog.sinks = ['file:{events_path}']")
    )
    repo = new_repo(git_server)
    failing = new_repo(git_server, fail=True)
    url = build_url(service, repo.spec("main"), build_only="true")

    before = scrape(service)
    with ThreadPoolExecutor(2) as pool:
        concurrent = list(pool.map(lambda _: read_events(url), range(2)))
    after_build = scrape(service)
    hit = read_events(url)
    after_hit = scrape(service)
    failed = read_events(build_url(service, failing.spec("main"), build_only="true"))
    after_failure = scrape(service)
    return Scenario(
        service,
        events_path,
        before,
        after_build,
        after_hit,
        after_failure,
        repo,
        failing,
        concurrent,
        hit,
        failed,
    )


def delta(a: Samples, b: Samples, name: str, **labels: str) -> float:
    return value(b, name, **labels) - value(a, name, **labels)


def test_builds_complete(scenario: Scenario) -> None:
    for result in scenario.concurrent:
        assert result.final["phase"] == "ready", result.events[-3:]
        assert result.final["imageName"].endswith(f":{scenario.repo.sha}")
    assert scenario.hit.phases == ["ready"]
    assert scenario.failed.final["phase"] == "failed"


def test_successful_build_is_counted_once(scenario: Scenario) -> None:
    a, b = scenario.before, scenario.after_build
    finished = "binderbuild_build_finished_total"
    assert delta(a, b, finished, status="success", provider="git") == 1
    assert delta(a, b, finished, status="failure", provider="git") == 0
    assert delta(a, b, "binderbuild_build_duration_seconds_count", status="success") == 1
    # The build took real time (repo2docker ran).
    assert delta(a, b, "binderbuild_build_duration_seconds_sum", status="success") > 1
    assert delta(a, b, "binderbuild_build_queue_wait_seconds_count") == 1
    # Two clients, one build: the second joined the first.
    assert delta(a, b, "binderbuild_build_joined_total") == 1
    # Nothing left running or queued.
    assert value(b, "binderbuild_build_running_builds") == 0
    assert value(b, "binderbuild_build_queued_builds") == 0


def test_registry_requests_are_attributed_to_the_registry(scenario: Scenario) -> None:
    a, b = scenario.before, scenario.after_build
    registry_requests = sum(
        delta(a, b, "binderbuild_upstream_request_duration_seconds_count",
              service="registry", provider="", code=code)
        for code in ("2xx", "4xx")
    )
    # At least the manifest check that found the image missing (404).
    assert registry_requests >= 1
    assert delta(
        a, b, "binderbuild_upstream_request_duration_seconds_count",
        service="registry", provider="", code="4xx",
    ) >= 1


def test_existing_image_is_not_built_again(scenario: Scenario) -> None:
    a, b = scenario.after_build, scenario.after_hit
    assert delta(a, b, "binderbuild_build_finished_total", status="success", provider="git") == 0
    assert delta(a, b, "binderbuild_build_duration_seconds_count", status="success") == 0


def test_failed_build_is_counted(scenario: Scenario) -> None:
    a, b = scenario.after_hit, scenario.after_failure
    assert delta(a, b, "binderbuild_build_finished_total", status="failure", provider="git") == 1
    assert delta(a, b, "binderbuild_build_duration_seconds_count", status="failure") == 1
    assert delta(a, b, "binderbuild_build_finished_total", status="success", provider="git") == 0


def test_no_repository_label_by_default(scenario: Scenario) -> None:
    labels = {name for (_, labelset) in scenario.after_failure for name, _ in labelset}
    assert "repo" not in labels
    assert "status" in labels and "provider" in labels


def read_launch_events(path: Path) -> list[dict]:
    assert path.exists(), f"no event log at {path}"
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_one_launch_event_per_request_matching_the_schema(scenario: Scenario) -> None:
    events = read_launch_events(scenario.events_path)
    # 2 concurrent + 1 registry hit + 1 failure: one event each.
    assert len(events) == 4, events
    for ev in events:
        jsonschema.validate(ev, LAUNCH_EVENT_SCHEMA)
        assert ev["provider"] == "git"
        assert ev["build_only"] is True
        assert ev["request_id"]
    ours = [e for e in events if e["ref"] == scenario.repo.sha]
    assert [e["status"] for e in ours] == ["success"] * 3
    assert sorted(e["built"] for e in ours) == [False, True, True]
    for ev in ours:
        assert ev["spec"] == scenario.repo.spec("main")
        assert ev["image"].endswith(f":{scenario.repo.sha}")
        assert ev["durations"]["total"] >= ev["durations"]["build"]
    assert max(e["durations"]["build"] for e in ours) > 1
    failures = [e for e in events if e["ref"] == scenario.failing.sha]
    assert len(failures) == 1
    assert failures[0]["status"] == "failure"
    assert failures[0]["error"]["type"] == "BuildFailed"
    assert failures[0]["built"] is True


def test_repository_label_when_enabled(
    module_services: Callable[..., BinderBuildService],
    registry: RegistryServer,
    git_server: GitServer,
    docker_client,
) -> None:
    service = module_services(
        service_config(registry, "c.BinderBuild.metrics_repo_labels = True")
    )
    failing = new_repo(git_server, fail=True)
    result = read_events(build_url(service, failing.spec("main"), build_only="true"))
    assert result.final["phase"] == "failed"
    samples = scrape(service)
    assert value(
        samples, "binderbuild_build_finished_total",
        status="failure", provider="git", repo=failing.url,
    ) == 1
