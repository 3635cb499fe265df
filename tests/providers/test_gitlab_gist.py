"""GitLab and Gist providers against recorded API answers."""

from __future__ import annotations

import ipaddress

import pytest

from binderbuild.errors import (
    Forbidden,
    ProviderError,
    ProviderRateLimited,
    RefNotFound,
    SpecError,
    UnsafeURL,
)
from binderbuild.providers.gist import GistRepoProvider
from binderbuild.providers.gitlab import GitLabRepoProvider
from tests.providers.helpers import assert_ref, expect_errors, expect_parse_error

FOSS_SHA = "b0f5a1c2d3e4f5061728394a5b6c7d8e9f0a1b2c"
GIST = "8f2c1d7a6b5e4f3a2b1c0d9e8f7a6b5c"
GIST_LATEST = "e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6"
GIST_FIRST = "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b"

# --- GitLab ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("project-only", SpecError, "url-encoded group/project"),
        ("gitlab-org/gitlab-foss/master", SpecError, "url-encode the whole"),
        ("group%2F..%2Fx/main", SpecError, "not a valid GitLab project path"),
        ("group%2Fpro%20ject/main", SpecError, "not a valid GitLab project path"),
        ("group%2Fproject/-x", SpecError, "cannot start with '-'"),
        ("http%3A%2F%2Fgitlab.com%2Fg%2Fp/main", UnsafeURL, "https://host"),
        ("https%3A%2F%2Fuser%3Apw%40gitlab.com%2Fg%2Fp/main", UnsafeURL, "credentials"),
        ("https%3A%2F%2Fgitlab.example.org%2Fg%2Fp/main", SpecError, "not served here"),
    ],
)
def test_gitlab_malformed_specs(spec: str, error: type, message: str) -> None:
    expect_parse_error(GitLabRepoProvider(), spec, error, message)


async def test_gitlab_resolves_commit(make_provider) -> None:
    provider = make_provider(GitLabRepoProvider, "gitlab/commits")
    assert_ref(
        await provider.resolve("gitlab-org%2Fgitlab-foss/master"),
        resolved_ref=FOSS_SHA,
        resolved_spec=f"gitlab-org%2Fgitlab-foss/{FOSS_SHA}",
        repo_url="https://gitlab.com/gitlab-org/gitlab-foss.git",
        ref_url=f"https://gitlab.com/gitlab-org/gitlab-foss/-/tree/{FOSS_SHA}",
        slug_source="gitlab.com/gitlab-org/gitlab-foss",
        immutable_ref=False,
    )
    assert provider.rate_limit[:2] == (497, 500)


async def test_gitlab_nested_groups_and_ref_with_slash(make_provider) -> None:
    provider = make_provider(GitLabRepoProvider, "gitlab/commits")
    assert_ref(
        await provider.resolve("group%2Fsubgroup%2Fproject/feature/new-plots"),
        resolved_ref="c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0",
        repo_url="https://gitlab.com/group/subgroup/project.git",
    )


async def test_gitlab_not_found_rate_limit_and_outage(make_provider) -> None:
    provider = make_provider(GitLabRepoProvider, "gitlab/commits")
    errors = await expect_errors(
        provider,
        [
            ("gitlab-org%2Fgitlab-foss/no-such-branch", RefNotFound, "no-such-branch"),
            ("nobody%2Fnothing/HEAD", RefNotFound, "nobody/nothing"),
            ("busy%2Fproject/HEAD", ProviderRateLimited, "Try again in 4 minutes"),
            ("down%2Fproject/HEAD", ProviderError, "HTTP 500"),
        ],
    )
    assert errors[2].retry_after == 240


async def test_gitlab_tokens(make_provider) -> None:
    provider = make_provider(
        GitLabRepoProvider, "gitlab/commits", private_token="glpat-secret-1234"
    )
    ref = await provider.resolve("gitlab-org%2Fgitlab-foss/master")
    assert provider.http.requests[0].headers["PRIVATE-TOKEN"] == "glpat-secret-1234"
    env = provider.build_env(ref)
    assert env["GIT_CONFIG_KEY_0"] == "credential.https://gitlab.com.helper"
    assert "password=glpat-secret-1234" in env["GIT_CREDENTIAL_ENV"]
    assert "glpat-secret-1234" in provider.secret_values()
    oauth = make_provider(GitLabRepoProvider, "gitlab/commits", access_token="oauth-secret-99")
    await oauth.resolve("gitlab-org%2Fgitlab-foss/master")
    assert oauth.http.requests[0].headers["Authorization"] == "Bearer oauth-secret-99"


