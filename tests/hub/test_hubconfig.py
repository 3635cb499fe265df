"""The embedded hub's configuration generator and the launcher's pure helpers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
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
        hub_ip="172.31.0.1",
    )
    c = load(render(cfg))
    assert c.JupyterHub.spawner_class == "binderbuild.spawner.BinderDockerSpawner"
    assert c.BinderSpawnerMixin.allowed_image_prefixes == ["127.0.0.1:5000/binder-"]
    # Servers on their own network; only the hub's API where they reach it.
    assert c.DockerSpawner.network_name == "binderbuild-servers"
    assert "allow_host_network" not in c.BinderDockerSpawner
    assert c.JupyterHub.ip == "127.0.0.1"
    assert c.JupyterHub.hub_ip == c.JupyterHub.hub_connect_ip == "172.31.0.1"
    assert c.ConfigurableHTTPProxy.api_url == "http://127.0.0.1:18001"
    assert cfg.hub_api_base == "http://172.31.0.1:18081/"
    assert c.BinderDockerSpawner.mem_limit == "2G"
    assert c.BinderDockerSpawner.cpu_limit == 1.0
    assert c.BinderDockerSpawner.pids_limit == 512
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
    c = load(
        render(
            HubConfig(
                tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1", auth_enabled=True, cull_timeout=60
            )
        )
    )
    culler = {s["name"]: s for s in c.JupyterHub.services}["idle-culler"]["command"]
    # Stopped, never deleted (issue 13): tests/hub/test_persistence_config.py.
    assert "--cull-users=false" in culler and "--remove-named-servers=false" in culler
    assert "authenticator_class" not in c.JupyterHub
    c = load(render(HubConfig(tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1", cull_timeout=0)))
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
    # The servers' network exists (made when missing), is internal, and the
    # hub listens on the host's address on it.
    import docker

    client = docker.from_env()
    try:
        net = client.api.inspect_network("binderbuild-servers")
    finally:
        client.close()
    assert net["Internal"] is True and net["Driver"] == "bridge"
    gateway = net["IPAM"]["Config"][0]["Gateway"]
    assert load(out.read_text()).JupyterHub.hub_ip == gateway
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


def test_servers_network_needs_a_hub_they_can_reach(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot reach a hub"):
        render(HubConfig(tmp_path, "t" * 64, ["x-"]))
    with pytest.raises(ValueError, match="every address"):
        render(HubConfig(tmp_path, "t" * 64, ["x-"], hub_ip="0.0.0.0"))


def test_host_network_is_an_explicit_unsafe_opt_in(tmp_path: Path) -> None:
    text = render(HubConfig(tmp_path, "t" * 64, ["x-"], docker_network="host"))
    c = load(text)
    assert c.DockerSpawner.network_name == "host"
    assert c.BinderDockerSpawner.allow_host_network is True
    assert "UNSAFE for public use" in text
    assert c.JupyterHub.hub_ip == "127.0.0.1"


def test_registry_credentials_are_read_by_the_hub_for_pulls(tmp_path: Path) -> None:
    creds = tmp_path / "credentials"
    creds.write_text("puller:s3cret-pw\n")
    text = render(
        HubConfig(
            tmp_path, "t" * 64, ["x-"], hub_ip="172.31.0.1", registry_credentials_file=str(creds)
        )
    )
    assert "s3cret-pw" not in text  # read when the hub starts, not copied
    c = load(text)
    assert c.BinderDockerSpawner.registry_username == "puller"
    assert c.BinderDockerSpawner.registry_password == "s3cret-pw"


def _hardened(host_config: dict, **kwargs: object) -> dict:
    from binderbuild.spawner import harden_container

    options: dict = {"uid": 1000, "gid": 1000, "pids_limit": 512, "allow_host_network": False}
    options.update(kwargs)
    return harden_container({"image": "x", "user": "root", "host_config": host_config}, **options)


def test_containers_are_hardened_whatever_the_config_asks() -> None:
    out = _hardened(
        {
            "NetworkMode": "binderbuild-servers",
            "Privileged": True,
            "CapAdd": ["NET_RAW", "SYS_ADMIN"],
            "CapDrop": [],
            "SecurityOpt": ["no-new-privileges:false", "label=x"],
            "Memory": 256 * 1024**2,
            "PidsLimit": -1,
        }
    )
    host = out["host_config"]
    assert out["user"] == "1000:1000"
    assert host["Privileged"] is False and "CapAdd" not in host
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["label=x", "no-new-privileges"]
    assert host["PidsLimit"] == 512
    assert host["MemorySwap"] == host["Memory"] == 256 * 1024**2


@pytest.mark.parametrize(
    "host_config",
    [
        {"NetworkMode": "host"},
        {"Binds": ["/var/run/docker.sock:/var/run/docker.sock:rw"]},
        {"Binds": ["/run:/host-run:ro"]},
        {"Binds": ["/:/host:ro"]},
        {"Mounts": [{"Source": "/var/run/docker.sock", "Target": "/d", "Type": "bind"}]},
        {"PidMode": "host"},
        {"UsernsMode": "host"},
    ],
)
def test_dangerous_containers_are_refused(host_config: dict) -> None:
    from tornado.web import HTTPError

    with pytest.raises(HTTPError):
        _hardened(host_config)


def test_root_and_host_network_need_more_than_a_default() -> None:
    from tornado.web import HTTPError

    from binderbuild.spawner import BinderDockerSpawner

    assert _hardened({"NetworkMode": "host"}, allow_host_network=True)["host_config"]
    with pytest.raises(HTTPError):
        _hardened({}, uid=0)
    config = Config()
    config.BinderDockerSpawner.run_as_uid = 0
    with pytest.raises(Exception, match="must not be 0"):
        BinderDockerSpawner(config=config)
    spawner = BinderDockerSpawner()
    assert (spawner.run_as_uid, spawner.pids_limit, spawner.cpu_limit) == (1000, 512, 1.0)
    assert spawner.mem_limit == 2 * 1024**3
    assert not spawner.allow_host_network


def test_the_images_listen_address_is_replaced() -> None:
    from binderbuild.spawner import without_listen_args

    command = ["jupyterhub-singleuser", "--ip=127.0.0.1", "--port", "9", "--ServerApp.ip=::"]
    assert without_listen_args(command) == ["jupyterhub-singleuser"]
    assert without_listen_args(["sh", "-c", "x", "--ipx=1"]) == ["sh", "-c", "x", "--ipx=1"]
