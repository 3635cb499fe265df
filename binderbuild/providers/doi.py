"""DOIs: the shared resolver, the base of record providers, and the ``doi`` prefix.

A DOI is turned into its landing-page URL with the doi.org *handle API*
(``GET https://doi.org/api/handles/{doi}?type=URL`` -> JSON ``values`` with a
``URL`` entry) rather than by following doi.org's redirects: one request,
no hop to a stranger's host, and the answer says plainly whether the DOI
exists (HTTP 404, ``responseCode`` 100) or not.

``RecordProvider`` is the base of Zenodo, Figshare, Dataverse and
Hydroshare: each accepts a DOI, a record URL or a bare record id and claims
the landing URLs it knows. ``DoiProvider`` (``doi/{doi}``) follows any DOI to
whichever of them claims its URL, so a DOI link works without knowing where
the record lives.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from traitlets import List, Unicode

from binderbuild.errors import ProviderError, RefNotFound, SpecError
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import ParsedSpec, reject_control_chars
from binderbuild.providers.httpapi import HttpRepoProvider, json_object

# doi:10.x/y, https://doi.org/10.x/y, http://dx.doi.org/10.x/y or 10.x/y
DOI_RE = re.compile(r"^(?:doi:|https?://(?:dx\.)?doi\.org/)?(10\.\d{4,9}/\S+)$", re.IGNORECASE)


def normalize_doi(value: str) -> str | None:
    """The bare DOI (``10.5281/zenodo.123``) in ``value``, or None if it is no DOI."""
    match = DOI_RE.match(value.strip())
    return match.group(1) if match else None


class RecordProvider(HttpRepoProvider):
    """Base of providers whose specs are DOIs, record URLs or record ids.

    Subclasses implement ``claims_url``, ``resolve_url`` and, when a DOI can
    be mapped to a record without asking doi.org, ``record_url_for_doi``.
    """

    content_provider = ""
    uses_ref = False
    ref_label = ""

    doi_resolver_url = Unicode(
        "https://doi.org/api/handles/",
        config=True,
        help="doi.org handle API used to find where a DOI points.",
    )

    def parse(self, spec: str) -> ParsedSpec:
        reject_control_chars(spec, "spec")
        value = spec.strip()
        if not value:
            raise SpecError(f"The {self.display_name} spec is empty.")
        if any(c.isspace() for c in value):
            raise SpecError(f"A {self.display_name} spec cannot contain spaces.")
        self.check_spec(value)
        return ParsedSpec(repo=value, ref="")

    def check_spec(self, value: str) -> None:
        """Raise SpecError when ``value`` can never name a record here (no I/O).

        Done before the event stream starts, so a bad link gets a plain 400.
        """
        if normalize_doi(value) is None and self.url_for_spec(value) is None:
            raise SpecError(f"{value!r} is not a DOI or URL of a {self.display_name} record.")

    def record_url_for_doi(self, doi: str) -> str | None:
        """A record URL for DOIs whose form names the record (no doi.org request)."""
        return None

    def claims_url(self, url: str) -> bool:
        """Whether ``url`` is a record landing page this provider resolves."""
        raise NotImplementedError

    async def resolve_url(self, spec: str, url: str) -> ResolvedRef:
        """Resolve a record given by its landing URL (or normalized id URL)."""
        raise NotImplementedError

    def url_for_spec(self, spec: str) -> str | None:
        """A record URL for a spec that is not a DOI (URL or bare id), or None."""
        return spec if self.claims_url(spec) else None

    async def doi_to_url(self, doi: str) -> str:
        url = f"{self.doi_resolver_url}{quote(doi, safe='/')}?type=URL"
        resp = await self.api_request(
            url, service="doi.org", headers={"Accept": "application/json"}
        )
        if resp.status == 404:
            raise RefNotFound(f"DOI {doi} does not exist.")
        if resp.status != 200:
            raise ProviderError(f"doi.org could not resolve {doi} (HTTP {resp.status}).")
        data = json_object(resp, "doi.org")
        for value in data.get("values") or []:
            if isinstance(value, dict) and value.get("type") == "URL":
                target = (value.get("data") or {}).get("value")
                if isinstance(target, str) and target.startswith(("http://", "https://")):
                    return target
        raise RefNotFound(f"DOI {doi} does not point to a web page.")

    async def locate(self, spec: str) -> str:
        """The record URL a spec names: from the DOI's form, doi.org, or the spec itself."""
        doi = normalize_doi(spec)
        if doi is not None:
            direct = self.record_url_for_doi(doi)
            url = direct if direct is not None else await self.doi_to_url(doi)
            if not self.claims_url(url):
                raise SpecError(
                    f"DOI {doi} points to {url}, which is not a {self.display_name} record."
                )
            return url
        found = self.url_for_spec(spec)
        if found is None:
            raise SpecError(f"{spec!r} is not a DOI or URL of a {self.display_name} record.")
        return found

    async def resolve(self, spec: str) -> ResolvedRef:
        self.parse(spec)
        return await self.resolve_url(spec, await self.locate(spec.strip()))

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["ref"] = {"enabled": False, "label": "", "default": ""}
        return info


class DoiProvider(RecordProvider):
    """``doi/{doi}``: follow a DOI to the record provider that knows its landing page.

    The resolved ref keeps the id of the provider that resolved it (e.g.
    ``zenodo``), so the persistent launch link names that provider.
    """

    provider_id = "doi"
    display_name = "DOI"
    repo_label = "DOI of a Zenodo, Figshare, Dataverse or Hydroshare record"
    repo_placeholder = "10.5281/zenodo.3242074"
    repo_regex = r"^(doi:|https?://(dx\.)?doi\.org/)?10\.\d{4,9}/\S+$"

    record_providers = List(
        Unicode(),
        default_value=[
            "binderbuild.providers.zenodo.ZenodoProvider",
            "binderbuild.providers.figshare.FigshareProvider",
            "binderbuild.providers.dataverse.DataverseProvider",
            "binderbuild.providers.hydroshare.HydroshareProvider",
        ],
        config=True,
        help="Record providers (import strings) a DOI may lead to, asked in this order.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from traitlets.utils.importstring import import_item

        # Built once, with the same parent, so each reads its own config
        # (ZenodoProvider.hosts, DataverseProvider.hosts, ...).
        self.delegates: list[RecordProvider] = [
            import_item(name)(
                parent=self.parent,
                http=self.http,
                allowed_internal_networks=self.allowed_internal_networks,
                resolver=self.resolver,
                log=self.log,
            )
            for name in self.record_providers
        ]

    def check_spec(self, value: str) -> None:
        if normalize_doi(value) is None:
            raise SpecError(f"{value!r} is not a DOI (expected e.g. 10.5281/zenodo.3242074).")

    def claims_url(self, url: str) -> bool:
        return any(p.claims_url(url) for p in self.delegates)

    async def resolve(self, spec: str) -> ResolvedRef:
        self.parse(spec)
        doi = normalize_doi(spec)
        assert doi is not None  # parse() checked it
        url: str | None = None
        for provider in self.delegates:
            url = provider.record_url_for_doi(doi)
            if url is not None:
                return await provider.resolve_url(spec, url)
        url = await self.doi_to_url(doi)
        for provider in self.delegates:
            if provider.claims_url(url):
                return await provider.resolve_url(spec, url)
        names = ", ".join(p.display_name for p in self.delegates)
        raise SpecError(f"DOI {doi} points to {url}, which is not a record on {names}.")

    def secret_values(self) -> list[str]:
        return [v for p in self.delegates for v in p.secret_values()]
