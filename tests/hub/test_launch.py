"""Issue 3: build and launch through binderbuild's /build stream onto a real hub.

One fixture repository is built once for the module (a real repo2docker
build); every test here launches that image again.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import service_config
from tests.hub.conftest import IMAGE_PREFIX
from tests.hubservice import _OPENER, HubService
from tests.realservices import GitServer, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.hub, pytest.mark.docker]


@dataclass(frozen=True)
class Repo:
    url: str
    sha: str
    marker: str

    @property
    def spec(self) -> str:
        return f"{quote(self.url, safe='')}/{self.sha}"


def http_status(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def start_binderbuild(workdir: Path, hub: HubService, extra: str = "") -> BinderBuildService:
    config = service_config(None, hub.binderbuild_config() + extra)
    assert f"image_prefix = '{IMAGE_PREFIX}'" in config
    return BinderBuildService(workdir, config).start()


@pytest.fixture(scope="module")
def repo(git_server: GitServer) -> Repo:
    marker = secrets.token_hex(6)
    name = f"launch-{marker}"
    sha = make_repo(git_server.root, name, dockerfile_repo_files(marker))
    return Repo(git_server.git_url(name), sha, marker)


@pytest.fixture(scope="module")
def binderbuild(
    hub: HubService, docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BinderBuildService]:
    service = start_binderbuild(tmp_path_factory.mktemp("bb-launch"), hub)
    yield service
    service.stop()


@pytest.fixture(scope="module")
def launched(
    binderbuild: BinderBuildService, repo: Repo, hub: HubService, docker_client: Any
) -> Iterator[SSEResult]:
    """The module's one build + launch; its server keeps running for the module."""
    result = read_events(f"{binderbuild.url}/build/git/{repo.spec}", timeout=600)
    yield result
    final = result.events[-1] if result.events else {}
    if final.get("phase") == "ready":
        hub.delete_user(final["url"][len(hub.url) + len("user/") :].split("/")[0])
    if final.get("image") or final.get("imageName"):
        try:
            docker_client.images.remove(final.get("image") or final["imageName"], force=True)
        except Exception:
            pass


def test_build_and_launch_ends_ready(
    launched: SSEResult,
    binderbuild: BinderBuildService,
    hub: HubService,
    repo: Repo,
    docker_client: Any,
) -> None:
    assert launched.status == 200, launched.body
    phases = launched.phases
    assert phases[-1] == "ready", launched.events[-3:]
    for phase in ("building", "built", "launching"):
        assert phase in phases, phases
    assert phases.index("built") < phases.index("launching") < phases.index("ready")
    ready = launched.final

    # The protocol's ready fields.
    assert ready["url"].startswith(f"{hub.url}user/"), ready["url"]
    assert ready["token"]
    assert ready["image"].startswith(IMAGE_PREFIX) and ready["image"].endswith(f":{repo.sha}")
    assert ready["repo_url"] == repo.url
    assert ready["binder_request"] == f"v2/git/{repo.spec}"
    assert ready["binder_persistent_request"] == f"v2/git/{repo.spec}"
    assert ready["binder_launch_host"] == f"{binderbuild.url}/"
    assert "binder_ref_url" in ready
    # The hub's spawn progress was relayed.
    launching = [e["message"] for e in launched.events if e["phase"] == "launching"]
    assert any("Starting a container" in m for m in launching), launching

    # The real Jupyter server answers with the token, and only with it.
    status, body = http_status(
        ready["url"] + "api/status", {"Authorization": f"token {ready['token']}"}
    )
    assert status == 200, body
    assert {"started", "kernels", "connections"} <= set(json.loads(body))
    status, _ = http_status(ready["url"] + "api/status")
    assert status != 200
    assert status in (302, 401, 403)
    status, _ = http_status(
        ready["url"] + "api/status", {"Authorization": "token not-the-token-0000"}
    )
    assert status != 200
    # Binder clients open the server with ?token= in the URL.
    status, _ = http_status(ready["url"] + f"api/status?token={ready['token']}")
    assert status == 200

    # The server runs from the built image, isolated on the servers' network
    # (listening on its container address), with the binder fields.
    user = ready["url"][len(hub.url) + len("user/") :].strip("/").split("/")[0]
    server = hub.user(user)["servers"][""]
    name = server["state"]["object_name"]  # DockerSpawner escapes user names
    containers = [c for c in hub.containers(docker_client) if c.name == name]
    assert len(containers) == 1, [c.name for c in hub.containers(docker_client)]
    attrs = containers[0].attrs
    assert attrs["Config"]["Image"] == ready["image"]
    assert attrs["HostConfig"]["NetworkMode"] == "binderbuild-servers"
    # The image's own --ip=127.0.0.1 (the notebook base has one) is replaced.
    assert [a for a in attrs["Args"] if a.startswith("--ip")] == ["--ip=0.0.0.0"]
    assert attrs["Args"][-2:] == ["--ip=0.0.0.0", "--port=8888"]
    assert attrs["Config"]["User"] == "1000:1000"
    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert env["BINDER_REPO_URL"] == repo.url
    assert env["BINDER_REQUEST"] == ready["binder_request"]
    assert env["BINDER_PERSISTENT_REQUEST"] == ready["binder_persistent_request"]
    assert env["BINDER_LAUNCH_HOST"] == ready["binder_launch_host"]
    # The token is a credential: the hub keeps it out of stored user_options.
    stored = server["user_options"]
    assert stored["image"] == ready["image"] and "token" not in stored


