"""HydroShare: ``hydroshare/{DOI | resource URL | resource id}`` resolved to ``{id}.v{modified}``.

Resources are named by a 32-hex id; their DOIs are ``10.4211/hs.{id}``.
HydroShare keeps no history, so the "version" is the resource's last
modification time (``GET https://www.hydroshare.org/hsapi/resource/{id}/scimeta/elements``,
the ``modified`` entry of ``dates``) as a Unix timestamp, like BinderHub and
repo2docker. The ref is mutable: re-resolved after the pipeline's TTL.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from traitlets import Unicode

from binderbuild.errors import ProviderError, RefNotFound
from binderbuild.models import ResolvedRef
from binderbuild.providers.doi import RecordProvider
from binderbuild.providers.httpapi import json_object

_RESOURCE_ID = re.compile(r"^[0-9a-f]{32}$")
_HS_DOI = re.compile(r"^10\.4211/hs\.([0-9a-f]{32})$", re.IGNORECASE)
_RESOURCE_PATH = re.compile(r"^/resource/([0-9a-f]{32})/?$")
_HOSTS = frozenset({"www.hydroshare.org", "hydroshare.org"})


def modified_epoch(dates: object) -> int | None:
    """Unix time of the ``modified`` entry of HydroShare's ``dates`` list."""
    if not isinstance(dates, list):
        return None
    for item in dates:
        if isinstance(item, dict) and item.get("type") == "modified":
            raw = str(item.get("start_date") or "")
            try:
                when = datetime.fromisoformat(raw)
            except ValueError:
                return None
            # HydroShare writes UTC, with or without an offset.
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return int(when.timestamp())
    return None


class HydroshareProvider(RecordProvider):
    provider_id = "hydroshare"
    display_name = "HydroShare"
    content_provider = "hydroshare"
    repo_label = "HydroShare resource id, URL or DOI"
    repo_placeholder = "https://www.hydroshare.org/resource/b8f6eae9d89241cf8b5904033460af61"
    repo_regex = r"^\S*[0-9a-f]{32}\S*$"

    site_url = Unicode(
        "https://www.hydroshare.org", config=True, help="HydroShare site that serves resources."
    )

    def record_url_for_doi(self, doi: str) -> str | None:
        match = _HS_DOI.match(doi)
        return f"{self.site_url}/resource/{match.group(1).lower()}" if match else None

    def claims_url(self, url: str) -> bool:
        parts = urlsplit(url)
        hosts = _HOSTS | {(urlsplit(self.site_url).hostname or "").lower()}
        return (
            parts.scheme in ("http", "https")
            and (parts.hostname or "").lower() in hosts
            and bool(_RESOURCE_PATH.match(parts.path))
        )

    def url_for_spec(self, spec: str) -> str | None:
        if _RESOURCE_ID.match(spec):
            return f"{self.site_url}/resource/{spec}"
        return super().url_for_spec(spec)

    async def resolve_url(self, spec: str, url: str) -> ResolvedRef:
        match = _RESOURCE_PATH.match(urlsplit(url).path)
        assert match is not None  # claims_url() checked it
        resource = match.group(1)
        resp = await self.api_request(
            f"{self.site_url}/hsapi/resource/{resource}/scimeta/elements",
            headers={"Accept": "application/json"},
        )
        if resp.status == 404:
            raise RefNotFound(f"HydroShare resource {resource} does not exist.")
        if resp.status in (401, 403):
            raise RefNotFound(f"HydroShare resource {resource} is not public.")
        if resp.status != 200:
            raise ProviderError(
                f"Unexpected answer from HydroShare about resource {resource} (HTTP {resp.status})."
            )
        epoch = modified_epoch(json_object(resp, "HydroShare").get("dates"))
        if epoch is None:
            raise ProviderError(f"HydroShare did not say when resource {resource} was modified.")
        resource_url = f"{self.site_url}/resource/{resource}"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref="latest",
            resolved_ref=f"{resource}.v{epoch}",
            # No history to point at: the resource itself, as on BinderHub.
            resolved_spec=resource_url,
            repo_url=resource_url,
            ref_url=resource_url,
            slug_source=f"hydroshare/{resource}",
            content_provider=self.content_provider,
            immutable_ref=False,
        )
