"""GitHub: ``gh/{owner}/{repo}/{ref}`` resolved to a commit SHA with the REST API.

``GET {api}/repos/{owner}/{repo}/commits/{ref}`` with the ``sha`` media type
answers with just the 40-character SHA. The answer carries an ``ETag``; the
next time the same ref is resolved (after the pipeline's cache of a branch
expired) the request is sent with ``If-None-Match`` and an unchanged ref comes
back as ``304 Not Modified``, which GitHub does not count against the rate
limit. The ETag and its body are HTTP revalidation data, kept in a bounded
map; the resolution result itself is cached by the pipeline only.

GitHub answers 404 for a repository that does not exist (or is private and
the token cannot see it) and 422 for a ref that does not exist. A spent rate
limit is 403 (or 429) with ``x-ratelimit-remaining: 0``, and becomes "try
again in N minutes" (HTTP 503 with Retry-After) instead of a failure.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from typing import Any
from urllib.parse import quote

from traitlets import Integer, Unicode, default

from binderbuild.errors import Forbidden, ProviderError, RefNotFound, SpecError
from binderbuild.http import HttpResponse
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import ParsedSpec, host_detect_regex, reject_control_chars
from binderbuild.providers.credentials import git_credential_env, password_of
from binderbuild.providers.git import SHA1_OR_SHA256, validate_ref
from binderbuild.providers.httpapi import HttpRepoProvider

# GitHub's own rules: user/org names are alphanumerics and single dashes (at
# most 39); repository names alphanumerics, '.', '-', '_' (at most 100).
OWNER_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9]|-(?=[A-Za-z0-9])){0,38}$")
REPO_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
SHA_MEDIA_TYPE = "application/vnd.github.sha"


class ETagStore:
    """Bounded LRU map: request key -> (ETag, response body).

    Only what HTTP revalidation needs; a 304 is answered with the stored body.
    """

    def __init__(self, max_size: int = 4096) -> None:
        self.max_size = max_size
        self._data: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def get(self, key: str) -> tuple[str, bytes] | None:
        item = self._data.get(key)
        if item is not None:
            self._data.move_to_end(key)
        return item

    def set(self, key: str, etag: str, body: bytes) -> None:
        self._data[key] = (etag, body)
        self._data.move_to_end(key)
        while len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class GitHubRepoProvider(HttpRepoProvider):
    provider_id = "gh"
    display_name = "GitHub"
    content_provider = "git"
    repo_label = "GitHub repository name or URL"
    repo_placeholder = "owner/repository"
    repo_regex = r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$"
    spec_regex = r"[^/]+/[^/]+/.+"

    hostname = Unicode(
        "github.com",
        config=True,
        help="GitHub host that serves the repositories; change it for GitHub Enterprise.",
    )
    api_base_url = Unicode(
        "https://api.{hostname}",
        config=True,
        help="""Base URL of the GitHub REST API. '{hostname}' is replaced by
        GitHubRepoProvider.hostname. GitHub Enterprise: 'https://{hostname}/api/v3'.""",
    )
    api_base_path = Unicode(
        "",
        config=True,
        help="BinderHub's name for api_base_url; used instead of it when set.",
    )
    access_token = Unicode(
        config=True,
        help="""Token for the GitHub API (5000 instead of 60 requests an hour, and
        access to private repositories it can read). Default: $GITHUB_ACCESS_TOKEN.""",
    )
    client_id = Unicode(
        config=True,
        help="OAuth app client id, used with client_secret as API credentials. Default: $GITHUB_CLIENT_ID.",
    )
    client_secret = Unicode(
        config=True, help="OAuth app client secret. Default: $GITHUB_CLIENT_SECRET."
    )
    git_credentials = Unicode(
        config=True,
        help="""Credentials git uses to clone private repositories during the build,
        as 'username=...\\npassword=...'. Default: derived from access_token.
        They reach only the repo2docker process, scoped to https://{hostname}.""",
    )
    etag_cache_size = Integer(
        4096, config=True, help="ETags (with their answers) kept for conditional requests."
    )

    @default("access_token")
    def _access_token_default(self) -> str:
        return os.environ.get("GITHUB_ACCESS_TOKEN", "")

    @default("client_id")
    def _client_id_default(self) -> str:
        return os.environ.get("GITHUB_CLIENT_ID", "")

    @default("client_secret")
    def _client_secret_default(self) -> str:
        return os.environ.get("GITHUB_CLIENT_SECRET", "")

    @default("git_credentials")
    def _git_credentials_default(self) -> str:
        if not self.access_token:
            return ""
        # GitHub accepts any user name with a token as the password.
        return f"username=x-access-token\npassword={self.access_token}"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.etags = ETagStore(self.etag_cache_size)

    # --- spec -----------------------------------------------------------------

    def detect_regex(self) -> str | None:
        return host_detect_regex(self.hostname)

    def parse(self, spec: str) -> ParsedSpec:
        reject_control_chars(spec, "spec")
        parts = spec.split("/", 2)  # the ref may contain '/'
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise SpecError(
                f'A {self.display_name} spec is "owner/repository/ref", e.g. '
                f'"binder-examples/requirements/HEAD"; got {spec!r}.'
            )
        owner, repo = parts[0], parts[1].removesuffix(".git")
        ref = parts[2] if len(parts) == 3 and parts[2] else self.default_ref
        if not OWNER_RE.match(owner):
            raise SpecError(
                f"{owner!r} is not a valid {self.display_name} user or organization name."
            )
        if not REPO_RE.match(repo) or repo in (".", ".."):
            raise SpecError(f"{repo!r} is not a valid {self.display_name} repository name.")
        validate_ref(ref)
        return ParsedSpec(repo=f"{owner}/{repo}", ref=ref)

    # --- configuration ----------------------------------------------------------

    @property
    def api_base(self) -> str:
        base = self.api_base_path or self.api_base_url
        return base.format(hostname=self.hostname).rstrip("/")

    def _setting(self, spec: str, name: str) -> str:
        """Per-spec override (spec_config) of a credential, else the provider's own."""
        value = self.repo_config(spec).get(name)
        return str(value) if value else str(getattr(self, name))

    def auth_headers(self, spec: str) -> tuple[dict[str, str], tuple[str, str] | None]:
        token = self._setting(spec, "access_token")
        if token:
            return {"Authorization": f"Bearer {token}"}, None
        if self.client_id and self.client_secret:
            return {}, (self.client_id, self.client_secret)
        return {}, None

    def build_env(self, ref: ResolvedRef) -> dict[str, str]:
        return git_credential_env(ref.repo_url, self._setting(ref.spec, "git_credentials"))

    def secret_values(self) -> list[str]:
        values = [self.access_token, self.client_secret]
        if self.git_credentials:
            values.append(password_of(self.git_credentials))
        for entry in self.spec_config:
            config = entry.get("config", {})
            values += [str(config[k]) for k in ("access_token", "client_secret") if config.get(k)]
            if config.get("git_credentials"):
                values.append(password_of(str(config["git_credentials"])))
        return [v for v in values if v]

    # --- API -----------------------------------------------------------------------

    async def github_request(self, url: str, spec: str, accept: str) -> HttpResponse:
        """GET with ETag revalidation: a 304 is turned into the stored 200 answer."""
        headers, auth = self.auth_headers(spec)
        headers["Accept"] = accept
        headers["X-GitHub-Api-Version"] = "2022-11-28"
        # Answers may differ per credential (private repositories), so the
        # credential is part of the key; hashed, never stored in clear.
        who = hashlib.sha256(repr((headers.get("Authorization"), auth)).encode()).hexdigest()[:16]
        key = f"{who} {accept} {url}"
        stored = self.etags.get(key)
        if stored is not None:
            headers["If-None-Match"] = stored[0]
        resp = await self.api_request(url, headers=headers, auth=auth)
        if resp.status == 304 and stored is not None:
            self.log.debug("%s: not modified (ETag %s)", url, stored[0])
            return HttpResponse(status=200, headers=resp.headers, body=stored[1], url=resp.url)
        etag = resp.header("etag")
        if resp.status == 200 and etag:
            self.etags.set(key, etag, resp.body)
        elif resp.status != 200:
            self.etags.discard(key)
        return resp

    def translate_error(self, resp: HttpResponse, what: str) -> Exception:
        """Error for a non-200 answer from the API about ``what``."""
        message = ""
        try:
            data = resp.json()
            if isinstance(data, dict):
                message = str(data.get("message", ""))[:200]
        except ValueError:
            pass
        if resp.status in (404, 422):
            return RefNotFound(f"Could not find {what} on {self.display_name}.")
        if resp.status == 401:
            return ProviderError(
                f"{self.display_name} rejected binderbuild's API credentials (HTTP 401); "
                f"the operator should check {type(self).__name__}.access_token."
            )
        if resp.status in (403, 451):
            reason = f": {message}" if message else ""
            return Forbidden(f"{self.display_name} refused access to {what}{reason}.")
        return ProviderError(
            f"Unexpected answer from {self.display_name} about {what} (HTTP {resp.status})."
        )

    async def resolve(self, spec: str) -> ResolvedRef:
        parsed = self.parse(spec)
        owner_repo, ref = parsed.repo, parsed.ref
        url = f"{self.api_base}/repos/{owner_repo}/commits/{quote(ref, safe='')}"
        resp = await self.github_request(url, spec, SHA_MEDIA_TYPE)
        what = f"ref {ref!r} in {owner_repo}"
        if resp.status != 200:
            raise self.translate_error(resp, what)
        sha = resp.body.decode(errors="replace").strip()
        if not SHA1_OR_SHA256.match(sha):
            raise ProviderError(f"{self.display_name} sent an unexpected answer for {what}.")
        repo_url = f"https://{self.hostname}/{owner_repo}"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=ref,
            resolved_ref=sha,
            resolved_spec=f"{owner_repo}/{sha}",
            repo_url=repo_url,
            ref_url=f"{repo_url}/tree/{sha}",
            # GitHub names are case-insensitive: one image per repository.
            slug_source=f"{self.hostname}/{owner_repo}".lower(),
            content_provider=self.content_provider,
            # Only a full SHA names the same commit forever; a short one may
            # become ambiguous, a branch or tag can move.
            immutable_ref=bool(SHA1_OR_SHA256.match(ref.lower())) and ref.lower() == sha,
        )
