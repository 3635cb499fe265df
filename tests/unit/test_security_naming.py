"""Image names must not let one repository's image be served for another.

The image name is the cache key: whoever builds it first decides what every
later request for that name runs. Its readable part is truncated, so two long
identities share it, and the hash that tells them apart is all that is left.
"""

from __future__ import annotations

import hashlib

from binderbuild import naming
from binderbuild.models import ResolvedRef

# Two identities a stranger can produce (say, from one CKAN site they run,
# whose answers choose dataset names and activity ids): same readable prefix
# after truncation, and the same first 32 bits of SHA-256. Found by a birthday
# search over ~60k names in seconds; the old names (8 hex digits) were equal.
SITE = "https://github.com-a-long-organisation-name-a-rather-long-repository-name-for-science.example.net"
ONE = f"{SITE}/dataset/d41067"
TWO = f"{SITE}/dataset/d62550"
SHA = "0123456789abcdef0123456789abcdef01234567"


def ref(identity: str, resolved: str = SHA) -> ResolvedRef:
    return ResolvedRef("ckan", "spec", "latest", resolved, "spec2", identity, identity, identity)


def test_fixture_is_a_real_32_bit_collision():
    # Guards the fixture itself: otherwise the next test proves nothing.
    assert ONE != TWO
    assert hashlib.sha256(ONE.encode()).hexdigest()[:8] == hashlib.sha256(TWO.encode()).hexdigest()[:8]
    assert naming.readable_slug(ONE.split("://")[1], 55) == naming.readable_slug(TWO.split("://")[1], 55)


def test_colliding_short_hashes_still_give_distinct_images_and_builds():
    one = naming.image_spec(ref(ONE), "127.0.0.1:5000/binder-")
    two = naming.image_spec(ref(TWO), "127.0.0.1:5000/binder-")
    assert one.name != two.name
    assert one.build_name != two.build_name


def test_identity_hash_is_at_least_64_bits():
    slug = naming.repo_slug("https://example.org/owner/repo")
    assert len(slug.rsplit("-", 1)[1]) >= 16
    name = naming.build_name("https://example.org/owner/repo", SHA)
    assert len(name.rsplit("-", 1)[1]) >= 16
    assert len(name) <= 63
