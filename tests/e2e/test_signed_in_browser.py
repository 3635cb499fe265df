"""Signed in, in Chromium (issue 13): a user signs in at the hub's login page
(sent there by binderbuild's loading page), launches a fixture repository
into a named server of hers, makes a file, stops the server on the hub's home
page, starts it again there and finds her file and the repository's files;
a new commit of the repository launched again keeps her file. Real hub with
its login (jupyterhub-nativeauthenticator, the first admin made as run.sh
--auth makes it), binderbuild as its OAuth client, repo2docker builds, the
Docker engine, loop-mounted storage."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from binderbuild.hubconfig.auth import NativeLogin, ensure_admin
from tests.auth.conftest import LoginHub, binderbuild_config, start_or_fail
from tests.e2e.conftest import InteractiveScenario
from tests.realservices import GitServer, add_commit, dockerfile_repo_files, free_port, make_repo
from tests.service import BinderBuildService

pytestmark = [pytest.mark.browser, pytest.mark.hub, pytest.mark.docker]


# The spawner's profiles, offered on binderbuild's home page too.
PROFILES = [
    {"name": "small", "display_name": "Small", "cpu_limit": 0.5, "mem_limit": "512M"},
    {"name": "large", "display_name": "Large", "cpu_limit": 1, "mem_limit": "1G"},
]


def remove_containers(hub: LoginHub, docker_client: Any) -> None:
    """The hub's containers, removed; listing races with containers that go
    meanwhile (the engine answers 404 for one of the list), so try again."""
    import docker.errors

    for _ in range(5):
        try:
            hub.remove_containers(docker_client)
            return
        except docker.errors.NotFound:
            continue


class SignedIn:
    def __init__(self, hub: LoginHub, service: BinderBuildService, password: str) -> None:
        self.hub, self.service, self.password = hub, service, password


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[SignedIn]:
    workdir = tmp_path_factory.mktemp("e2e-signed-in")
    port = free_port()
    hub = LoginHub(
        workdir / "hub",
        service_url=f"http://127.0.0.1:{port}/",
        extra=(
            "c.BinderSpawnerMixin.storage_limit = '64M'\n"
            f"c.BinderSpawnerMixin.profiles = {PROFILES!r}\n"
        ),
    )
    hub.use_login(NativeLogin(admin_users=("admin",)))
    password = ensure_admin(hub.db_url, "admin", workdir / "admin-password")
    assert password
    service: BinderBuildService | None = None
    try:
        start_or_fail(hub)
        service = BinderBuildService(
            workdir / "bb",
            binderbuild_config(hub, port, f"c.BinderBuild.launch_profiles = {PROFILES!r}\n"),
            port=port,
        ).start()
        yield SignedIn(hub, service, password)
    finally:
        if service is not None:
            service.stop()
        hub.stop()
        remove_containers(hub, docker_client)
        storage = hub.workdir / "storage"
        if storage.exists():
            import subprocess

            for child in storage.iterdir():
                if child.is_mount():
                    subprocess.run(["umount", str(child)], check=False)


def test_signed_in_user_comes_back_to_her_files(
    browser_env: Path, signed_in: SignedIn, git_server: GitServer, docker_client: Any
) -> None:
    marker = f"signed-{secrets.token_hex(4)}"
    name = f"e2e-persist-{marker}"
    make_repo(git_server.root, name, dockerfile_repo_files(marker))
    repo = git_server.git_url(name)
    loading_url = f"{signed_in.service.url}/v2/git/{quote(repo, safe='')}/main"
    hub_url = signed_in.hub.url
    run = InteractiveScenario(
        "signed_in",
        {
            "loadingUrl": loading_url,
            "homeUrl": f"{signed_in.service.url}/",
            "repo": repo,
            "hubUrl": hub_url,
            "username": "admin",
            "password": signed_in.password,
            "artifacts": str(browser_env),
        },
    )
    run.wait_for("new commit", 600)
    sha = add_commit(
        git_server.root,
        name,
        {"NEW.md": "added by the second commit\n", "marker.txt": "changed upstream\n"},
        "second commit",
    )
    run.answer(sha)
    try:
        r = run.result(600)
        running = signed_in.hub.containers(docker_client, all=False)
        limits = [
            (c.attrs["HostConfig"]["CpuQuota"], c.attrs["HostConfig"]["Memory"]) for c in running
        ]
    finally:
        # The two images of this repository (built under the hub's prefix).
        for image in docker_client.api.images():
            for tag in image.get("RepoTags") or ():
                if name in tag:
                    docker_client.api.remove_image(tag, force=True)

    assert "/hub/login" in r["loginUrl"], r["loginUrl"]
    assert r["server"].startswith(f"{hub_url}user/admin/"), r["server"]
    assert r["created"] == 201, r
    assert r["stoppedRow"] is True
    # Started again from the home page: the same server, her file, the repository.
    assert r["again"] == r["server"]
    assert r["mineAfterRestart"] == {"status": 200, "content": "my own file\n"}
    assert r["repoAfterRestart"] == {"status": 200, "content": marker + "\n"}
    # The new commit: the same server, rebuilt; her file is kept, the new
    # file of the repository appears, the file she had is not overwritten.
    assert r["rebuilt"] == r["server"]
    assert r["mineAfterRebuild"] == {"status": 200, "content": "my own file\n"}
    assert r["newFile"] == {"status": 200, "content": "added by the second commit\n"}
    assert r["repoAfterRebuild"] == {"status": 200, "content": marker + "\n"}
    assert r["errors"] == [] or all("favicon" in e or "404" in e for e in r["errors"]), r["errors"]
    # The profile picked on the home page reached the spawner: "large"'s limits.
    assert r["profiles"] == [["small", "Small"], ["large", "Large"]]
    assert "profile=large" in r["launchedFrom"], r["launchedFrom"]
    assert limits == [(100_000, 1024**3)], limits
