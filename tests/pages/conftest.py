"""Fixtures for the pages' tests: binderbuild started for real, with and
without an operator's branding."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_config
from tests.service import BinderBuildService


# No redirects followed (the legacy redirect is what is tested), no proxies
# (everything is on loopback).
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    text: str = field(init=False)

    def __post_init__(self) -> None:
        self.text = self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def page_config(self) -> dict[str, Any]:
        """The JSON a page hands its script (<script id="page-config">)."""
        match = re.search(r'<script type="application/json" id="page-config">(.*?)</script>', self.text, re.S)
        assert match, f"no page-config in {self.text[:500]!r}"
        return json.loads(match.group(1))  # type: ignore[no-any-return]


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Response:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _OPENER.open(request, timeout=30) as resp:
            return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
    except urllib.error.HTTPError as exc:
        return Response(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


class PrefixedService(BinderBuildService):
    """A service with a base_url: ``url`` includes the prefix (so the
    readiness poll finds {base_url}versions), ``origin`` does not."""

    def __init__(self, workdir: Path, config: str, prefix: str) -> None:
        super().__init__(workdir, config)
        self.prefix = prefix.rstrip("/")

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.origin + self.prefix


def _start(workdir: Path, extra: str = "", base_url: str = "") -> BinderBuildService:
    config = service_config(None, extra)
    if base_url:
        config += f"c.BinderBuild.base_url = {base_url!r}\n"
        return PrefixedService(workdir, config, base_url).start()
    return BinderBuildService(workdir, config).start()


@pytest.fixture(scope="module")
def pages_service(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[BinderBuildService]:
    """binderbuild with the default configuration (no hub: it builds only)."""
    service = _start(tmp_path_factory.mktemp("pages"))
    yield service
    service.stop()
