"""What reaches repo2docker's process: fetch hardening, no service secrets.

The process runs git on a stranger's repository (its redirects, its
.gitmodules) and the HTTP content providers on a stranger's record. Its
environment decides which transports git may use, that every fetch goes
through the build's egress proxy, and that none of the service's own
credentials are there to leak.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from binderbuild.builders.docker import DockerBuilder
from binderbuild.egress import ENV_PROXY, EgressProxy
from binderbuild.models import BuildJob, ImageSpec, ResolvedRef
from binderbuild.providers.credentials import git_credential_env

REF = ResolvedRef(
    "gh", "o/r/HEAD", "HEAD", "a" * 40, "o/r/" + "a" * 40,
    "https://github.com/o/r", "https://github.com/o/r/tree/x", "github.com/o/r",
)
IMAGE = ImageSpec("127.0.0.1:5000/binder-o-r", "a" * 40, "build-o-r")


def git_config(env: dict[str, str]) -> list[tuple[str, str]]:
    count = int(env["GIT_CONFIG_COUNT"])
    return [(env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"]) for i in range(count)]


def build_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, str], str]:
    # Secrets of the service process that must not be inherited.
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token-of-the-service")
    monkeypatch.setenv("GITHUB_ACCESS_TOKEN", "service-github-token")
    credentials = git_credential_env("https://github.com/o/r", "username=x\npassword=private-repo-token")
    job = BuildJob(image=IMAGE, ref=REF, push=True, extra_env=tuple(credentials.items()))

    async def make() -> tuple[dict[str, str], str]:
        async with EgressProxy() as proxy:
            return DockerBuilder()._env(job, proxy, str(tmp_path)), proxy.address

    return asyncio.run(make())


def test_git_may_use_only_http_https_and_git_through_the_proxy(tmp_path, monkeypatch):
    env, address = build_env(tmp_path, monkeypatch)
    config = git_config(env)
    assert ("protocol.allow", "never") in config
    allowed = {k for k, v in config if k.startswith("protocol.") and v == "always"}
    assert allowed == {"protocol.http.allow", "protocol.https.allow", "protocol.git.allow"}
    assert ("http.proxy", f"http://{address}") in config
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        assert env[name] == f"http://{address}"
    assert env[ENV_PROXY] == address
    script = Path(env["GIT_PROXY_COMMAND"])
    assert script.parent == tmp_path and "binderbuild.egress" in script.read_text()


def test_the_private_repo_credential_helper_survives_and_stays_scoped(tmp_path, monkeypatch):
    env, _ = build_env(tmp_path, monkeypatch)
    config = git_config(env)
    helpers = [(k, v) for k, v in config if k.endswith(".helper")]
    assert len(helpers) == 1 and helpers[0][0] == "credential.https://github.com.helper"


def test_service_secrets_are_not_inherited(tmp_path, monkeypatch):
    env, _ = build_env(tmp_path, monkeypatch)
    text = repr(env)
    assert "hub-token-of-the-service" not in text
    assert "service-github-token" not in text


def test_ssh_and_file_transports_are_refused_by_git_itself(tmp_path, monkeypatch):
    # The real git, with only the config part of the environment.
    env, _ = build_env(tmp_path, monkeypatch)
    config_env = {k: v for k, v in env.items() if k.startswith("GIT_CONFIG_")}
    config_env.update(PATH=env["PATH"], HOME=str(tmp_path), GIT_CONFIG_NOSYSTEM="1")
    for url in ("ssh://git@127.0.0.1:22/r.git", "ext::sh -c touch% /tmp/pwned", f"file://{tmp_path}"):
        proc = subprocess.run(
            ["git", "ls-remote", "--", url], env=config_env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode != 0
        assert "not allowed" in proc.stderr, (url, proc.stderr)


def test_without_the_proxy_redirects_are_not_followed(tmp_path):
    env = DockerBuilder(egress_filter=False)._env(
        BuildJob(image=IMAGE, ref=REF, push=False), None, str(tmp_path)
    )
    config = git_config(env)
    assert ("http.followRedirects", "false") in config
    assert "http_proxy" not in env and "GIT_PROXY_COMMAND" not in env
