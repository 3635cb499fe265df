"""Plain helpers of the operations tests (HTTP, scraping, repositories)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FixtureRepo
from tests.realservices import GitServer, RegistryServer, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService

# Loopback only, never through a proxy named in the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def http(
    url: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 30
) -> Response:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(service: BinderBuildService) -> Samples:
    """Every sample of the service's real /metrics endpoint."""
    resp = http(f"{service.url}/metrics")
    assert resp.status == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain"), resp.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def build_url(service: BinderBuildService, spec: str, provider: str = "git", **query: str) -> str:
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return f"{service.url}/build/{provider}/{spec}" + (f"?{qs}" if qs else "")


def new_repo(git_server: GitServer, fail: bool = False) -> FixtureRepo:
    """A new Dockerfile repository on the session git server (never built before)."""
    marker = secrets.token_hex(6)
    name = f"ops-{marker}"
    sha = make_repo(git_server.root, name, dockerfile_repo_files(marker, fail=fail))
    return FixtureRepo(name, sha, git_server.git_url(name), marker)



def registry_config(registry: RegistryServer) -> str:
    """Service config lines for a registry, with its credentials when it has some."""
    lines = [
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']",
        "c.BinderBuild.concurrent_build_limit = 2",
        "c.DockerBuilder.build_network = 'none'",
        "c.BinderBuild.use_registry = True",
        f"c.DockerRegistry.url = {registry.url!r}",
        f"c.BinderBuild.image_prefix = '{registry.host}/bbops-'",
    ]
    if registry.htpasswd is not None:
        user, password = registry.htpasswd
        lines += [f"c.DockerRegistry.username = {user!r}", f"c.DockerRegistry.password = {password!r}"]
    return "\n".join(lines) + "\n"


def wait_for_health(service: BinderBuildService, status: int, timeout: float = 20) -> Response:
    """Poll /health until it answers ``status``; the last answer when it does."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = http(f"{service.url}/health")
        if last.status == status:
            return last
        time.sleep(0.2)
    raise AssertionError(
        f"/health did not become {status} within {timeout}s; last: "
        f"{last.status if last else None} {last.text if last else ''}"
    )