async def test_gitlab_self_hosted(make_provider) -> None:
    provider = make_provider(
        GitLabRepoProvider,
        "gitlab/commits",
        hostname="gitlab.example.org",
        private_token="home-token",
    )
    ref = await provider.resolve("lab%2Fnotebooks/main")
    assert ref.repo_url == "https://gitlab.example.org/lab/notebooks.git"
    assert provider.describe()["displayName"] == "GitLab (gitlab.example.org)"


async def test_gitlab_user_named_host(make_provider, resolver) -> None:
    provider = make_provider(
        GitLabRepoProvider,
        "gitlab/commits",
        allowed_hosts=["gitlab.example.org"],
        private_token="never-for-other-hosts",
    )
    spec = "https%3A%2F%2Fgitlab.example.org%2Flab%2Fnotebooks/main"
    ref = await provider.resolve(spec)
    assert ref.repo_url == "https://gitlab.example.org/lab/notebooks.git"
    assert (
        ref.resolved_spec
        == f"https%3A%2F%2Fgitlab.example.org%2Flab%2Fnotebooks/{ref.resolved_ref}"
    )
    assert "PRIVATE-TOKEN" not in provider.http.requests[0].headers
    assert "gitlab.example.org" in resolver.asked
    assert provider.build_env(ref) == {}


async def test_gitlab_user_named_internal_host_is_refused(make_provider) -> None:
    provider = make_provider(GitLabRepoProvider, "gitlab/commits", allowed_hosts=["*"])
    with pytest.raises(UnsafeURL, match="internal address"):
        await provider.resolve("https%3A%2F%2Finternal.example%2Flab%2Fnotebooks/main")
    assert provider.http.requests == []
    allowed = make_provider(
        GitLabRepoProvider,
        "gitlab/commits",
        allowed_hosts=["*"],
        allowed_internal_networks=[ipaddress.ip_network("10.0.0.0/8")],
    )
    # The operator's allow-list lets it through (to the recorded answer).
    ref = await allowed.resolve("https%3A%2F%2Finternal.example%2Flab%2Fnotebooks/main")
    assert ref.repo_url == "https://internal.example/lab/notebooks.git"


# --- Gist -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("onlyuser", "owner/gistId"),
        ("a/b/c/d", "owner/gistId"),
        ("user/not-hex!", "not a gist id"),
        ("-user/abc", "not a valid GitHub user"),
        ("user/abcdef/feature-branch", "not a gist revision"),
    ],
)
def test_gist_malformed_specs(spec: str, message: str) -> None:
    expect_parse_error(GistRepoProvider(), spec, SpecError, message)


@pytest.mark.parametrize("ref", ["", "/HEAD", "/master", "/main"])
async def test_gist_latest(make_provider, ref: str) -> None:
    provider = make_provider(GistRepoProvider, "gist/gists")
    assert_ref(
        await provider.resolve(f"Carreau/{GIST}{ref}"),
        resolved_ref=GIST_LATEST,
        repo_url=f"https://gist.github.com/{GIST}.git",
        ref_url=f"https://gist.github.com/Carreau/{GIST}/{GIST_LATEST}",
        resolved_spec=f"Carreau/{GIST}/{GIST_LATEST}",
        immutable_ref=False,
    )


async def test_gist_revisions(make_provider) -> None:
    provider = make_provider(GistRepoProvider, "gist/gists")
    full = await provider.resolve(f"carreau/{GIST}/{GIST_FIRST}")
    assert full.resolved_ref == GIST_FIRST and full.immutable_ref
    short = await provider.resolve(f"Carreau/{GIST}/{GIST_FIRST[:8]}")
    assert short.resolved_ref == GIST_FIRST and not short.immutable_ref
    with pytest.raises(RefNotFound, match="was not found"):
        await provider.resolve(f"Carreau/{GIST}/{'0' * 40}")


async def test_gist_wrong_owner_secret_and_missing(make_provider) -> None:
    provider = make_provider(GistRepoProvider, "gist/gists")
    await expect_errors(
        provider,
        [
            (f"someone-else/{GIST}", RefNotFound, "does not belong"),
            ("Carreau/0123456789abcdef0123456789abcdef", Forbidden, "secret gist"),
            ("Carreau/deadbeefdeadbeefdeadbeefdeadbeef", RefNotFound, None),
        ],
    )
    allowed = make_provider(GistRepoProvider, "gist/gists", allow_secret_gist=True)
    secret = await allowed.resolve("Carreau/0123456789abcdef0123456789abcdef")
    assert secret.resolved_ref == "ffffeeeeddddccccbbbbaaaa9999888877776666"
