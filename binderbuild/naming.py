"""Pure naming rules: registry-safe image names and DNS-safe build names.

Both are deterministic for a repository + resolved ref, and embed a hash of
the repository identity, so two repositories whose readable parts collapse to
the same characters never collide.

The hash is what keeps one repository's image from being served for
another: the readable part is truncated, and identities are partly chosen by
strangers (a git URL, a CKAN site's own dataset name), so an attacker can make
their readable part equal a victim's and then search for a hash collision.
64 bits make that search infeasible; 32 bits (a few minutes of hashing) did not.
"""

from __future__ import annotations

import hashlib
import re

from binderbuild.models import ImageSpec, ResolvedRef

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_NOT_TAG = re.compile(r"[^A-Za-z0-9_.-]")
_DNS_LABEL_MAX = 63
# Hex digits of the identity hash in image and build names (64 bits).
_IDENTITY_DIGEST = 16


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def readable_slug(text: str, max_length: int) -> str:
    """Lowercase alphanumerics joined by single dashes, trimmed to max_length."""
    slug = _NOT_SLUG.sub("-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-")


_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _readable_identity(identity: str) -> str:
    """The human part of a repository identity: no scheme, no trailing .git."""
    text = _SCHEME.sub("", identity)
    return text[:-4] if text.endswith(".git") else text


def repo_slug(identity: str, max_length: int = 64) -> str:
    """Registry-safe slug for a repository: readable part + 16 hex of its hash."""
    readable = (
        readable_slug(_readable_identity(identity), max_length - _IDENTITY_DIGEST - 1) or "repo"
    )
    return f"{readable}-{_digest(identity, _IDENTITY_DIGEST)}"


def image_tag(resolved_ref: str) -> str:
    """A valid Docker tag for a resolved ref (commit SHAs pass unchanged)."""
    tag = _NOT_TAG.sub("-", resolved_ref)
    if not tag or not (tag[0].isalnum() or tag[0] == "_"):
        tag = "r" + tag
    if len(tag) > 128:
        tag = tag[:119] + "-" + _digest(resolved_ref, 8)
    return tag


def build_name(identity: str, resolved_ref: str) -> str:
    """DNS label (<= 63 chars) unique to repository + resolved ref.

    Used as the dedup key and as the Kubernetes build pod name: a request
    whose build name collides with a running build joins that build, so it
    gets the same strength of hash as the image name.
    """
    digest = _digest(f"{identity}\0{resolved_ref}", _IDENTITY_DIGEST)
    tail = "/".join(_readable_identity(identity).rstrip("/").split("/")[-2:])
    readable = readable_slug(tail, _DNS_LABEL_MAX - len("build--") - _IDENTITY_DIGEST)
    return f"build-{readable}-{digest}" if readable else f"build-{digest}"


def image_spec(ref: ResolvedRef, image_prefix: str) -> ImageSpec:
    """``{image_prefix}{slug}:{tag}``; the prefix carries the registry host, if any."""
    return ImageSpec(
        repository=f"{image_prefix}{repo_slug(ref.slug_source)}",
        tag=image_tag(ref.resolved_ref),
        build_name=build_name(ref.slug_source, ref.resolved_ref),
    )
