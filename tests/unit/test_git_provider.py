from urllib.parse import quote

import pytest

from binderbuild.errors import SpecError, UnsafeURL
from binderbuild.providers.git import GitRepoProvider, pick_ref

LS_REMOTE = """\
1111111111111111111111111111111111111111\tHEAD
2222222222222222222222222222222222222222\trefs/heads/main
3333333333333333333333333333333333333333\trefs/tags/v1
4444444444444444444444444444444444444444\trefs/tags/v1^{}
5555555555555555555555555555555555555555\trefs/heads/feature/v1
6666666666666666666666666666666666666666\trefs/pull/1/head
"""


@pytest.mark.parametrize(
    ("ref", "sha"),
    [
        ("HEAD", "1" * 40),
        ("main", "2" * 40),
        ("v1", "4" * 40),  # the commit an annotated tag points at, not the tag object
        ("refs/tags/v1", "4" * 40),
        ("feature/v1", "5" * 40),
        ("refs/pull/1/head", "6" * 40),
        ("nope", None),
        ("1", None),
    ],
)
def test_pick_ref_prefers_exact_names(ref, sha):
    assert pick_ref(LS_REMOTE, ref) == sha


def spec(url: str, ref: str = "HEAD") -> str:
    return f"{quote(url, safe='')}/{quote(ref, safe='')}"


def test_parse_decodes_url_and_ref():
    provider = GitRepoProvider()
    parsed = provider.parse(spec("https://example.org/a/b.git", "feature/x"))
    assert (parsed.repo, parsed.ref) == ("https://example.org/a/b.git", "feature/x")
    # The ref part may be given unencoded with slashes.
    assert provider.parse(quote("https://e.org/r", safe="") + "/feature/x").ref == "feature/x"


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c id",
        "fd::3",
        "file:///etc/passwd",
        "ssh://git@example.org/r",
        "git@example.org:r.git",
        "-uhttps://example.org/r",
        "--upload-pack=id",
        "https://exa\tmple.org/r",
        "/local/path",
        "https://",
        "https://user:password@example.org/r",
        "https://token@example.org/r",
    ],
)
def test_hostile_urls_are_refused(url):
    with pytest.raises(SpecError):
        GitRepoProvider().parse(spec(url))


def test_scheme_refusal_is_unsafe_url():
    with pytest.raises(UnsafeURL):
        GitRepoProvider().parse(spec("file:///etc"))


@pytest.mark.parametrize(
    "ref", ["-x", "--output=/tmp/x", "a..b", "a b", "a~1", "a^", "a:b", "a\x00b", "ref.lock", "/a", "a//b"]
)
def test_hostile_refs_are_refused(ref):
    with pytest.raises(SpecError):
        GitRepoProvider().parse(spec("https://example.org/r", ref))


def test_allowed_schemes_are_configurable():
    provider = GitRepoProvider(allowed_schemes=["https"])
    provider.parse(spec("https://example.org/r"))
    with pytest.raises(UnsafeURL):
        provider.parse(spec("http://example.org/r"))


def test_git_argv_disables_other_transports_and_ends_options():
    argv = GitRepoProvider()._git_argv("https://example.org/r", "main")
    assert "protocol.allow=never" in argv
    assert argv[argv.index("ls-remote") + 1] == "--"
    assert argv[-3:] == ["https://example.org/r", "main", "main^{}"]
