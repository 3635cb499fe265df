"""Shared provider plumbing: rate-limit parsing, git credentials, the registry, app wiring."""

from __future__ import annotations

import email.utils
import os
import subprocess
import time

import pytest
from traitlets.config import Config
from traitlets.utils.importstring import import_item

from binderbuild.app import BinderBuild
from binderbuild.builders.r2d_command import CONTENT_PROVIDER_CLASSES, repo2docker_config_text
from binderbuild.errors import ConfigError
from binderbuild.http import HttpClient, HttpResponse
from binderbuild.netsafety import parse_networks
from binderbuild.providers import DEFAULT_PROVIDERS
from binderbuild.providers.credentials import (
    git_credential_env,
    normalize_git_credentials,
    password_of,
)
from binderbuild.providers.figshare import parse_article_path
from binderbuild.providers.httpapi import is_rate_limited, rate_limit_error, retry_after_seconds
from binderbuild.services import make_providers


def response(status: int, **headers: str) -> HttpResponse:
    return HttpResponse(status=status, headers=headers, body=b"")


# --- rate limits ------------------------------------------------------------------------


def test_retry_after_sources() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds(response(429, **{"Retry-After": "120"}), now) == 120
    when = email.utils.formatdate(now + 300, usegmt=True)
    assert retry_after_seconds(response(429, **{"Retry-After": when}), now) == pytest.approx(
        300, abs=1
    )
    assert (
        retry_after_seconds(response(403, **{"X-RateLimit-Reset": str(int(now) + 900)}), now) == 900
    )
    assert retry_after_seconds(response(429, **{"RateLimit-Reset": "45"}), now) == 45
    assert retry_after_seconds(response(429), now) == 60
    # A reset in the past still means "wait a moment", never a negative time.
    assert retry_after_seconds(response(403, **{"X-RateLimit-Reset": str(int(now) - 5)}), now) == 1


def test_what_counts_as_rate_limited() -> None:
    assert is_rate_limited(response(429))
    assert is_rate_limited(response(403, **{"X-RateLimit-Remaining": "0"}))
    assert is_rate_limited(response(403, **{"RateLimit-Remaining": "0"}))
    assert is_rate_limited(response(403, **{"Retry-After": "60"}))
    assert not is_rate_limited(response(403, **{"X-RateLimit-Remaining": "10"}))
    assert not is_rate_limited(response(404, **{"X-RateLimit-Remaining": "0"}))


def test_rate_limit_message() -> None:
    reset = str(int(time.time()) + 61)
    error = rate_limit_error("GitHub", response(403, **{"X-RateLimit-Reset": reset}))
    assert error.message == "GitHub rate limit exceeded. Try again in 2 minutes."
    one = rate_limit_error("GitLab (gitlab.com)", response(429, **{"Retry-After": "5"}))
    assert one.message == "GitLab (gitlab.com) rate limit exceeded. Try again in 1 minute."
    assert one.retry_after == 5


# --- git credentials ------------------------------------------------------------------


def test_credentials_formats() -> None:
    # BinderHub's configs use a literal backslash-n.
    assert normalize_git_credentials("username=a\\npassword=b") == "username=a\npassword=b"
    assert normalize_git_credentials("username=a\npassword=b\n") == "username=a\npassword=b"
    assert password_of("username=a\\npassword=s3cret") == "s3cret"
    with pytest.raises(ConfigError) as bad:
        normalize_git_credentials("just-a-token-value")
    assert "just-a-token-value" not in bad.value.message
    assert git_credential_env("https://github.com/o/r", "") == {}


def git_credential_fill(env: dict[str, str], host: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/nonexistent",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
    }
    return subprocess.run(
        ["git", "credential", "fill"],
        input=f"protocol=https\nhost={host}\npath=owner/repo.git\n\n",
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_credential_helper_works_with_real_git_and_only_for_its_host() -> None:
    env = git_credential_env(
        "https://github.example.org/owner/repo", "username=x-access-token\\npassword=tok-123456"
    )
    filled = git_credential_fill(env, "github.example.org")
    assert filled.returncode == 0, filled.stderr
    assert "username=x-access-token" in filled.stdout
    assert "password=tok-123456" in filled.stdout
    # Another host never gets them (git would have to prompt, which is off).
    other = git_credential_fill(env, "evil.example.com")
    assert "tok-123456" not in other.stdout
    assert other.returncode != 0


# --- registry and wiring ----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:pythonjsonlogger.jsonlogger has been moved:DeprecationWarning")
def test_every_provider_names_a_supported_repo2docker_content_provider() -> None:
    import repo2docker.contentproviders as cps

    for prefix, name in DEFAULT_PROVIDERS.items():
        klass = import_item(name)
        assert klass.provider_id == prefix
        if prefix == "doi":
            continue  # resolves through the record providers below
        assert klass.content_provider in CONTENT_PROVIDER_CLASSES, prefix
        assert hasattr(cps, CONTENT_PROVIDER_CLASSES[klass.content_provider])
        assert "c.Repo2Docker.content_providers" in repo2docker_config_text(klass.content_provider)


def test_descriptions_for_api_repoproviders() -> None:
    for name in DEFAULT_PROVIDERS.values():
        info = import_item(name)().describe()
        assert info["id"] and info["displayName"] and info["regex"]
        assert set(info["ref"]) == {"enabled", "label", "default"}


async def test_app_builds_every_provider_with_its_config() -> None:
    config = Config()
    config.GitHubRepoProvider.access_token = "ghp_from_config_file"
    config.GitLabRepoProvider.private_token = "glpat_from_config_file"
    config.DataverseProvider.hosts = ["dataverse.example.org"]
    config.BinderBuild.allowed_internal_networks = ["127.0.0.0/8"]
    app = BinderBuild(config=config)
    http = HttpClient()
    try:
        providers = make_providers(app, http, parse_networks(app.allowed_internal_networks))
    finally:
        http.close()
    assert set(providers) == set(DEFAULT_PROVIDERS)
    assert providers["gh"].access_token == "ghp_from_config_file"
    assert providers["gh"].http is http
    assert str(providers["ckan"].allowed_internal_networks[0]) == "127.0.0.0/8"
    # The doi prefix's record providers read their own class config.
    dataverse = next(p for p in providers["doi"].delegates if p.provider_id == "dataverse")
    assert dataverse.hosts == ["dataverse.example.org"]
    secrets = {s for p in providers.values() for s in p.secret_values()}
    assert {"ghp_from_config_file", "glpat_from_config_file"} <= secrets


@pytest.mark.parametrize(
    "path, parsed",
    [
        ("/articles/software/Title/9782777", ("9782777", None)),
        ("/articles/software/Title/9782777/2", ("9782777", "2")),
        ("/articles/Title/9782777", ("9782777", None)),
        ("/articles/Title/9782777/2", ("9782777", "2")),
        ("/articles/_/9782777/2", ("9782777", "2")),
        ("/articles/journal_contribution/Title/9782777/", ("9782777", None)),
        ("/articles/software/Title", None),
        ("/collections/x/1", None),
    ],
)
def test_figshare_article_paths(path: str, parsed: tuple[str, str | None] | None) -> None:
    assert parse_article_path(path) == parsed
