"""Configuration: BinderHub config files keep working, every option is documented."""

from __future__ import annotations

import subprocess
import sys

import pytest

from binderbuild.app import BinderBuild
from binderbuild.errors import ConfigError
from binderbuild.units import parse_bytes


def test_binderhub_config_is_forwarded(tmp_path):
    config = tmp_path / "binderhub_config.py"
    config.write_text(
        "c.BinderHub.image_prefix = 'reg.example.org/bh-'\n"
        "c.BinderHub.use_registry = True\n"
        "c.BinderHub.no_such_option_here = 1\n"
    )
    app = BinderBuild()
    app.load_config_file(str(config))
    assert app.image_prefix == "reg.example.org/bh-"
    assert app.use_registry is True


def test_base_url_is_normalised():
    assert BinderBuild(base_url="binder").base_url == "/binder/"
    assert BinderBuild(base_url="/").base_url == "/"


@pytest.mark.parametrize(
    ("text", "value"),
    [("512M", 512 * 2**20), ("2G", 2 * 2**30), ("1.5GiB", int(1.5 * 2**30)), ("100", 100), ("", 0)],
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


def test_parse_bytes_rejects_garbage():
    with pytest.raises(ConfigError):
        parse_bytes("lots")


def test_every_option_has_help():
    app = BinderBuild()
    for cls in app._classes_with_config_traits():
        for name, trait in cls.class_traits(config=True).items():
            assert trait.help.strip(), f"{cls.__name__}.{name} has no help text"


def test_help_all_lists_options():
    out = subprocess.run(
        [sys.executable, "-m", "binderbuild", "--help-all"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--BinderBuild.image_prefix", "--BinderBuild.concurrent_build_limit", "--DockerRegistry.url"):
        assert option in out
