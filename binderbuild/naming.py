"""Pure naming rules: registry-safe image names and DNS-safe build names.

Both are deterministic for a repository + resolved ref, and embed a hash of
the repository identity, so two repositories whose readable parts collapse to
the same characters never collide.
"""

from __future__ import annotations

import hashlib
import re

from binderbuild.models import ImageSpec, ResolvedRef

_NOT_SLUG = re.compile(r"[^a-z0-9]+")
# Docker tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
_NOT_TAG = re.compile(r"[^A-Za-z0-9_.-]")
_DNS_LABEL_MAX = 63


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
    """Registry-safe slug for a repository: readable part + 8 hex of its hash."""
    readable = readable_slug(_readable_identity(identity), max_length - 9) or "repo"
    return f"{readable}-{_digest(identity, 8)}"


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

    Used as the dedup key and as the Kubernetes build pod name.
    """
    digest = _digest(f"{identity}\0{resolved_ref}", 12)
    tail = "/".join(_readable_identity(identity).rstrip("/").split("/")[-2:])
    readable = readable_slug(tail, _DNS_LABEL_MAX - len("build--") - 12)
    return f"build-{readable}-{digest}" if readable else f"build-{digest}"


def image_spec(ref: ResolvedRef, image_prefix: str) -> ImageSpec:
    """``{image_prefix}{slug}:{tag}``; the prefix carries the registry host, if any."""
    return ImageSpec(
        repository=f"{image_prefix}{repo_slug(ref.slug_source)}",
        tag=image_tag(ref.resolved_ref),
        build_name=build_name(ref.slug_source, ref.resolved_ref),
    )
