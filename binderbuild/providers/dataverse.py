"""Dataverse: ``dataverse/{DOI | dataset or file URL}`` resolved to ``{dataset id}.v{major}.{minor}``.

A DOI is followed through doi.org to a landing page on a Dataverse
installation; only installations listed in ``hosts`` are served ('*' allows
any, which is why every request passes the network-safety check). Landing
pages understood, as in repo2docker: ``/dataset.xhtml?persistentId=``,
``/citation?persistentId=`` (dataset *or* file id), ``/file.xhtml?persistentId=``
and ``/api/access/datafile/{id}``. Files lead to their dataset.

``GET {site}/api/datasets/:persistentId?persistentId={pid}`` gives the
dataset's ``latestVersion`` number. Builds always fetch the latest published
version, so the ref is mutable and re-resolved after the pipeline's TTL;
deaccessioned and unpublished datasets are "not found".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from traitlets import List, Unicode

from binderbuild.errors import ProviderError, RefNotFound, SpecError
from binderbuild.models import ResolvedRef
from binderbuild.providers.doi import RecordProvider, normalize_doi
from binderbuild.providers.httpapi import json_object

# A few well-known installations; operators list theirs (or '*').
DEFAULT_HOSTS = [
    "dataverse.harvard.edu",
    "demo.dataverse.org",
    "dataverse.nl",
    "dataverse.no",
    "borealisdata.ca",
    "data.qdr.syr.edu",
    "darus.uni-stuttgart.de",
    "edmond.mpg.de",
    "entrepot.recherche.data.gouv.fr",
    "heidata.uni-heidelberg.de",
]

_LANDING_PATHS = ("/dataset.xhtml", "/citation", "/file.xhtml")
_DATAFILE_PREFIX = "/api/access/datafile/"


class DataverseProvider(RecordProvider):
    provider_id = "dataverse"
    display_name = "Dataverse"
    content_provider = "dataverse"
    repo_label = "Dataverse DOI or dataset URL"
    repo_placeholder = "10.7910/DVN/TJCLKP"
    repo_regex = r"^((doi:|https?://(dx\.)?doi\.org/)?10\.\d+/\S+|https?://\S+)$"

    hosts = List(
        Unicode(),
        default_value=DEFAULT_HOSTS,
        config=True,
        help="""Host names of the Dataverse installations served. '*' allows any host
        (every request is still checked against internal networks).""",
    )

    def _host_allowed(self, host: str) -> bool:
        return "*" in self.hosts or host in {h.lower() for h in self.hosts}

    def claims_url(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not self._host_allowed(
            (parts.hostname or "").lower()
        ):
            return False
        if parts.path in _LANDING_PATHS:
            return bool(parse_qs(parts.query).get("persistentId"))
        return (
            parts.path.startswith(_DATAFILE_PREFIX)
            and parts.path[len(_DATAFILE_PREFIX) :].isdigit()
        )

    def check_spec(self, value: str) -> None:
        if normalize_doi(value) is None and "://" in value and not self.claims_url(value):
            parts = urlsplit(value)
            if not self._host_allowed((parts.hostname or "").lower()):
                raise SpecError(f"{parts.hostname} is not a Dataverse installation served here.")
            raise SpecError(
                "A Dataverse URL must be a dataset.xhtml, citation or file.xhtml page with "
                "?persistentId=, or /api/access/datafile/{id}."
            )
        super().check_spec(value)

    async def _get(self, url: str) -> tuple[int, dict[str, Any]]:
        resp = await self.api_request(
            url, headers={"Accept": "application/json"}, check_network=True
        )
        if resp.status == 404:
            return 404, {}
        if resp.status in (401, 403):
            # Dataverse answers drafts and restricted datasets this way.
            return 404, {}
        if resp.status != 200:
            raise ProviderError(f"Unexpected answer from Dataverse (HTTP {resp.status}).")
        data = json_object(resp, "Dataverse")
        if data.get("status") != "OK" or not isinstance(data.get("data"), dict):
            raise ProviderError(
                f"Dataverse reported an error: {str(data.get('message', ''))[:200]}"
            )
        return 200, data["data"]

    async def _dataset_pid_of_file(self, base: str, file_id: str) -> str:
        if file_id.isdigit():
            url = f"{base}/api/files/{file_id}?returnDatasetVersion=true"
        else:
            url = f"{base}/api/files/:persistentId?persistentId={quote(file_id, safe=':/')}&returnDatasetVersion=true"
        status, data = await self._get(url)
        pid = (
            (data.get("datasetVersion") or {}).get("datasetPersistentId") if status == 200 else None
        )
        if not pid:
            raise RefNotFound(f"Dataverse file {file_id} was not found on {base}.")
        return str(pid)

    async def resolve_url(self, spec: str, url: str) -> ResolvedRef:
        parts = urlsplit(url)
        base = f"{parts.scheme}://{parts.netloc}"
        query = parse_qs(parts.query)
        ambiguous = False
        if parts.path.startswith(_DATAFILE_PREFIX):
            pid = await self._dataset_pid_of_file(base, parts.path[len(_DATAFILE_PREFIX) :])
        elif parts.path == "/file.xhtml":
            pid = await self._dataset_pid_of_file(base, query["persistentId"][0])
        else:
            pid = query["persistentId"][0]
            ambiguous = parts.path == "/citation"

        def dataset_url(p: str) -> str:
            return f"{base}/api/datasets/:persistentId?persistentId={quote(p, safe=':/')}"

        status, data = await self._get(dataset_url(pid))
        if status == 404 and ambiguous:
            # A citation page may name a file: find the dataset it belongs to.
            pid = await self._dataset_pid_of_file(base, pid)
            status, data = await self._get(dataset_url(pid))
        if status == 404:
            raise RefNotFound(
                f"Dataverse dataset {pid} was not found on {parts.hostname} (or is not public)."
            )
        latest = data.get("latestVersion") or {}
        state = latest.get("versionState")
        if state == "DEACCESSIONED":
            raise RefNotFound(f"Dataverse dataset {pid} has been deaccessioned.")
        major, minor = latest.get("versionNumber"), latest.get("versionMinorNumber")
        if state != "RELEASED" or major is None:
            raise RefNotFound(f"Dataverse dataset {pid} has no published version.")
        dataset_id = data.get("id")
        if not isinstance(dataset_id, int):
            raise ProviderError(f"Dataverse sent an unexpected answer for {pid}.")
        protocol, authority, identifier = (
            data.get(k) for k in ("protocol", "authority", "identifier")
        )
        canonical = (
            f"{protocol}:{authority}/{identifier}" if protocol and authority and identifier else pid
        )
        landing = f"{base}/dataset.xhtml?persistentId={quote(canonical, safe=':/')}"
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref="latest",
            resolved_ref=f"{dataset_id}.v{major}.{minor}",
            # A DOI resolves again through doi.org; other ids by landing page.
            resolved_spec=canonical if protocol == "doi" else landing,
            repo_url=landing,
            ref_url=str(data.get("persistentUrl") or landing),
            slug_source=f"{(parts.hostname or '').lower()}/{canonical}",
            content_provider=self.content_provider,
            immutable_ref=False,
        )
