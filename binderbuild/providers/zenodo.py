"""Zenodo: ``zenodo/{DOI | record URL | record id}`` resolved to a record id.

Every published version of a Zenodo upload is its own record with its own
DOI (``10.5281/zenodo.{record id}``); the *concept* DOI/id stands for all
versions and leads to the latest one. So the record id is read from the
DOI's form (no doi.org request needed), and the record is looked up with
``GET https://zenodo.org/api/records/{id}``: a concept id is redirected to (or
answered with) the latest version, whose ``id`` becomes the resolved ref. A
version's record never changes (immutable, cached forever); a concept id is
re-resolved after the pipeline's TTL. Deleted records answer 410.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from traitlets import Dict, List, Unicode

from binderbuild.errors import Forbidden, ProviderError, RefNotFound
from binderbuild.models import ResolvedRef
from binderbuild.providers.doi import RecordProvider, normalize_doi
from binderbuild.providers.httpapi import json_object

_RECORD_PATH = re.compile(r"^/records?/(\d+)/?$")
_ZENODO_DOI = re.compile(r"^(10\.\d+)/zenodo\.(\d+)$", re.IGNORECASE)


class ZenodoProvider(RecordProvider):
    provider_id = "zenodo"
    display_name = "Zenodo"
    content_provider = "zenodo"
    repo_label = "Zenodo DOI, record URL or record id"
    repo_placeholder = "10.5281/zenodo.3242074"
    repo_regex = (
        r"^((doi:|https?://(dx\.)?doi\.org/)?10\.\d+/zenodo\.\d+|https://\S+/records?/\d+/?|\d+)$"
    )

    hosts = List(
        Unicode(),
        default_value=["zenodo.org", "sandbox.zenodo.org"],
        config=True,
        help="Zenodo (InvenioRDM) hosts whose records are served. The first one is used for bare record ids.",
    )
    doi_prefixes = Dict(
        value_trait=Unicode(),
        default_value={"10.5281": "zenodo.org", "10.5072": "sandbox.zenodo.org"},
        config=True,
        help="DOI prefix -> host, for DOIs of the form {prefix}/zenodo.{record id}.",
    )

    def record_url_for_doi(self, doi: str) -> str | None:
        match = _ZENODO_DOI.match(doi)
        if match and match.group(1) in self.doi_prefixes:
            return f"https://{self.doi_prefixes[match.group(1)]}/records/{match.group(2)}"
        return None

    def claims_url(self, url: str) -> bool:
        parts = urlsplit(url)
        return (
            parts.scheme in ("http", "https")
            and (parts.hostname or "").lower() in {h.lower() for h in self.hosts}
            and bool(_RECORD_PATH.match(parts.path))
        )

    def url_for_spec(self, spec: str) -> str | None:
        if spec.isdigit() and self.hosts:
            return f"https://{self.hosts[0]}/records/{spec}"
        return super().url_for_spec(spec)

    async def resolve_url(self, spec: str, url: str) -> ResolvedRef:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        match = _RECORD_PATH.match(parts.path)
        assert match is not None  # claims_url() checked it
        requested = match.group(1)
        resp = await self.api_request(
            f"https://{host}/api/records/{requested}",
            headers={"Accept": "application/json"},
        )
        if resp.status == 404:
            raise RefNotFound(f"Zenodo record {requested} does not exist.")
        if resp.status == 410:
            raise RefNotFound(f"Zenodo record {requested} has been deleted.")
        if resp.status in (401, 403):
            raise RefNotFound(f"Zenodo record {requested} is not public.")
        if resp.status != 200:
            raise ProviderError(
                f"Unexpected answer from Zenodo about record {requested} (HTTP {resp.status})."
            )
        data = json_object(resp, "Zenodo")
        record_id = str(data.get("id", ""))
        if not record_id.isdigit():
            raise ProviderError(f"Zenodo sent an unexpected answer for record {requested}.")
        metadata = data.get("metadata") or {}
        access = metadata.get("access_right", "open")
        if access not in ("open", None):
            raise Forbidden(
                f"The files of Zenodo record {record_id} are {access}; only open records can be launched."
            )
        concept = str(data.get("conceptrecid") or "")
        doi = normalize_doi(str(data.get("doi") or ""))
        links = data.get("links") or {}
        record_url = f"https://{host}/records/{record_id}"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=requested,
            resolved_ref=record_id,
            resolved_spec=doi or record_url,
            # repo2docker's Zenodo content provider knows https://{host}/record/{id}.
            repo_url=f"https://{host}/record/{record_id}",
            ref_url=str(links.get("html") or record_url),
            # All versions of one upload share an image repository; tags differ.
            slug_source=f"{host}/zenodo/{concept or record_id}",
            content_provider=self.content_provider,
            # A version's record id names fixed files; a concept id moves.
            immutable_ref=record_id == requested and requested != concept,
        )