def test_per_repo_quota_refuses_clearly_and_starts_nothing(
    launched: SSEResult, hub: HubService, repo: Repo, docker_client: Any, tmp_path: Path
) -> None:
    assert launched.final["phase"] == "ready"  # one server of this repo is running
    service = start_binderbuild(tmp_path / "quota", hub, "c.BinderBuild.per_repo_quota = 1\n")
    try:
        users = set(hub.users())
        containers = {c.name for c in hub.containers(docker_client)}
        result = read_events(f"{service.url}/build/git/{repo.spec}", timeout=120)
        assert result.final["phase"] == "failed", result.events
        assert result.final["status_code"] == 429
        assert "Too many users are running" in result.final["message"]
        assert repo.url in result.final["message"]
        assert set(hub.users()) == users
        assert {c.name for c in hub.containers(docker_client)} == containers
    finally:
        service.stop()


def test_total_quota_refuses_clearly(
    launched: SSEResult, hub: HubService, repo: Repo, tmp_path: Path
) -> None:
    running = sum(1 for u in hub.users().values() for s in u["servers"].values() if s.get("ready"))
    assert running >= 1
    service = start_binderbuild(tmp_path / "full", hub, f"c.BinderBuild.pod_quota = {running}\n")
    try:
        users = set(hub.users())
        result = read_events(f"{service.url}/build/git/{repo.spec}", timeout=120)
        assert result.final["phase"] == "failed", result.events
        assert result.final["status_code"] == 429
        assert f"{running} of {running} servers are running" in result.final["message"]
        assert set(hub.users()) == users
    finally:
        service.stop()


def test_authenticated_launch_starts_named_servers_up_to_the_limit(
    launched: SSEResult, hub: HubService, repo: Repo, tmp_path: Path
) -> None:
    service = start_binderbuild(
        tmp_path / "auth",
        hub,
        "c.BinderBuild.auth_enabled = True\n"
        "c.BinderBuild.use_named_servers = True\n"
        "c.BinderBuild.named_server_limit_per_user = 1\n",
    )
    user = f"authuser-{secrets.token_hex(3)}"
    assert hub.api("POST", f"users/{user}")[0] == 201
    status, model = hub.api("POST", f"users/{user}/tokens", {"note": "launch test"})
    assert status == 201, model
    login = {"Authorization": f"token {model['token']}"}
    users_before = set(hub.users())
    try:
        first = read_events(f"{service.url}/build/git/{repo.spec}", headers=login, timeout=120)
        assert first.final["phase"] == "ready", first.events[-3:]
        # The logged-in user's own named server, not a temporary user.
        assert set(hub.users()) == users_before
        servers = hub.user(user)["servers"]
        assert len(servers) == 1 and "" not in servers, servers
        (name,) = servers
        assert first.final["url"] == f"{hub.url}user/{user}/{name}/"
        token = {"Authorization": f"token {first.final['token']}"}
        assert http_status(first.final["url"] + "api/status", token)[0] == 200

        # The same repository again resumes that server (issue 13), within
        # the limit; launches beyond it: tests/hub/test_persistence.py.
        second = read_events(f"{service.url}/build/git/{repo.spec}", headers=login, timeout=120)
        assert second.final["phase"] == "ready", second.events[-3:]
        assert second.final["url"] == first.final["url"]
        assert list(hub.user(user)["servers"]) == [name]
    finally:
        service.stop()
        hub.delete_user(user)
