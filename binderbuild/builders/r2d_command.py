"""How binderbuild invokes repo2docker as a subprocess.

Pure functions, no I/O: the builders write the config text to a file and run
the argv themselves. Kept apart from the builders so the exact command line
is unit-tested without Docker.

repo2docker 2026.4 facts this module relies on:

* ``--engine NAME`` always wins over ``Repo2Docker.engine`` from a config
  file, because the CLI option has the default ``"docker"`` and is applied
  after the config file is loaded. So the engine is passed on the command
  line; the config file names it too, for anyone running repo2docker by hand
  with just the config.
* ``--push``/``--no-push``, ``--no-run``, ``--json-logs``, ``--ref``,
  ``--image-name``, ``--user-id``, ``--user-name`` and ``--config`` exist;
  ``--build-memory-limit`` was removed (it makes repo2docker exit), so memory
  limits go to our engine through its environment instead.
* The repository is a positional argument followed by a ``REMAINDER``
  positional (a command to run). Everything after a literal ``--`` is taken
  as positional, so the URL goes after ``--`` and valued options use the
  ``--opt=value`` form: then no value can be read as an option.
* Its git content provider runs ``git clone URL DIR`` and
  ``git rev-parse REF`` without ``--``, so a URL or ref starting with ``-``
  would reach git as an option. Such values are refused here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "ENGINE_NAME",
    "CONTENT_PROVIDER_CLASSES",
    "add_git_config",
    "git_fetch_config",
    "repo2docker_argv",
    "repo2docker_config_text",
]

# The entry-point name declared in pyproject.toml under repo2docker.engines.
ENGINE_NAME = "binderbuild_docker_api"

# binderbuild provider name -> class name in repo2docker.contentproviders.
# GitHub, GitLab and Gist repositories reach repo2docker as plain git URLs
# (binderbuild resolves them first), so their names map to the Git provider.
CONTENT_PROVIDER_CLASSES: dict[str, str] = {
    "git": "Git",
    "gh": "Git",
    "gl": "Git",
    "gist": "Git",
    "local": "Local",
    "zenodo": "Zenodo",
    "figshare": "Figshare",
    "dataverse": "Dataverse",
    "hydroshare": "Hydroshare",
    "swhid": "Swhid",
    "ckan": "CKAN",
    "mercurial": "Mercurial",
    "hg": "Mercurial",
}

# A conservative POSIX user name: what useradd accepts by default on Debian.
_USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


def _require_text(name: str, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    # A newline or NUL in an argument never has a legitimate use here and
    # would corrupt repo2docker's line-oriented logs.
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"{name} must not contain control characters")


def repo2docker_argv(
    *,
    python: str,
    repo_url: str,
    ref: str,
    image_name: str,
    push: bool,
    config_path: str,
    user_id: int = 1000,
    user_name: str = "jovyan",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """Return the argv that builds ``repo_url`` at ``ref`` into ``image_name``.

    ``python`` is the interpreter that has repo2docker and binderbuild
    installed (its ``repo2docker.engines`` entry point must be registered).
    ``config_path`` is a file holding :func:`repo2docker_config_text`.
    ``extra_args`` are placed before the ``--`` that ends the options, e.g.
    ``["--subdir=path", "--appendix=..."]``. (``--Repo2Docker.trait=value``
    arguments are accepted by repo2docker 2026.4 but silently ignored: put
    such settings in the config file instead.)

    Raises ``ValueError`` for values repo2docker or git would misread.
    """
    _require_text("python", python)
    _require_text("repo_url", repo_url)
    _require_text("ref", ref)
    _require_text("image_name", image_name)
    _require_text("config_path", config_path)
    if repo_url.startswith("-"):
        raise ValueError("repo_url must not start with '-' (git would read it as an option)")
    if ref.startswith("-"):
        raise ValueError("ref must not start with '-' (git would read it as an option)")
    # bool is an int subclass; True would silently mean uid 1.
    if isinstance(user_id, bool) or not isinstance(user_id, int) or user_id <= 0:
        # repo2docker treats 0 as "not given" and then falls back to the
        # uid running it (root in a container), which it refuses anyway.
        raise ValueError("user_id must be a positive integer (root is not allowed)")
    if not _USER_NAME_RE.fullmatch(user_name):
        raise ValueError(f"user_name {user_name!r} is not a valid POSIX user name")
    extra = list(extra_args)
    for arg in extra:
        _require_text("extra_args item", arg)
        if arg == "--":
            # A second "--" would make the repository URL a command to run.
            raise ValueError("extra_args must not contain '--'")

    return [
        python,
        "-m",
        "repo2docker",
        "--json-logs",
        "--no-run",
        f"--engine={ENGINE_NAME}",
        f"--config={config_path}",
        f"--ref={ref}",
        f"--image-name={image_name}",
        # Explicit either way, so a config file cannot turn pushing on.
        "--push" if push else "--no-push",
        f"--user-id={user_id}",
        f"--user-name={user_name}",
        *extra,
        "--",
        repo_url,
    ]


def repo2docker_config_text(content_provider: str) -> str:
    """Return a traitlets config file for one build.

    Only the content provider the build comes from is enabled: repo2docker
    otherwise tries every provider in turn, and some (Dataverse) fetch lists
    from the internet while merely detecting. It is also narrower in what a
    build may fetch.
    """
    try:
        class_name = CONTENT_PROVIDER_CLASSES[content_provider]
    except KeyError:
        known = ", ".join(sorted(CONTENT_PROVIDER_CLASSES))
        raise ValueError(f"unknown content provider {content_provider!r}; known: {known}") from None
    return (
        "# repo2docker configuration written by binderbuild for one build.\n"
        f"# Content provider: {content_provider}\n"
        f"from repo2docker.contentproviders import {class_name}\n"
        "\n"
        "c = get_config()  # noqa: F821 - injected by traitlets when loading\n"
        f"c.Repo2Docker.content_providers = [{class_name}]\n"
        f"c.Repo2Docker.engine = {ENGINE_NAME!r}\n"
    )


def git_fetch_config(proxy_url: str = "") -> list[tuple[str, str]]:
    """git settings for repo2docker's clone of an untrusted repository.

    Only http, https and git:// transports (submodules included): ``ssh``
    would connect anywhere outside the egress proxy, ``file``/``ext``
    would read or run things on this machine. With ``proxy_url`` every
    HTTP(S) request goes through binderbuild's egress filter (set as
    ``http.proxy`` too, so a system gitconfig cannot point elsewhere), which
    checks every redirect hop; without it, redirects are not followed, since
    a redirect could lead anywhere.
    """
    pairs = [
        ("protocol.allow", "never"),
        ("protocol.http.allow", "always"),
        ("protocol.https.allow", "always"),
        ("protocol.git.allow", "always"),
    ]
    if proxy_url:
        pairs.append(("http.proxy", proxy_url))
    else:
        pairs.append(("http.followRedirects", "false"))
    return pairs


def add_git_config(env: dict[str, str], pairs: list[tuple[str, str]]) -> None:
    """Append ``pairs`` to the ``GIT_CONFIG_COUNT``/``KEY_n``/``VALUE_n`` in ``env``.

    Providers pass credential helpers the same way (``providers.credentials``);
    both must survive, so ours are numbered after theirs.
    """
    try:
        start = int(env.get("GIT_CONFIG_COUNT", "0") or "0")
    except ValueError:
        raise ValueError("GIT_CONFIG_COUNT in the build environment is not a number") from None
    for offset, (key, value) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{start + offset}"] = key
        env[f"GIT_CONFIG_VALUE_{start + offset}"] = value
    env["GIT_CONFIG_COUNT"] = str(start + len(pairs))
