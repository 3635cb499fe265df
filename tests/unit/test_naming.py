import re

from hypothesis import given
from hypothesis import strategies as st

from binderbuild import naming
from binderbuild.models import ResolvedRef

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
REPO_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def ref(identity: str, resolved: str = "a" * 40) -> ResolvedRef:
    return ResolvedRef("git", "spec", "HEAD", resolved, "spec2", identity, identity, identity)


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=200))
def test_names_are_always_valid(identity, resolved):
    image = naming.image_spec(ref(identity, resolved), "reg.example.org/binder-")
    assert DNS_LABEL.match(image.build_name), image.build_name
    assert len(image.build_name) <= 63
    assert TAG.match(image.tag), image.tag
    assert REPO_COMPONENT.match(image.repository.split("/", 1)[1]), image.repository


def test_names_are_deterministic():
    a = naming.image_spec(ref("https://example.org/a/b"), "p-")
    b = naming.image_spec(ref("https://example.org/a/b"), "p-")
    assert a == b


def test_repositories_that_look_alike_do_not_collide():
    # Both collapse to the same readable slug; the hash keeps them apart.
    one = naming.image_spec(ref("https://example.org/a-b/c"), "p-")
    two = naming.image_spec(ref("https://example.org/a/b-c"), "p-")
    assert naming.readable_slug("https://example.org/a-b/c", 50) == naming.readable_slug(
        "https://example.org/a/b-c", 50
    )
    assert one.repository != two.repository
    assert one.build_name != two.build_name


def test_same_repo_other_ref_other_build():
    one = naming.image_spec(ref("x", "a" * 40), "p-")
    two = naming.image_spec(ref("x", "b" * 40), "p-")
    assert one.repository == two.repository
    assert one.tag != two.tag
    assert one.build_name != two.build_name


def test_commit_sha_is_the_tag_and_prefix_is_kept():
    image = naming.image_spec(ref("https://github.com/o/r", "0123456789abcdef" * 2 + "01234567"), "127.0.0.1:5000/bb-")
    assert image.tag == "0123456789abcdef0123456789abcdef01234567"
    assert image.repository.startswith("127.0.0.1:5000/bb-github-com-o-r-")
    assert image.name == f"{image.repository}:{image.tag}"
