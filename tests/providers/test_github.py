"""GitHub provider against recorded GitHub REST API answers."""

from __future__ import annotations

import logging

import pytest

from binderbuild.errors import (
    Forbidden,
    ProviderError,
    ProviderRateLimited,
    RefNotFound,
    SpecError,
    UnsafeURL,
)
from binderbuild.providers.github import GitHubRepoProvider
from binderbuild.providers.recording import ReplayHttpClient
from tests.providers.conftest import recording
from tests.providers.helpers import assert_ref, expect_errors, expect_parse_error

SHA = "4c2f86e9b0b1a0a5e1f3c0d2b7a9e8f6d5c4b3a2"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "owner/repository/ref"),
        ("onlyowner", "owner/repository/ref"),
        ("/repo/HEAD", "owner/repository/ref"),
        ("-owner/repo/HEAD", "not a valid GitHub user"),
        ("owner--x-/repo/HEAD", "not a valid GitHub user"),
        ("owner/re po/HEAD", "not a valid GitHub repository"),
        ("owner/../HEAD", "not a valid GitHub repository"),
        ("owner/repo/-rf", "cannot start with '-'"),
        ("owner/repo/a..b", "not a valid git"),
        ("owner/repo/x\ny", "control characters"),
    ],
)
def test_malformed_specs(spec: str, message: str) -> None:
    expect_parse_error(GitHubRepoProvider(), spec, SpecError, message)


def test_parse_defaults_and_strips_git_suffix() -> None:
    provider = GitHubRepoProvider()
    assert provider.parse("owner/repo.git/feature/x").repo == "owner/repo"
    assert provider.parse("owner/repo.git/feature/x").ref == "feature/x"
    assert provider.parse("owner/repo").ref == "HEAD"
    assert provider.parse("owner/repo/").ref == "HEAD"


