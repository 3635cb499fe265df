"""The embedded hub's configuration generator and the launcher's pure helpers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from traitlets.config import Config

from binderbuild.hub import HubSettings, unique_name_from_repo
from binderbuild.hub_client import RetryPolicy, server_path, user_path
from binderbuild.hubconfig import BINDER_SERVICE_SCOPES, HubConfig, render
from binderbuild.hubconfig.demo import make_demo_repo


def load(text: str) -> Config:
    c = Config()
    exec(compile(text, "jupyterhub_config.py", "exec"), {"c": c})
    return c


def test_rendered_config_is_valid_and_complete(tmp_path: Path) -> None:
    cfg = HubConfig(
        data_dir=tmp_path,
        api_token="t" * 64,
        image_prefixes=["127.0.0.1:5000/binder-"],
        proxy_command="/x/configurable-http-proxy",
        port=18000,
        hub_port=18081,
        proxy_api_port=18001,
        cull_timeout=300,
    )
    c = load(render(cfg))
    assert c.JupyterHub.spawner_class == "binderbuild.spawner.BinderDockerSpawner"
    assert c.BinderSpawnerMixin.allowed_image_prefixes == ["127.0.0.1:5000/binder-"]
    assert c.DockerSpawner.network_name == "host"
    assert c.JupyterHub.ip == "127.0.0.1" and c.JupyterHub.hub_ip == "127.0.0.1"
    assert c.ConfigurableHTTPProxy.command == ["/x/configurable-http-proxy"]
    assert c.JupyterHub.tornado_settings == {"slow_spawn_timeout": 0}
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert services["binder"]["api_token"] == "t" * 64
    culler = services["idle-culler"]["command"]
    assert "--timeout=300" in culler and "--cull-users=true" in culler
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert set(roles["binder-launcher"]["scopes"]) == set(BINDER_SERVICE_SCOPES)
    assert {"admin:users", "admin:servers", "tokens", "access:servers"} <= set(
        BINDER_SERVICE_SCOPES
    )
    assert roles["binder-launcher"]["services"] == ["binder"]
    assert str(tmp_path.resolve()) in c.JupyterHub.db_url


def test_authenticated_config_keeps_users_and_culls_named_servers(tmp_path: Path) -> None:
    c = load(render(HubConfig(tmp_path, "t" * 64, ["x-"], auth_enabled=True, cull_timeout=60)))
    culler = {s["name"]: s for s in c.JupyterHub.services}["idle-culler"]["command"]
    assert "--cull-users=false" in culler and "--remove-named-servers=true" in culler
    assert "authenticator_class" not in c.JupyterHub
    c = load(render(HubConfig(tmp_path, "t" * 64, ["x-"], cull_timeout=0)))
    assert [s["name"] for s in c.JupyterHub.services] == ["binder"]


def test_cli_writes_config_and_keeps_the_token(tmp_path: Path) -> None:
    out, token_file = tmp_path / "hub" / "jupyterhub_config.py", tmp_path / "token"
    argv = [
        sys.executable, "-m", "binderbuild.hubconfig", "--out", str(out),
        "--data-dir", str(tmp_path / "hub"), "--token-file", str(token_file),
        "--image-prefix", "binder-",
    ]  # fmt: skip
    subprocess.run(argv, check=True)
    token = token_file.read_text().strip()
    assert len(token) == 64 and token in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    subprocess.run(argv, check=True)
    assert token_file.read_text().strip() == token  # reused, not regenerated


def test_demo_repository_is_a_dockerfile_repo(tmp_path: Path) -> None:
    bare = make_demo_repo(tmp_path)
    files = subprocess.run(
        ["git", "--git-dir", str(bare), "ls-tree", "--name-only", "main"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert {"Dockerfile", "README.md", "hello.ipynb"} <= set(files)


def test_unique_names_are_valid_hub_and_container_names() -> None:
    name = unique_name_from_repo("https://github.com/Some.Owner/My_Repo.git")
    assert re.fullmatch(r"some-owner-my-repo-[a-z0-9]{8}", name), name
    long = unique_name_from_repo("git://127.0.0.1:9418/" + "a" * 80 + "/b.git")
    assert len(long) <= 32 + 9 and re.fullmatch(r"[a-z0-9-]+", long)
    assert unique_name_from_repo("git@host:o/r.git").startswith("o-r-")
    assert unique_name_from_repo("x://h/r") != unique_name_from_repo("x://h/r")


def test_api_urls_and_paths(monkeypatch) -> None:
    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    assert HubSettings("http://h/").api_url == "http://h/hub/api/"
    assert (
        HubSettings("http://h/", hub_url_local="http://i:8081").api_url == "http://i:8081/hub/api/"
    )
    monkeypatch.setenv("JUPYTERHUB_API_URL", "http://env:1/hub/api")
    assert HubSettings("http://h/").api_url == "http://env:1/hub/api/"
    assert user_path("a@b c") == "users/a@b%20c"
    assert server_path("u", "") == "users/u/server"
    assert server_path("u", "s/1") == "users/u/servers/s%2F1"
    assert list(RetryPolicy(attempts=5, delay=1, max_delay=3).delays()) == [1, 2, 3, 3]


def test_launcher_reads_binderbuild_and_binderhub_options(monkeypatch) -> None:
    from binderbuild.app import BinderBuild
    from binderbuild.http import HttpClient
    from binderbuild.hub import HubLauncher

    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    config = Config()
    config.BinderBuild.hub_url = "http://127.0.0.1:1/"
    config.BinderBuild.hub_api_token = "t" * 32
    config.BinderBuild.per_repo_quota = 7
    config.BinderBuild.pod_quota = 0
    config.Launcher.retries = 2  # BinderHub's section name
    config.HubLauncher.launch_timeout = 42.0
    app = BinderBuild(config=config)
    http = HttpClient()
    try:
        launcher = HubLauncher(parent=app, http=http, settings=HubSettings.from_app(app))
        assert launcher.retries == 2 and launcher.launch_timeout == 42.0
        assert launcher.settings.per_repo_quota == 7 and launcher.settings.pod_quota == 0
        assert launcher.quota.total_quota == 0
        assert launcher.hub.api_url == "http://127.0.0.1:1/hub/api/"
    finally:
        http.close()
