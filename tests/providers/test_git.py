"""Plain git provider against real git servers on loopback (git daemon, smart HTTP)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from binderbuild.errors import ProviderError, RefNotFound, SpecError, UnsafeURL
from binderbuild.netsafety import parse_allowed, parse_networks
from binderbuild.providers.git import GitRepoProvider
from tests.providers.helpers import expect_parse_error
from tests.realservices import GitServer, add_commit, bare_repo_path, free_port, make_repo

LOOPBACK = parse_networks(["127.0.0.0/8"])


def provider(**traits: object) -> GitRepoProvider:
    return GitRepoProvider(allowed_internal_networks=LOOPBACK, **traits)


def spec(url: str, ref: str) -> str:
    return f"{quote(url, safe='')}/{quote(ref, safe='')}"


@pytest.fixture
def repo(git_server: GitServer) -> tuple[str, str]:
    """A fresh repository on the session's git server: (name, sha of main)."""
    name = f"prov-{secrets.token_hex(4)}"
    sha = make_repo(git_server.root, name, {"README.md": f"# {name}\n"})
    return name, sha


def tag(root: Path, name: str, tag_name: str, target: str) -> None:
    """Annotated tag in the bare repository (its object differs from the commit)."""
    env = {
        **os.environ,
        "GIT_COMMITTER_NAME": "tests",
        "GIT_COMMITTER_EMAIL": "tests@binderbuild.invalid",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    subprocess.run(
        [
            "git",
            "-C",
            str(bare_repo_path(root, name)),
            "tag",
            "-a",
            tag_name,
            "-m",
            "release",
            target,
        ],
        check=True,
        env=env,
        capture_output=True,
    )


@pytest.mark.parametrize("protocol", ["git", "http"])
async def test_resolves_branch_and_head(git_server: GitServer, repo, protocol: str) -> None:
    name, sha = repo
    url = git_server.git_url(name) if protocol == "git" else git_server.http_url(name)
    ref = await provider().resolve(spec(url, "main"))
    assert ref.resolved_ref == sha
    assert ref.repo_url == url
    assert ref.resolved_spec == f"{quote(url, safe='')}/{sha}"
    assert not ref.immutable_ref
    head = await provider().resolve(spec(url, "HEAD"))
    assert head.resolved_ref == sha


async def test_branch_that_moves_resolves_to_new_commit(git_server: GitServer, repo) -> None:
    name, first = repo
    url = git_server.http_url(name)
    assert (await provider().resolve(spec(url, "main"))).resolved_ref == first
    second = add_commit(git_server.root, name, {"data.csv": "a,b\n"}, "more data")
    assert (await provider().resolve(spec(url, "main"))).resolved_ref == second


async def test_annotated_tag_resolves_to_its_commit(git_server: GitServer, repo) -> None:
    name, sha = repo
    tag(git_server.root, name, "v1.0", sha)
    ref = await provider().resolve(spec(git_server.git_url(name), "v1.0"))
    assert ref.resolved_ref == sha


async def test_full_sha_is_immutable_without_asking(git_server: GitServer, repo) -> None:
    name, sha = repo
    ref = await provider().resolve(spec(git_server.git_url(name), sha))
    assert ref.resolved_ref == sha and ref.immutable_ref


@pytest.mark.parametrize("protocol", ["git", "http"])
async def test_unknown_ref_and_repository(git_server: GitServer, repo, protocol: str) -> None:
    name, _ = repo
    url_of = git_server.git_url if protocol == "git" else git_server.http_url
    with pytest.raises(RefNotFound, match="no such ref"):
        await provider().resolve(spec(url_of(name), "no-such-branch"))
    with pytest.raises(RefNotFound, match="not found"):
        await provider().resolve(spec(url_of(f"missing-{secrets.token_hex(3)}"), "main"))


async def test_server_down_is_a_provider_error() -> None:
    url = f"git://127.0.0.1:{free_port()}/nothing.git"
    with pytest.raises(ProviderError, match="Could not reach"):
        await provider().resolve(spec(url, "main"))


async def test_timeout_is_a_provider_error(git_server: GitServer, repo) -> None:
    name, _ = repo
    # The same words as a closed port (no oracle); the log says "Timed out".
    with pytest.raises(ProviderError, match="Could not reach the repository"):
        await provider(ls_remote_timeout=0.001).resolve(spec(git_server.http_url(name), "main"))


async def test_loopback_needs_the_operator_allow_list(git_server: GitServer, repo) -> None:
    name, _ = repo
    # Refused with the words of an unreachable host (the log says why).
    with pytest.raises(ProviderError, match="Could not reach the repository"):
        await GitRepoProvider().resolve(spec(git_server.git_url(name), "main"))


@pytest.mark.parametrize(
    "url, error, message",
    [
        ("ext::sh -c touch% /tmp/pwned", UnsafeURL, "remote-helper"),
        ("fd::17", UnsafeURL, "remote-helper"),
        ("file:///etc", UnsafeURL, "scheme 'file'"),
        ("ssh://git@example.org/repo.git", UnsafeURL, "scheme 'ssh'"),
        ("git@github.com:owner/repo.git", UnsafeURL, "full URL"),
        ("--upload-pack=touch /tmp/pwned", UnsafeURL, "cannot start with '-'"),
        ("https://", SpecError, "no host"),
        ("", SpecError, "empty"),
    ],
)
def test_hostile_urls(url: str, error: type, message: str) -> None:
    expect_parse_error(GitRepoProvider(), spec(url, "main"), error, message)


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/repo.git", "http://10.1.2.3/repo.git", "git://[::1]/repo.git"],
)
async def test_internal_addresses_refused_before_git_runs(url: str) -> None:
    with pytest.raises(ProviderError, match="Could not reach the repository"):
        await GitRepoProvider().resolve(spec(url, "main"))


async def test_an_address_and_port_rule_admits_that_server_only(git_server: GitServer, repo) -> None:
    """The run command allows exactly its own git server (issue 11): an
    ``address:port`` rule admits that port and nothing else on the address,
    and a refusal reads like an unreachable host (no port oracle)."""
    name, sha = repo
    url = git_server.git_url(name)
    port = urlsplit(url).port
    only_git = GitRepoProvider(allowed_internal_networks=parse_allowed([f"127.0.0.1:{port}"]))
    ref = await only_git.resolve(spec(url, "main"))
    assert ref.resolved_ref == sha
    other = f"git://127.0.0.1:{free_port()}/{name}.git"
    with pytest.raises(ProviderError) as refused:
        await only_git.resolve(spec(other, "main"))
    refused_text = refused.value.message.replace(other, "URL")
    with pytest.raises(ProviderError) as unreachable:
        await provider().resolve(spec(other, "main"))  # allowed, but nothing listens
    unreachable_text = unreachable.value.message.replace(other, "URL")
    assert refused_text == unreachable_text
