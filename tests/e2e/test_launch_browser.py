"""The whole way through in Chromium: home page -> loading page -> the
running Jupyter server of a fixture repository, on a real JupyterHub (with
its proxy and DockerSpawner) and the real Docker engine. And launch links
with hostile urlpath/labpath/filepath values, which must never take the
browser off the launched server's own path."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.conftest import service_config
from tests.hubservice import HubService, HubUnavailable
from tests.realservices import GitServer, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]

# binderbuild's image prefix without a registry (tests/conftest.py), the
# only one this hub's spawner accepts.
IMAGE_PREFIX = "bbtest-local-"

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Hello from binderbuild"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[HubService]:
    try:
        service = HubService(tmp_path_factory.mktemp("e2e-hub"), [IMAGE_PREFIX]).start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    yield service
    service.stop()
    service.remove_containers(docker_client)


@pytest.fixture(scope="module")
def launching_service(
    hub: HubService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BinderBuildService]:
    config = service_config(None, hub.binderbuild_config())
    service = BinderBuildService(tmp_path_factory.mktemp("e2e-bb-hub"), config).start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def notebook_repo(git_server: GitServer) -> str:
    marker = secrets.token_hex(6)
    files = dockerfile_repo_files(marker)
    files["hello-binder.ipynb"] = json.dumps(NOTEBOOK)
    name = f"e2e-nb-{marker}"
    make_repo(git_server.root, name, files)
    return git_server.git_url(name)


def test_launch_from_home_page_opens_jupyter(
    browser_env: Path, launching_service: BinderBuildService, hub: HubService, notebook_repo: str, scenario: Any
) -> None:
    prefix = f"{hub.url}user/"
    r = scenario(
        "launch",
        {"url": launching_service.url + "/", "repo": notebook_repo, "ref": "main",
         "path": "hello-binder.ipynb", "serverPrefix": prefix, "artifacts": str(browser_env)},
        timeout=600,
    )
    assert r["loadingUrl"] == (
        f"{launching_service.url}/v2/git/{quote(notebook_repo, safe='')}/main?labpath=hello-binder.ipynb"
    )
    # The loading page sent the browser to the server, with its token, on the file.
    to_server = [u for u in r["navigations"] if u.startswith(prefix)]
    assert to_server, r["navigations"]
    first = urlsplit(to_server[0])
    user_path = "/".join(first.path.split("/")[:3]) + "/"
    assert first.path == f"{user_path}lab/tree/hello-binder.ipynb", to_server[0]
    assert "token=" in first.query
    assert r["finalUrl"].startswith(f"{hub.url.rstrip('/')}{user_path}"), r["finalUrl"]
    # JupyterLab shows the notebook (its tab title, shortened by Lab).
    assert "hello-binder" in r["title"] and "JupyterLab" in r["title"], r["title"]
    assert r["errors"] == [] or all("favicon" in e or "404" in e for e in r["errors"]), r["errors"]


HOSTILE = [
    "urlpath=//evil.example/x",
    "urlpath=https://evil.example/",
    "urlpath=javascript:alert(document.domain)",
    "urlpath=..%2F..%2Fhub%2Fadmin",
    "labpath=../../hub/admin",
    "filepath=%252e%252e/%252e%252e/hub/home",
]


def test_hostile_paths_never_leave_the_server(
    browser_env: Path, launching_service: BinderBuildService, hub: HubService, notebook_repo: str, scenario: Any
) -> None:
    base = f"{launching_service.url}/v2/git/{quote(notebook_repo, safe='')}/main"
    urls = [f"{base}?{query}" for query in HOSTILE]
    prefix = f"{hub.url}user/"
    r = scenario("hostile", {"urls": urls, "serverPrefix": prefix}, timeout=900)
    assert len(r["results"]) == len(HOSTILE)
    for query, got in zip(HOSTILE, r["results"], strict=True):
        assert got["serverNotice"], (query, "the server did not flag the value")
        after = got["navigations"][1:]  # the first is the loading page itself
        assert after, (query, got)
        server_root = "/".join(urlsplit(after[0]).path.split("/")[:3]) + "/"
        for url in after:
            parts = urlsplit(url)
            assert f"{parts.scheme}://{parts.netloc}/" == hub.url, (query, url)
            assert parts.path.startswith(server_root), (query, url)
            assert "evil" not in url and "/hub/admin" not in url and "/hub/home" not in url, (query, url)
        # The redirect itself went to the server's own root, with its token.
        first = urlsplit(after[0])
        assert first.path == server_root and first.query.startswith("token="), (query, after[0])
        assert got["finalUrl"].startswith(hub.url.rstrip("/") + server_root), (query, got["finalUrl"])
    assert r["errors"] == [] or all("favicon" in e or "404" in e for e in r["errors"]), r["errors"]
