"""Signed-in Binder (issue 13): the embedded hub's configuration keeps named servers."""

from __future__ import annotations

from pathlib import Path

from traitlets.config import Config

from binderbuild.hubconfig import HubConfig, render


def load(text: str) -> Config:
    c = Config()
    exec(compile(text, "jupyterhub_config.py", "exec"), {"c": c})
    return c


def test_culler_stops_but_never_deletes_named_servers_of_signed_in_users(tmp_path: Path) -> None:
    # The finding of issue 13: with auth the culler was given
    # --remove-named-servers=true, deleting a signed-in user's server (and
    # with it the way back to their files) after an idle hour.
    cfg = HubConfig(tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1", auth_enabled=True)
    culler = {s["name"]: s for s in load(render(cfg)).JupyterHub.services}["idle-culler"]
    assert "--remove-named-servers=false" in culler["command"]
    assert "--cull-users=false" in culler["command"]
    assert not any("remove-named-servers=true" in arg for arg in culler["command"])


def test_server_name_of_a_repository_is_stable_and_a_valid_hub_server_name() -> None:
    from jupyterhub.slugs import is_valid_safe_slug

    from binderbuild.hub import server_name_for_repo

    urls = [
        "https://github.com/binder-examples/requirements",
        "git://127.0.0.1:42077/e2e-persist-signed-a8140c8d.git",
        "git@github.com:Org--Name/__Repo__.git",
        "https://git.example.org/1234/5678-" + "9" * 40,
        "https://x/",
    ]
    for url in urls:
        name = server_name_for_repo(url)
        # JupyterHub 6 refuses other server names ("Invalid server_name").
        assert is_valid_safe_slug(name), (url, name)
        assert server_name_for_repo(url) == name
    # One server per repository: .git and a trailing slash do not count.
    same = server_name_for_repo("https://github.com/a/b")
    assert server_name_for_repo("https://github.com/a/b.git") == same
    assert server_name_for_repo("https://github.com/a/b/") == same
    assert server_name_for_repo("https://gitlab.com/a/b") != same


def test_signed_in_hub_keeps_servers_storage_and_anonymous_hub_does_not(tmp_path: Path) -> None:
    signed_in = HubConfig(
        tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1", auth_enabled=True, storage_limit="1G"
    )
    c = load(render(signed_in))
    assert c.BinderSpawnerMixin.persistent_storage is True
    assert c.BinderSpawnerMixin.storage_limit == "1G"
    assert c.BinderDockerSpawner.storage_dir == str(tmp_path.resolve() / "storage")
    # Anonymous: not a line of it (temporary users, nothing kept).
    anonymous = render(HubConfig(tmp_path, "t" * 64, ["x-"], hub_ip="10.9.0.1"))
    assert "persistent_storage" not in anonymous and "storage_" not in anonymous


def test_cli_writes_the_storage_limit(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "jupyterhub_config.py"
    subprocess.run(
        [sys.executable, "-m", "binderbuild.hubconfig", "--out", str(out), "--data-dir",
         str(tmp_path), "--token-file", str(tmp_path / "token"), "--image-prefix", "x-",
         "--docker-network", "host", "--auth-enabled", "--storage-limit", "2G"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "c.BinderSpawnerMixin.storage_limit = '2G'" in out.read_text()
