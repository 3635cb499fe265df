"""The repo2docker command line and config file binderbuild generates.

The argv is also fed to repo2docker's own parser (``make_r2d``, which needs
no Docker), so these tests break when a repo2docker release renames a flag.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import repo2docker.contentproviders as r2d_providers
from repo2docker.__main__ import make_r2d
from traitlets.config.loader import PyFileConfigLoader

from binderbuild.builders.r2d_command import (
    CONTENT_PROVIDER_CLASSES,
    ENGINE_NAME,
    repo2docker_argv,
    repo2docker_config_text,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "127.0.0.1:5000/binder/demo:0123456789ab"


def argv(**overrides: object) -> list[str]:
    kwargs: dict[str, object] = {
        "python": "/venv/bin/python",
        "repo_url": "git://127.0.0.1:9418/demo.git",
        "ref": SHA,
        "image_name": IMAGE,
        "push": True,
        "config_path": "/srv/binderbuild/r2d-config.py",
    }
    kwargs.update(overrides)
    return repo2docker_argv(**kwargs)  # type: ignore[arg-type]


def parse(args: list[str]):
    # argv[0:3] is "python -m repo2docker"; make_r2d takes what follows.
    assert args[1:3] == ["-m", "repo2docker"]
    return make_r2d(args[3:])


def write_config(tmp_path: Path, provider: str) -> Path:
    path = tmp_path / "r2d_config.py"
    path.write_text(repo2docker_config_text(provider))
    return path


def test_argv_exact_shape() -> None:
    assert argv() == [
        "/venv/bin/python",
        "-m",
        "repo2docker",
        "--json-logs",
        "--no-run",
        f"--engine={ENGINE_NAME}",
        "--config=/srv/binderbuild/r2d-config.py",
        f"--ref={SHA}",
        f"--image-name={IMAGE}",
        "--push",
        "--user-id=1000",
        "--user-name=jovyan",
        "--",
        "git://127.0.0.1:9418/demo.git",
    ]


def test_engine_name_matches_entry_point() -> None:
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="repo2docker.engines")}
    assert names[ENGINE_NAME] == "binderbuild.builders.r2d_engine:DockerAPIEngine"


def test_repo2docker_parses_argv(tmp_path: Path) -> None:
    config = write_config(tmp_path, "git")
    r2d = parse(argv(config_path=str(config), user_id=1234, user_name="alice"))
    assert r2d.repo == "git://127.0.0.1:9418/demo.git"
    assert r2d.ref == SHA
    assert r2d.output_image_spec == IMAGE
    assert r2d.push is True
    assert r2d.run is False
    assert r2d.json_logs is True
    assert r2d.engine == ENGINE_NAME
    assert r2d.user_id == 1234
    assert r2d.user_name == "alice"
    assert r2d.content_providers == [r2d_providers.Git]
    # Nothing left over as a command to run in the image.
    assert r2d.run_cmd == []


def test_no_push_is_explicit(tmp_path: Path) -> None:
    args = argv(push=False, config_path=str(write_config(tmp_path, "git")))
    assert "--no-push" in args and "--push" not in args
    assert parse(args).push is False


def test_repo_url_comes_after_double_dash() -> None:
    args = argv()
    assert args[-2:] == ["--", "git://127.0.0.1:9418/demo.git"]


def test_option_like_values_stay_values(tmp_path: Path) -> None:
    # "--opt=value" keeps values that look like options from being parsed
    # as options; the image name and config path here are odd but harmless.
    config = tmp_path / "-odd config.py"
    config.write_text(repo2docker_config_text("git"))
    r2d = parse(argv(config_path=str(config), ref="feature/--x"))
    assert r2d.ref == "feature/--x"
    assert r2d.engine == ENGINE_NAME


def test_extra_args_go_before_double_dash(tmp_path: Path) -> None:
    args = argv(
        config_path=str(write_config(tmp_path, "git")),
        extra_args=["--subdir=binder", "--appendix=RUN true"],
    )
    assert args.index("--subdir=binder") < args.index("--")
    r2d = parse(args)
    assert r2d.subdir == "binder"
    assert r2d.appendix == "RUN true"


@pytest.mark.parametrize("repo_url", ["-u", "--upload-pack=touch /tmp/pwned", "--config=x"])
def test_repo_url_starting_with_dash_is_refused(repo_url: str) -> None:
    # repo2docker runs `git clone URL DIR` without "--": git would take it
    # as an option.
    with pytest.raises(ValueError, match="repo_url"):
        argv(repo_url=repo_url)


def test_ref_starting_with_dash_is_refused() -> None:
    with pytest.raises(ValueError, match="ref"):
        argv(ref="--output=/etc/passwd")


@pytest.mark.parametrize(
    "field,value",
    [
        ("repo_url", ""),
        ("ref", ""),
        ("image_name", ""),
        ("config_path", ""),
        ("python", ""),
        ("repo_url", "git://h/x.git\n--push"),
        ("ref", "main\r"),
        ("image_name", "a\0b"),
    ],
)
def test_empty_or_control_characters_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        argv(**{field: value})


@pytest.mark.parametrize("user_id", [0, -1, True, "1000"])
def test_bad_user_id_refused(user_id: object) -> None:
    with pytest.raises(ValueError, match="user_id"):
        argv(user_id=user_id)


@pytest.mark.parametrize("user_name", ["", "root user", "-x", "Jovyan", "a" * 33, "x;rm"])
def test_bad_user_name_refused(user_name: str) -> None:
    with pytest.raises(ValueError, match="user_name"):
        argv(user_name=user_name)


def test_double_dash_in_extra_args_refused() -> None:
    with pytest.raises(ValueError, match="--"):
        argv(extra_args=["--", "git://evil/x.git"])


def test_extra_args_accepts_any_sequence() -> None:
    args = argv(extra_args=("--debug",))
    assert "--debug" in args


# ------------------------------------------------------------ config file


@pytest.mark.parametrize("provider", sorted(CONTENT_PROVIDER_CLASSES))
def test_config_enables_only_that_provider(tmp_path: Path, provider: str) -> None:
    path = write_config(tmp_path, provider)
    config = PyFileConfigLoader(path.name, path=str(tmp_path)).load_config()
    expected = getattr(r2d_providers, CONTENT_PROVIDER_CLASSES[provider])
    assert config.Repo2Docker.content_providers == [expected]
    assert config.Repo2Docker.engine == ENGINE_NAME


def test_config_names_the_expected_classes() -> None:
    assert CONTENT_PROVIDER_CLASSES["git"] == "Git"
    assert CONTENT_PROVIDER_CLASSES["zenodo"] == "Zenodo"
    assert CONTENT_PROVIDER_CLASSES["dataverse"] == "Dataverse"
    assert CONTENT_PROVIDER_CLASSES["ckan"] == "CKAN"
    assert CONTENT_PROVIDER_CLASSES["swhid"] == "Swhid"
    assert CONTENT_PROVIDER_CLASSES["local"] == "Local"
    # Every repo2docker provider class is reachable by some name.
    exported = {
        name
        for name in dir(r2d_providers)
        if isinstance(getattr(r2d_providers, name), type) and name[0].isupper()
    }
    assert exported <= set(CONTENT_PROVIDER_CLASSES.values())


@pytest.mark.parametrize("provider", ["", "Git", "github", "git; import os", "unknown"])
def test_unknown_provider_refused(provider: str) -> None:
    with pytest.raises(ValueError, match="unknown content provider"):
        repo2docker_config_text(provider)


def test_config_text_is_plain_python() -> None:
    text = repo2docker_config_text("zenodo")
    compile(text, "r2d_config.py", "exec")
    assert "from repo2docker.contentproviders import Zenodo" in text
    assert "c.Repo2Docker.content_providers = [Zenodo]" in text
