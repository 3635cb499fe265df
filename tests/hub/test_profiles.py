"""Resource profiles (issue 13): what BinderSpawnerMixin grants for a launch's
user_options, and what binderbuild sends. The refusals by a real spawner in a
real hub are in tests/hub/test_persistence.py."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from tornado import web

from binderbuild.http import HttpClient
from binderbuild.hub import HubLauncher, HubSettings
from binderbuild.spawner import BinderSpawnerMixin
from tests.hub.conftest import fake_request

G = 1024**3
M = 1024**2


class Spawner(BinderSpawnerMixin):
    """The mixin over the two limits every container spawner has."""

    cpu_limit: Any = 1.0
    mem_limit: Any = 2 * G


PROFILES = [
    {"name": "small", "cpu_limit": 0.5, "mem_limit": "1G", "storage_limit": "1G", "default": True},
    {"name": "large", "cpu_limit": 4, "mem_limit": "8G", "storage_limit": "10G"},
]


def refused(spawner: Spawner, options: dict[str, Any]) -> str:
    with pytest.raises(web.HTTPError) as info:
        spawner.resolve_resources(options)
    return str(getattr(info.value, "jupyterhub_message", info.value))


def test_default_profile_and_picked_profile() -> None:
    s = Spawner(profiles=PROFILES)
    assert s.resolve_resources({}) == {"cpu_limit": 0.5, "mem_limit": G, "storage_limit": G}
    large = s.resolve_resources({"profile": "large"})
    assert large == {"cpu_limit": 4.0, "mem_limit": 8 * G, "storage_limit": 10 * G}
    s.apply_resources(large)
    assert (s.cpu_limit, s.mem_limit, s._storage_bytes) == (4.0, 8 * G, 10 * G)
    # The operator's own limits are not changed by what a start was granted.
    assert Spawner(profiles=[]).resolve_resources({}) == {"cpu_limit": 1.0, "mem_limit": 2 * G}
    s2 = Spawner(storage_limit="64M")
    s2.apply_resources(s2.resolve_resources({"cpu_limit": 0.25}))
    assert s2.resolve_resources({})["cpu_limit"] == 1.0


def test_less_than_the_profile_is_granted_more_is_refused() -> None:
    s = Spawner(profiles=PROFILES)
    assert s.resolve_resources({"profile": "large", "mem_limit": "2G"})["mem_limit"] == 2 * G
    assert "cpu_limit 2 refused: profile 'small' allows at most 0.5 CPU" in refused(
        s, {"cpu_limit": 2}
    )
    assert "storage_limit 20G refused: profile 'large' allows at most 10G" in refused(
        s, {"profile": "large", "storage_limit": "20G"}
    )
    assert "does not exist on this hub (profiles: small, large)" in refused(s, {"profile": "xl"})
    assert "Invalid mem_limit" in refused(s, {"mem_limit": "lots"})
    assert "Invalid cpu_limit" in refused(s, {"cpu_limit": -1})
    # Without profiles: the spawner's own limits are the ceiling.
    plain = Spawner()
    assert "this hub allows at most 2G" in refused(plain, {"mem_limit": "3G"})
    assert "offers no profiles" in refused(plain, {"profile": "small"})


def test_binderbuild_sends_the_picked_profile() -> None:
    settings = HubSettings(hub_url="http://127.0.0.1:9/", hub_api_token="t", auth_enabled=True)
    launcher = HubLauncher(http=HttpClient(), settings=settings)
    request = fake_request("img:1", user="alice")
    assert "profile" not in launcher.user_options(request, None)
    picked = dataclasses.replace(request, profile="large")
    assert launcher.user_options(picked, None)["profile"] == "large"
