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