async def test_resolve_branch(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/ref-branch")
    assert_ref(
        await provider.resolve("binder-examples/requirements/HEAD"),
        resolved_ref=SHA,
        resolved_spec=f"binder-examples/requirements/{SHA}",
        repo_url="https://github.com/binder-examples/requirements",
        ref_url=f"https://github.com/binder-examples/requirements/tree/{SHA}",
        content_provider="git",
        slug_source="github.com/binder-examples/requirements",
        immutable_ref=False,
    )
    sent = provider.http.requests[0]
    assert sent.headers["Accept"] == "application/vnd.github.sha"
    assert sent.follow_redirects is False
    assert "Authorization" not in sent.headers
    assert provider.rate_limit[:2] == (57, 60)


async def test_etag_revalidation_reuses_answer(make_provider) -> None:
    """The second resolution sends If-None-Match and turns the 304 into the SHA."""
    provider = make_provider(GitHubRepoProvider, "github/ref-branch")
    first = await provider.resolve("binder-examples/requirements/HEAD")
    second = await provider.resolve("binder-examples/requirements/HEAD")
    assert first == second
    conditional = provider.http.requests[1]
    assert conditional.headers["If-None-Match"] == 'W/"8a3f0c5e2d71b94e6c0f1a2b3d4e5f60"'


async def test_etag_store_updates_when_ref_moves(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/ref-branch")
    await provider.resolve("binder-examples/requirements/HEAD")
    # Same provider, the branch moved upstream: a new recording answers 200.
    provider.http = ReplayHttpClient(recording("github/ref-moved"))
    moved = await provider.resolve("binder-examples/requirements/HEAD")
    assert moved.resolved_ref == "9d1e0b7c6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d"


async def test_etags_are_per_credential(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/ref-branch")
    await provider.resolve("binder-examples/requirements/HEAD")
    provider.access_token = "ghp_other_token_1234567890"
    await provider.resolve("binder-examples/requirements/HEAD")
    assert "If-None-Match" not in provider.http.requests[1].headers


async def test_full_sha_is_immutable_and_tags_with_slashes(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/ref-sha-and-tag")
    sha = "7e1c0cf2b2a5b8f0c3a9d4e6f1b2c3d4e5f6a7b8"
    ref = await provider.resolve(f"jupyterhub/repo2docker/{sha}")
    assert ref.immutable_ref and ref.resolved_ref == sha
    tag = await provider.resolve("jupyterhub/repo2docker/release/2024.07.0")
    assert tag.resolved_ref == "5b7a9c1d3e5f7a9b1c3d5e7f9a1b3c5d7e9f1a3b"
    assert not tag.immutable_ref
    short = await provider.resolve("jupyterhub/repo2docker/7e1c0cf")
    assert short.resolved_ref == sha
    assert not short.immutable_ref  # a short SHA may become ambiguous


async def test_unknown_ref_repo_and_blocked(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/not-found")
    await expect_errors(
        provider,
        [
            ("binder-examples/requirements/no-such-branch", RefNotFound, "no-such-branch"),
            ("binder-examples/does-not-exist/HEAD", RefNotFound, "does-not-exist"),
            ("dmca-takedown/blocked-repo/HEAD", Forbidden, "Repository access blocked"),
        ],
    )


async def test_rate_limited_says_when_to_retry(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/rate-limited")
    primary, secondary = await expect_errors(
        provider,
        [
            ("binder-examples/requirements/HEAD", ProviderRateLimited, None),
            ("binder-examples/conda/HEAD", ProviderRateLimited, None),
        ],
    )
    assert "GitHub rate limit exceeded. Try again in 25 minutes." == primary.message
    assert 1490 <= primary.retry_after <= 1500
    assert secondary.retry_after == 90
    assert "Try again in 2 minutes" in secondary.message


async def test_outages_are_provider_errors(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/outages")
    await expect_errors(
        provider,
        [
            ("binder-examples/requirements/HEAD", ProviderError, r"HTTP 502"),
            ("binder-examples/conda/HEAD", ProviderError, r"HTTP 503"),
            ("binder-examples/julia-python/HEAD", ProviderError, "could not be reached.*Timeout"),
            ("binder-examples/r/HEAD", ProviderError, "unexpected answer"),
        ],
    )


async def test_renamed_repository_redirect_is_followed(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/renamed-and-enterprise")
    ref = await provider.resolve("old-owner/old-name/main")
    assert ref.resolved_ref == "0123456789abcdef0123456789abcdef01234567"
    assert [r.url for r in provider.http.requests] == [
        "https://api.github.com/repos/old-owner/old-name/commits/main",
        "https://api.github.com/repositories/123456789/commits/main",
    ]


async def test_hostile_redirects(make_provider) -> None:
    provider = make_provider(GitHubRepoProvider, "github/renamed-and-enterprise")
    await expect_errors(
        provider,
        [
            ("evil/redirect/main", UnsafeURL, "169.254.169.254"),
            ("evil/loop/main", ProviderError, "redirected more than 5 times"),
            ("evil/scheme/main", UnsafeURL, "file URL"),
        ],
    )


async def test_enterprise_api_base(make_provider) -> None:
    provider = make_provider(
        GitHubRepoProvider,
        "github/renamed-and-enterprise",
        hostname="github.example.org",
        api_base_url="https://{hostname}/api/v3",
    )
    ref = await provider.resolve("research/analysis/main")
    assert ref.repo_url == "https://github.example.org/research/analysis"
    assert ref.resolved_ref == "fedcba9876543210fedcba9876543210fedcba98"
    # BinderHub's option name works too.
    legacy = make_provider(
        GitHubRepoProvider,
        "github/renamed-and-enterprise",
        hostname="github.example.org",
        api_base_path="https://{hostname}/api/v3",
    )
    assert (await legacy.resolve("research/analysis/main")).resolved_ref == ref.resolved_ref


async def test_token_is_sent_but_never_leaks(make_provider, caplog) -> None:
    token = "ghp_0123456789abcdefSECRETTOKEN"
    caplog.set_level(logging.DEBUG)
    provider = make_provider(
        GitHubRepoProvider, "github/renamed-and-enterprise", access_token=token
    )
    ref = await provider.resolve("private-org/secret/main")
    assert provider.http.requests[0].headers["Authorization"] == f"Bearer {token}"
    assert token not in repr(ref)
    assert all(token not in r.getMessage() for r in caplog.records)
    assert token in provider.secret_values()
    env = provider.build_env(ref)
    assert env["GIT_CONFIG_KEY_0"] == "credential.https://github.com.helper"
    assert env["GIT_CREDENTIAL_ENV"] == f"username=x-access-token\npassword={token}"


async def test_token_not_forwarded_to_other_hosts(make_provider) -> None:
    provider = make_provider(
        GitHubRepoProvider, "github/renamed-and-enterprise", access_token="ghp_secret_value_123"
    )
    await provider.resolve("private-org/moved/main")
    assert "Authorization" in provider.http.requests[0].headers
    assert "Authorization" not in provider.http.requests[1].headers


async def test_bad_credentials_are_an_operator_problem(make_provider) -> None:
    provider = make_provider(
        GitHubRepoProvider, "github/renamed-and-enterprise", access_token="bad-token-value"
    )
    with pytest.raises(ProviderError, match="access_token"):
        await provider.resolve("binder-examples/requirements/main")


async def test_client_id_and_secret_are_basic_auth(make_provider) -> None:
    provider = make_provider(
        GitHubRepoProvider, "github/ref-branch", client_id="Iv1.abc", client_secret="s3cr3t-value"
    )
    await provider.resolve("binder-examples/requirements/HEAD")
    assert provider.http.requests[0].auth == ("Iv1.abc", "s3cr3t-value")
    assert "s3cr3t-value" in provider.secret_values()


async def test_per_spec_token_and_credentials(make_provider) -> None:
    provider = make_provider(
        GitHubRepoProvider,
        "github/renamed-and-enterprise",
        spec_config=[
            {
                "pattern": "^private-org/",
                "config": {
                    "access_token": "ghp_org_only_token",
                    "git_credentials": "username=bot\\npassword=org-clone-secret",
                },
            }
        ],
    )
    ref = await provider.resolve("private-org/secret/main")
    assert provider.http.requests[0].headers["Authorization"] == "Bearer ghp_org_only_token"
    assert (
        provider.build_env(ref)["GIT_CREDENTIAL_ENV"] == "username=bot\npassword=org-clone-secret"
    )
    assert {"ghp_org_only_token", "org-clone-secret"} <= set(provider.secret_values())


def test_token_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("GITHUB_ACCESS_TOKEN", "from-the-environment")
    assert GitHubRepoProvider().access_token == "from-the-environment"


def test_describe() -> None:
    info = GitHubRepoProvider().describe()
    assert info["id"] == "gh"
    assert info["ref"] == {
        "enabled": True,
        "label": "Git ref (branch, tag, or commit)",
        "default": "HEAD",
    }
