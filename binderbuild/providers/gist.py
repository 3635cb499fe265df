"""GitHub Gists: ``gist/{owner}/{gist_id}[/{ref}]`` resolved to a revision SHA.

``GET {api}/gists/{id}`` lists the gist's ``history`` newest first; its
first ``version`` is the latest revision. A given ref must be one of the
revisions (a full SHA, or an unambiguous prefix of one). ``HEAD``, ``main``
and ``master`` (and no ref) mean the latest revision, as on BinderHub.
Secret gists are refused unless ``allow_secret_gist`` is set, and the owner in
the spec must be the gist's owner. Requests share GitHub's ETag revalidation,
token and rate-limit handling.
"""

from __future__ import annotations

import re

from traitlets import Bool, Unicode

from binderbuild.errors import Forbidden, ProviderError, RefNotFound, SpecError
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import ParsedSpec, host_detect_regex, reject_control_chars
from binderbuild.providers.github import OWNER_RE, GitHubRepoProvider
from binderbuild.providers.httpapi import json_object

GIST_ID_RE = re.compile(r"^[0-9a-fA-F]{1,64}$|^[0-9]{1,20}$")
REVISION_RE = re.compile(r"^[0-9a-f]{7,40}$")
LATEST = frozenset({"", "HEAD", "main", "master"})


class GistRepoProvider(GitHubRepoProvider):
    provider_id = "gist"
    display_name = "Gist"
    content_provider = "git"
    repo_label = "Gist ID (username/gistId) or URL"
    repo_placeholder = "username/gistId"
    repo_regex = r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[0-9a-fA-F]+$"
    spec_regex = r"[^/]+/[^/]+(/[^/]+)?"
    ref_label = "Git commit SHA"

    gist_hostname = Unicode(
        "gist.github.com",
        config=True,
        help="Host that serves gists (GitHub Enterprise: its gist host).",
    )
    allow_secret_gist = Bool(
        False,
        config=True,
        help="Allow secret (unlisted) gists. Off by default, as on BinderHub.",
    )

    def detect_regex(self) -> str | None:
        return host_detect_regex(self.gist_hostname)

    def parse(self, spec: str) -> ParsedSpec:
        reject_control_chars(spec, "spec")
        parts = spec.split("/")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise SpecError(f'A gist spec is "owner/gistId[/revision]"; got {spec!r}.')
        owner, gist_id = parts[0], parts[1]
        ref = parts[2] if len(parts) == 3 else ""
        if not OWNER_RE.match(owner):
            raise SpecError(f"{owner!r} is not a valid GitHub user name.")
        if not GIST_ID_RE.match(gist_id):
            raise SpecError(f"{gist_id!r} is not a gist id.")
        if ref not in LATEST and not REVISION_RE.match(ref.lower()):
            raise SpecError(
                f"{ref!r} is not a gist revision: use a commit SHA, or HEAD for the latest."
            )
        return ParsedSpec(repo=f"{owner}/{gist_id}", ref=ref or "HEAD")

    async def resolve(self, spec: str) -> ResolvedRef:
        parsed = self.parse(spec)
        owner, gist_id = parsed.repo.split("/")
        ref = parsed.ref
        url = f"{self.api_base}/gists/{gist_id}"
        resp = await self.github_request(url, spec, "application/vnd.github+json")
        if resp.status != 200:
            raise self.translate_error(resp, f"gist {gist_id}")
        data = json_object(resp, self.display_name)
        login = str((data.get("owner") or {}).get("login", ""))
        if login.lower() != owner.lower():
            # Anonymous gists have no owner; any other name is a wrong link.
            raise RefNotFound(f"Gist {gist_id} does not belong to {owner!r}.")
        if not data.get("public", False) and not self.allow_secret_gist:
            raise Forbidden(
                "This is a secret gist; this service does not launch secret gists "
                "(operators can allow them with GistRepoProvider.allow_secret_gist)."
            )
        versions = [
            str(h.get("version", "")) for h in data.get("history") or [] if isinstance(h, dict)
        ]
        versions = [v for v in versions if v]
        if not versions:
            raise ProviderError(f"GitHub listed no revisions for gist {gist_id}.")
        if ref in LATEST:
            resolved = versions[0]
        else:
            matches = [v for v in versions if v.startswith(ref.lower())]
            if len(matches) != 1:
                problem = "is ambiguous" if matches else "was not found"
                raise RefNotFound(f"Revision {ref!r} of gist {gist_id} {problem}.")
            resolved = matches[0]
        repo_url = f"https://{self.gist_hostname}/{gist_id}.git"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=ref,
            resolved_ref=resolved,
            resolved_spec=f"{owner}/{gist_id}/{resolved}",
            repo_url=repo_url,
            ref_url=f"https://{self.gist_hostname}/{owner}/{gist_id}/{resolved}",
            slug_source=f"{self.gist_hostname}/{gist_id}".lower(),
            content_provider=self.content_provider,
            immutable_ref=ref.lower() == resolved,
        )
