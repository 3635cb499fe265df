"""Small clients and fixtures' content for the builds API tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jsonschema import Draft202012Validator

from tests.realservices import dockerfile_repo_files

ROOT = Path(__file__).resolve().parent.parent.parent
OPENAPI = ROOT / "binderbuild" / "openapi.yaml"
DOCS_OPENAPI = ROOT / "docs" / "openapi.yaml"

# urllib must not send loopback requests to a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def json(self) -> Any:
        return json.loads(self.text)


def call(
    url: str,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 60,
) -> Response:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json"} if body is not None else {}
    hdrs.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            return Response(
                resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode()
            )
    except urllib.error.HTTPError as exc:
        return Response(
            exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()
        )


def post_build(
    base: str,
    spec: str,
    provider: str = "git",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> Response:
    return call(
        f"{base}/api/builds", "POST", {"provider": provider, "spec": spec, **fields}, headers
    )


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float = 120, interval: float = 0.2
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def slow_repo_files(marker: str, ticks: int) -> dict[str, str]:
    """A fixture repository whose build prints ``tick-N-<marker>`` once a second.

    The ticks make a build last long enough to drop and resume a stream or
    cancel it mid-step, and each tick line is a unique event to count.
    """
    files = dockerfile_repo_files(marker)
    step = f"RUN for i in $(seq 1 {ticks}); do echo tick-$i-{marker}; sleep 1; done"
    lines = files["Dockerfile"].splitlines()
    lines.insert(lines.index("USER 1000"), step)
    files["Dockerfile"] = "\n".join(lines) + "\n"
    return files


@cache
def openapi_doc() -> dict[str, Any]:
    return yaml.safe_load(OPENAPI.read_text())  # type: ignore[no-any-return]


def assert_schema(instance: Any, name: str) -> None:
    """Validate a response body against components/schemas/<name> of openapi.yaml."""
    doc = openapi_doc()
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=str)
    assert not errors, f"{name} does not match the OpenAPI schema: {errors[0].message}\n{instance}"


def build_status(base: str, build_id: str) -> dict[str, Any]:
    resp = call(f"{base}/api/builds/{build_id}")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert_schema(body, "Build")
    return body  # type: ignore[no-any-return]


def list_builds(base: str, provider: str, repo: str) -> list[dict[str, Any]]:
    """The list endpoint; unlike the status endpoint it does not count as watching."""
    from urllib.parse import urlencode

    resp = call(f"{base}/api/builds?{urlencode({'provider': provider, 'repo': repo})}")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert_schema(body, "BuildList")
    return body["builds"]  # type: ignore[no-any-return]


def running_containers_with(docker_client: Any, marker: str) -> list[Any]:
    """Running containers whose command mentions the marker (build steps)."""
    found = []
    for container in docker_client.containers.list(filters={"status": "running"}):
        command = container.attrs.get("Config", {}).get("Cmd") or []
        if marker in " ".join(command if isinstance(command, list) else [str(command)]):
            found.append(container)
    return found


def follow_until(url: str, needle: str, timeout: float = 180) -> list[dict[str, Any]]:
    """Follow an event stream until an event's message contains ``needle``,
    then drop the connection (a client going away mid-build)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path, headers={"Accept": "text/event-stream"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = resp.readline().decode()
            if not line:
                break
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if needle in events[-1]["message"]:
                    return events
                if events[-1]["phase"] in ("built", "failed"):
                    break
        raise AssertionError(f"{needle!r} never appeared; last events: {events[-3:]}")
    finally:
        conn.close()
