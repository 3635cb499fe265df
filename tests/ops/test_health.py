"""/health follows real dependency outages, and the service keeps serving meanwhile."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.ops.helpers import Response, http, registry_config, scrape, wait_for_health
from tests.ops.relay import UnixSocketRelay
from tests.realservices import RegistryServer
from tests.service import BinderBuildService

pytestmark = [pytest.mark.docker, pytest.mark.registry]

TTL = 1.0  # health_check_ttl of the services here: outages show within seconds


def check(result: Response, name: str) -> dict:
    checks = {c["service"]: c for c in result.json()["checks"]}
    assert name in checks, checks
    return checks[name]


def assert_still_serving(service: BinderBuildService) -> None:
    versions = http(f"{service.url}/versions")
    assert versions.status == 200 and "binderbuild" in versions.json()
    assert http(f"{service.url}/metrics").status == 200


def test_health_goes_503_when_the_registry_stops_and_recovers(
    module_services: Callable[..., BinderBuildService], module_dir: Path, docker_client
) -> None:
    registry = RegistryServer(module_dir / "outage-registry", htpasswd=("ops", "outage-pw-123456"))
    registry.start()
    try:
        service = module_services(
            registry_config(registry) + f"c.BinderBuild.health_check_ttl = {TTL}\n"
        )
        healthy = wait_for_health(service, 200)
        body = healthy.json()
        assert body["ok"] is True
        assert check(healthy, "registry")["ok"] is True
        assert check(healthy, "registry")["required"] is True
        assert check(healthy, "build-backend")["ok"] is True
        assert check(healthy, "queue")["required"] is False
        assert http(f"{service.url}/health", method="HEAD").status == 200

        registry.stop()
        stopped_at = time.monotonic()
        down = wait_for_health(service, 503, timeout=15)
        assert time.monotonic() - stopped_at < 15
        assert down.json()["ok"] is False
        registry_check = check(down, "registry")
        assert registry_check["ok"] is False
        assert registry_check["message"]
        # Only the registry is down: the engine check still passes.
        assert check(down, "build-backend")["ok"] is True
        assert http(f"{service.url}/health", method="HEAD").status == 503
        assert_still_serving(service)

        registry.start()
        back = wait_for_health(service, 200, timeout=15)
        assert check(back, "registry")["ok"] is True
        assert_still_serving(service)
    finally:
        registry.stop()


@pytest.fixture
def docker_relay() -> Iterator[UnixSocketRelay]:
    # Short path: Unix socket paths are limited to ~107 bytes.
    relay = UnixSocketRelay(Path(tempfile.mkdtemp(prefix="bbrelay-")) / "docker.sock")
    relay.start()
    yield relay
    relay.stop()


def test_health_goes_503_when_the_docker_engine_is_unreachable(
    module_services: Callable[..., BinderBuildService], docker_relay: UnixSocketRelay, docker_client
) -> None:
    # No registry: the local engine is both the image store and the builder,
    # reached through the relay we can cut.
    service = module_services(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbops-local-'\n"
        f"c.BinderBuild.build_docker_host = {docker_relay.url!r}\n"
        f"c.BinderBuild.health_check_ttl = {TTL}\n"
    )
    healthy = wait_for_health(service, 200)
    assert check(healthy, "build-backend")["ok"] is True
    assert check(healthy, "image-store")["ok"] is True

    docker_relay.stop()
    down = wait_for_health(service, 503, timeout=15)
    assert check(down, "build-backend")["ok"] is False
    assert "Docker engine" in check(down, "build-backend")["message"]
    assert_still_serving(service)

    docker_relay.start()
    back = wait_for_health(service, 200, timeout=15)
    assert check(back, "build-backend")["ok"] is True


def test_probe_storm_costs_one_registry_request_per_ttl(
    module_services: Callable[..., BinderBuildService], module_dir: Path, docker_client
) -> None:
    registry = RegistryServer(module_dir / "storm-registry")
    registry.start()
    try:
        service = module_services(
            registry_config(registry) + "c.BinderBuild.health_check_ttl = 60\n"
        )
        assert http(f"{service.url}/health").status == 200

        def v2_requests() -> int:
            return sum(
                1 for line in registry.log_path.read_text().splitlines() if '"GET /v2/ ' in line
            )

        def registry_calls() -> float:
            """The service's own count of the requests it sent the registry."""
            return sum(
                count
                for (name, labels), count in scrape(service).items()
                if name == "binderbuild_upstream_request_duration_seconds_count"
                and ("service", "registry") in labels
            )

        def sync_access_log() -> None:
            """Return once the registry has logged every request answered so
            far: it logs a request before answering it, so a request of ours
            sent now is logged after them."""
            marker = f"log-barrier-{time.monotonic_ns()}"
            assert http(f"{registry.url}/v2/{marker}/tags/list").status == 404
            deadline = time.monotonic() + 10
            while marker not in registry.log_path.read_text():
                assert time.monotonic() < deadline, "the registry did not log the barrier"
                time.sleep(0.05)

        sync_access_log()
        before = v2_requests()
        assert before >= 1, "the first health check asks the registry"
        calls_before = registry_calls()
        assert calls_before >= 1
        with ThreadPoolExecutor(20) as pool:
            statuses = list(pool.map(lambda _: http(f"{service.url}/health").status, range(40)))
        assert statuses == [200] * 40
        assert registry_calls() == calls_before, "cached health checks must not call the registry"
        sync_access_log()
        assert v2_requests() == before, "cached health checks must not reach the registry"
    finally:
        registry.stop()
