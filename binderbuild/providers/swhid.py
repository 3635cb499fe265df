"""Software Heritage: ``swh/{SWHID}`` of a directory, revision or release.

A SWHID (``swh:1:dir:<40 hex>``, ``swh:1:rev:...``) is intrinsic: it *is* the
hash of the content, so it is immutable by construction. Resolution only
checks with the archive that the object exists
(``GET {api}/resolve/{swhid}/``, 404 when unknown) and, for a release
(``rel``), which revision it points to (``GET {api}/release/{hash}/``),
because repo2docker's Swhid content provider fetches directories and
revisions only. Qualifiers (``;origin=...``) are accepted and dropped.
"""

from __future__ import annotations

import os
import re

from traitlets import Unicode, default

from binderbuild.errors import ProviderError, RefNotFound, SpecError
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import ParsedSpec, reject_control_chars
from binderbuild.providers.httpapi import HttpRepoProvider, json_object

SWHID_RE = re.compile(r"^swh:1:(?P<type>[a-z]{3}):(?P<hash>[0-9a-f]{40})$")
_FETCHABLE = {"dir": "directory", "rev": "revision"}


class SwhidProvider(HttpRepoProvider):
    provider_id = "swh"
    display_name = "Software Heritage"
    content_provider = "swhid"
    repo_label = "Software Heritage identifier (SWHID) of a directory, revision or release"
    repo_placeholder = "swh:1:dir:2fbc0a6a7b7b6a7d1f6a4f1a2e0c1c7b6b8d9e0f"
    repo_regex = r"^swh:1:(dir|rev|rel):[0-9a-f]{40}(;.*)?$"
    uses_ref = False
    ref_label = ""

    api_url = Unicode(
        "https://archive.softwareheritage.org/api/1",
        config=True,
        help="Base URL of the Software Heritage archive API.",
    )
    auth_token = Unicode(
        config=True,
        help="Bearer token for the Software Heritage API (higher rate limits). Default: $SWH_AUTH_TOKEN.",
    )

    @default("auth_token")
    def _auth_token_default(self) -> str:
        return os.environ.get("SWH_AUTH_TOKEN", "")

    def parse(self, spec: str) -> ParsedSpec:
        reject_control_chars(spec, "spec")
        core = spec.strip().split(";", 1)[0].lower()
        match = SWHID_RE.match(core)
        if not match:
            raise SpecError(
                f"{spec!r} is not a SWHID; expected e.g. swh:1:dir:<40 hexadecimal digits>."
            )
        if match.group("type") not in ("dir", "rev", "rel"):
            raise SpecError(
                "Only SWHIDs of directories (dir), revisions (rev) and releases (rel) can be launched."
            )
        return ParsedSpec(repo=core, ref=match.group("hash"))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.auth_token:
            headers["Authorization"] = f"Bearer {self.auth_token}"
        return headers

    async def _get(self, path: str, what: str) -> dict[str, object]:
        resp = await self.api_request(f"{self.api_url}/{path}", headers=self._headers())
        if resp.status == 404:
            raise RefNotFound(f"{what} is not in the Software Heritage archive.")
        if resp.status == 400:
            raise SpecError(f"Software Heritage does not accept {what}.")
        if resp.status != 200:
            raise ProviderError(
                f"Unexpected answer from Software Heritage about {what} (HTTP {resp.status})."
            )
        return json_object(resp, "Software Heritage")

    async def resolve(self, spec: str) -> ResolvedRef:
        swhid = self.parse(spec).repo
        kind, digest = swhid.split(":")[2], swhid.split(":")[3]
        if kind == "rel":
            release = await self._get(f"release/{digest}/", swhid)
            if release.get("target_type") != "revision" or not isinstance(
                release.get("target"), str
            ):
                raise SpecError(
                    f"Release {swhid} does not point to a revision; it cannot be launched."
                )
            swhid, kind, digest = f"swh:1:rev:{release['target']}", "rev", str(release["target"])
        info = await self._get(f"resolve/{swhid}/", swhid)
        if info.get("object_type") != _FETCHABLE[kind]:
            raise ProviderError(
                f"Software Heritage described {swhid} as {info.get('object_type')!r}."
            )
        browse = str(info.get("browse_url") or f"https://archive.softwareheritage.org/{swhid}")
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=self.parse(spec).repo,
            resolved_ref=digest,
            resolved_spec=swhid,
            repo_url=swhid,
            ref_url=browse,
            slug_source=swhid,
            content_provider=self.content_provider,
            immutable_ref=True,
        )

    def secret_values(self) -> list[str]:
        return [self.auth_token] if self.auth_token else []
