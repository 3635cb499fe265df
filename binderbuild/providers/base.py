"""The contract every repository provider implements.

A provider turns a spec (the part of a Binder URL after the provider prefix)
into a ``ResolvedRef``: the immutable ref, the URL repo2docker fetches and the
browse URL. Providers do no caching themselves (the pipeline caches results)
and keep no per-request state on ``self``.

To add one: subclass ``RepoProvider``, set the class attributes, implement
``parse`` and ``resolve``, and list it in ``BinderBuild.repo_providers``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote

from traitlets import Dict, List, Unicode
from traitlets.config import LoggingConfigurable

from binderbuild.errors import SpecError
from binderbuild.http import HttpClient
from binderbuild.models import ResolvedRef
from binderbuild.netsafety import AllowRule

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class ParsedSpec:
    """A validated spec: repository part and (unresolved) ref."""

    repo: str
    ref: str


def reject_control_chars(value: str, what: str) -> None:
    if _CONTROL.search(value):
        raise SpecError(f"The {what} contains control characters.")


def split_encoded_spec(spec: str, usage: str) -> tuple[str, str]:
    """Split ``{url-encoded repository}/{ref}`` into the decoded repository and
    the decoded ref ('' when absent). The repository part is url-encoded, so the
    first '/' separates it from the ref, which may contain '/'.
    ``usage`` is the sentence shown when the spec has no '/' at all."""
    reject_control_chars(spec, "spec")
    if "/" not in spec:
        raise SpecError(usage)
    quoted_repo, quoted_ref = spec.split("/", 1)
    return unquote(quoted_repo), unquote(quoted_ref)


def host_detect_regex(hostname: str) -> str:
    """BinderHub's detect.regex for a hosted provider: an optional
    ``https://{hostname}/`` then the repository (group ``repo``), trailing '/'
    dropped. JavaScript syntax (named group ``(?<repo>...)``)."""
    return rf"^(https?://{re.escape(hostname)}/)?(?<repo>.*[^/])/?"


class RepoProvider(LoggingConfigurable):
    """Base class. Subclasses set the ClassVars and implement parse/resolve."""

    provider_id: ClassVar[str] = ""
    display_name: ClassVar[str] = ""
    # repo2docker content provider that fetches what repo_url points at.
    content_provider: ClassVar[str] = "git"
    # Describes the form fields for UIs (/api/repoproviders).
    repo_label: ClassVar[str] = "Repository"
    repo_placeholder: ClassVar[str] = ""
    # A JavaScript-compatible regex the *repository* field must match.
    repo_regex: ClassVar[str] = ".+"
    uses_ref: ClassVar[bool] = True
    ref_label: ClassVar[str] = "Git ref (branch, tag, or commit)"
    # A JavaScript-compatible regex a whole spec (what follows /v2/{provider}/)
    # matches; BinderHub's "spec.validateRegex". None: repo_regex, for
    # providers whose spec is the identifier as typed.
    spec_regex: ClassVar[str | None] = None
    # The repository part of the spec is url-encoded (git URLs, GitLab paths):
    # BinderHub's "repo.urlEncode", which tells a UI to encode what was typed.
    url_encoded: ClassVar[bool] = False

    default_ref = Unicode(
        "HEAD", config=True, help="Ref used when a spec or the home page form leaves it empty."
    )
    banned_specs = List(
        Unicode(),
        config=True,
        help="Regular expressions; a spec matching any of them is refused (403).",
    )
    allowed_specs = List(
        Unicode(),
        config=True,
        help="Regular expressions; when set, only specs matching one of them are served.",
    )
    high_quota_specs = List(
        Unicode(),
        config=True,
        help="Regular expressions for specs that get BinderBuild.per_repo_quota_higher.",
    )
    spec_config = List(
        Dict(),
        config=True,
        help="""Per-spec overrides: a list of {"pattern": regex, "config": {...}}.
        Keys of every matching entry are merged in order, e.g.
        {"pattern": "^org/big-course.*", "config": {"quota": 200}}.""",
    )

    def __init__(
        self,
        *,
        http: HttpClient | None = None,
        allowed_internal_networks: list[AllowRule] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.http = http
        self.allowed_internal_networks = list(allowed_internal_networks or [])

    # --- to implement -------------------------------------------------------

    def parse(self, spec: str) -> ParsedSpec:
        """Validate a spec without any I/O; raise SpecError with a clear message."""
        raise NotImplementedError

    async def resolve(self, spec: str) -> ResolvedRef:
        """Resolve the spec's ref to an immutable id.

        Raises RefNotFound, SpecError/UnsafeURL, ProviderError (upstream down),
        ProviderRateLimited.
        """
        raise NotImplementedError

    # --- optional hooks -----------------------------------------------------

    def build_env(self, ref: ResolvedRef) -> dict[str, str]:
        """Environment variables the repo2docker process needs to fetch ``ref``.

        Used for credentials of private repositories: the builder adds these to
        the repo2docker process only (``BuildJob.extra_env``), never to build
        steps, events or logs. Public repositories need nothing.
        """
        return {}

    def secret_values(self) -> list[str]:
        """Every configured secret of this provider (tokens, passwords), so the
        service can scrub them from logs and build output."""
        return []

    # --- shared behaviour ---------------------------------------------------

    def is_banned(self, spec: str) -> bool:
        if any(re.match(p, spec) for p in self.banned_specs):
            return True
        return bool(self.allowed_specs) and not any(re.match(p, spec) for p in self.allowed_specs)

    def has_higher_quota(self, spec: str) -> bool:
        return any(re.match(p, spec) for p in self.high_quota_specs)

    def repo_config(self, spec: str) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in self.spec_config:
            if re.match(entry.get("pattern", "$^"), spec):
                merged.update(entry.get("config", {}))
        return merged

    def detect_regex(self) -> str | None:
        """A JavaScript regex whose named group ``repo`` finds the repository in
        a pasted web address (BinderHub's "detect.regex"), or None."""
        return None

    def describe(self) -> dict[str, Any]:
        """The provider's entry in /api/repoproviders: BinderHub's display_config
        fields (id, displayName, spec.validateRegex, repo.label/placeholder/urlEncode,
        ref.enabled/default, detect.regex) plus binderbuild's own (regex, ref.label)."""
        info: dict[str, Any] = {
            "id": self.provider_id,
            "displayName": self.display_name,
            "regex": self.repo_regex,
            "spec": {
                "validateRegex": self.repo_regex if self.spec_regex is None else self.spec_regex
            },
            "repo": {
                "label": self.repo_label,
                "placeholder": self.repo_placeholder,
                "urlEncode": self.url_encoded,
            },
            "ref": {
                "enabled": self.uses_ref,
                "label": self.ref_label,
                "default": self.default_ref if self.uses_ref else "",
            },
        }
        detect = self.detect_regex()
        if detect:
            info["detect"] = {"regex": detect}
        return info
