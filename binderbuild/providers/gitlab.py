"""GitLab: ``gl/{url-encoded namespace/project}/{ref}`` resolved to a commit SHA.

Projects may sit in nested groups, so the project path is url-encoded into
one segment (``group%2Fsubgroup%2Fproject/main``), as on BinderHub. The
configured ``hostname`` (gitlab.com by default) is used unless the encoded
part is a full project URL (``https%3A%2F%2Fgitlab.example.org%2Fgroup%2Fproject``)
on a host listed in ``allowed_hosts``; such user-named hosts pass the
network-safety check and never receive the configured token.

``GET https://{host}/api/v4/projects/{id}/repository/commits/{ref}`` answers
with the commit, whose ``id`` is the full SHA. 404 means no such project or
ref (GitLab hides private projects behind 404 too). Rate limits come as 429
with ``RateLimit-*``/``Retry-After`` headers.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from traitlets import List, Unicode, default

from binderbuild.errors import ProviderError, RefNotFound, SpecError, UnsafeURL
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import (
    ParsedSpec,
    host_detect_regex,
    reject_control_chars,
    split_encoded_spec,
)
from binderbuild.providers.credentials import git_credential_env, password_of
from binderbuild.providers.git import SHA1_OR_SHA256, validate_ref
from binderbuild.providers.httpapi import HttpRepoProvider, json_object

# A path segment of a GitLab group or project: what GitLab's own path rules allow.
_SEGMENT = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.+-]*$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$")


class GitLabRepoProvider(HttpRepoProvider):
    provider_id = "gl"
    display_name = "GitLab.com"
    content_provider = "git"
    repo_label = "GitLab.com repository or URL"
    repo_placeholder = "group/subgroup/project"
    repo_regex = r"^[^\s/]+(/[^\s/]+)+$"
    spec_regex = r"[^/]+/.+"
    url_encoded = True

    hostname = Unicode("gitlab.com", config=True, help="Host of the GitLab instance.")
    allowed_hosts = List(
        Unicode(),
        config=True,
        help="""Other GitLab hosts a spec may name with a full, url-encoded project URL
        (https%3A%2F%2Fhost%2Fgroup%2Fproject/ref). '*' allows any host. Such hosts pass
        the network-safety check and never get access_token/private_token.""",
    )
    access_token = Unicode(
        config=True,
        help="OAuth2 access token for the GitLab API. Default: $GITLAB_ACCESS_TOKEN.",
    )
    private_token = Unicode(
        config=True,
        help="Personal/project access token for the GitLab API. Default: $GITLAB_PRIVATE_TOKEN.",
    )
    git_credentials = Unicode(
        config=True,
        help="""Credentials git uses to clone private projects during the build,
        'username=...\\npassword=...'. Default: derived from private_token or access_token.
        Scoped to https://{hostname}; they reach only the repo2docker process.""",
    )

    @default("access_token")
    def _access_token_default(self) -> str:
        return os.environ.get("GITLAB_ACCESS_TOKEN", "")

    @default("private_token")
    def _private_token_default(self) -> str:
        return os.environ.get("GITLAB_PRIVATE_TOKEN", "")

    @default("git_credentials")
    def _git_credentials_default(self) -> str:
        if self.private_token:
            return f"username=binderbuild\npassword={self.private_token}"
        if self.access_token:
            # GitLab's documented user name for OAuth tokens over HTTPS.
            return f"username=oauth2\npassword={self.access_token}"
        return ""

    # --- spec -----------------------------------------------------------------

    def _split_project(self, project: str) -> tuple[str, str]:
        """``(host, namespace/project)`` of the decoded first spec segment."""
        if "://" in project:
            parts = urlsplit(project)
            if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
                raise UnsafeURL(
                    "A GitLab project URL must be https://host/group/project without query."
                )
            if parts.username or parts.password:
                raise UnsafeURL("A GitLab project URL must not carry credentials.")
            host = parts.netloc.lower()
            path = parts.path.strip("/").removesuffix(".git")
            if not _HOST.match(host):
                raise SpecError(f"Invalid GitLab host {host!r}.")
            if host != self.hostname.lower() and not (
                "*" in self.allowed_hosts or host in {h.lower() for h in self.allowed_hosts}
            ):
                raise SpecError(
                    f"GitLab host {host} is not served here (allowed: "
                    f"{', '.join([self.hostname, *self.allowed_hosts])})."
                )
            return host, path
        return self.hostname.lower(), project.strip("/").removesuffix(".git")

    def detect_regex(self) -> str | None:
        return host_detect_regex(self.hostname)

    def parse(self, spec: str) -> ParsedSpec:
        project, ref = split_encoded_spec(
            spec,
            'A GitLab spec is "{url-encoded group/project}/{ref}", e.g. '
            '"gitlab-org%2Fgitlab-foss/HEAD".',
        )
        ref = ref or self.default_ref
        reject_control_chars(project, "project")
        host, path = self._split_project(project)
        segments = path.split("/")
        if len(segments) < 2:
            raise SpecError(
                f"{path!r} is not a GitLab project path: url-encode the whole "
                f"group/project part, e.g. {quote('group/project', safe='')}/{ref}."
            )
        if any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
            raise SpecError(f"{path!r} is not a valid GitLab project path.")
        validate_ref(ref)
        return ParsedSpec(repo=f"{host}/{path}", ref=ref)

    # --- credentials -------------------------------------------------------------

    def _setting(self, spec: str, name: str) -> str:
        value = self.repo_config(spec).get(name)
        return str(value) if value else str(getattr(self, name))

    def _is_home(self, host: str) -> bool:
        return host == self.hostname.lower()

    def auth_headers(self, spec: str, host: str) -> dict[str, str]:
        if not self._is_home(host):
            # A per-spec token may still be configured for a foreign host.
            token = self.repo_config(spec).get("private_token")
            return {"PRIVATE-TOKEN": str(token)} if token else {}
        if private := self._setting(spec, "private_token"):
            return {"PRIVATE-TOKEN": private}
        if access := self._setting(spec, "access_token"):
            return {"Authorization": f"Bearer {access}"}
        return {}

    def build_env(self, ref: ResolvedRef) -> dict[str, str]:
        host = urlsplit(ref.repo_url).netloc.lower()
        config = self.repo_config(ref.spec)
        if config.get("git_credentials"):
            return git_credential_env(ref.repo_url, str(config["git_credentials"]))
        if not self._is_home(host):
            return {}
        return git_credential_env(ref.repo_url, self.git_credentials)

    def secret_values(self) -> list[str]:
        values = [self.access_token, self.private_token]
        if self.git_credentials:
            values.append(password_of(self.git_credentials))
        for entry in self.spec_config:
            config = entry.get("config", {})
            values += [str(config[k]) for k in ("access_token", "private_token") if config.get(k)]
            if config.get("git_credentials"):
                values.append(password_of(str(config["git_credentials"])))
        return [v for v in values if v]

    # --- resolve -------------------------------------------------------------------

    async def resolve(self, spec: str) -> ResolvedRef:
        parsed = self.parse(spec)
        host, path = parsed.repo.split("/", 1)
        ref = parsed.ref
        api = (
            f"https://{host}/api/v4/projects/{quote(path, safe='')}"
            f"/repository/commits/{quote(ref, safe='')}"
        )
        resp = await self.api_request(
            api,
            service=f"GitLab ({host})",
            headers={"Accept": "application/json", **self.auth_headers(spec, host)},
            check_network=not self._is_home(host),
        )
        what = f"ref {ref!r} in {host}/{path}"
        if resp.status == 404:
            raise RefNotFound(f"Could not find {what} (no such project or ref, or it is private).")
        if resp.status == 401:
            raise ProviderError(
                f"GitLab ({host}) rejected binderbuild's API credentials (HTTP 401); the "
                "operator should check GitLabRepoProvider.access_token/private_token."
            )
        if resp.status == 403:
            raise RefNotFound(f"Could not find {what}: access is denied.")
        if resp.status == 400:
            raise RefNotFound(f"Could not find {what}: GitLab says the ref is invalid.")
        if resp.status != 200:
            raise ProviderError(f"Unexpected answer from GitLab about {what} (HTTP {resp.status}).")
        data = json_object(resp, f"GitLab ({host})")
        sha = str(data.get("id", ""))
        if not SHA1_OR_SHA256.match(sha):
            raise ProviderError(f"GitLab sent an unexpected answer for {what}.")
        quoted_project = spec.split("/", 1)[0]
        project_url = f"https://{host}/{path}"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=ref,
            resolved_ref=sha,
            resolved_spec=f"{quote(unquote(quoted_project), safe='')}/{sha}",
            repo_url=f"{project_url}.git",
            ref_url=f"{project_url}/-/tree/{sha}",
            slug_source=f"{host}/{path}".lower(),
            content_provider=self.content_provider,
            immutable_ref=ref.lower() == sha,
        )

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.hostname != "gitlab.com":
            info["displayName"] = f"GitLab ({self.hostname})"
        return info
