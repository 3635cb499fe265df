"""Figshare: ``figshare/{DOI | article URL | article id[.vN]}`` resolved to ``{id}.v{version}``.

Figshare DOIs name the article and optionally a version:
``10.6084/m9.figshare.9782777`` (latest) or ``...9782777.v2``. Other DOIs
(institutional portals) are followed through doi.org to a figshare.com article
URL. The version comes from ``GET https://api.figshare.com/v2/articles/{id}``
(latest) or is checked with ``.../articles/{id}/versions/{n}``. A given version
is immutable; "latest" is re-resolved after the pipeline's TTL (BinderHub
took version 1 when none was given; the latest is what a reader expects).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from traitlets import Unicode

from binderbuild.errors import Forbidden, ProviderError, RefNotFound
from binderbuild.models import ResolvedRef
from binderbuild.providers.doi import RecordProvider
from binderbuild.providers.httpapi import json_object

_FIGSHARE_DOI = re.compile(r"^10\.6084/m9\.figshare\.(\d+)(?:\.v(\d+))?$", re.IGNORECASE)
_BARE_ID = re.compile(r"^(\d+)(?:\.v(\d+))?$")


class FigshareProvider(RecordProvider):
    provider_id = "figshare"
    display_name = "Figshare"
    content_provider = "figshare"
    repo_label = "Figshare DOI, article URL or id"
    repo_placeholder = "10.6084/m9.figshare.9782777.v1"
    repo_regex = r"^((doi:|https?://(dx\.)?doi\.org/)?10\.\d+/\S+|https://\S*figshare\.com/articles/\S+|\d+(\.v\d+)?)$"

    api_url = Unicode(
        "https://api.figshare.com/v2", config=True, help="Base URL of the Figshare API."
    )

    def record_url_for_doi(self, doi: str) -> str | None:
        match = _FIGSHARE_DOI.match(doi)
        if not match:
            return None
        article, version = match.groups()
        return _article_url(article, version)

    def claims_url(self, url: str) -> bool:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return (
            parts.scheme in ("http", "https")
            and (host == "figshare.com" or host.endswith(".figshare.com"))
            and parse_article_path(parts.path) is not None
        )

    def url_for_spec(self, spec: str) -> str | None:
        match = _BARE_ID.match(spec)
        if match:
            return _article_url(*match.groups())
        return super().url_for_spec(spec)

    async def resolve_url(self, spec: str, url: str) -> ResolvedRef:
        parsed = parse_article_path(urlsplit(url).path)
        assert parsed is not None  # claims_url() checked it
        article, version = parsed
        api = f"{self.api_url}/articles/{article}"
        if version:
            api += f"/versions/{version}"
        resp = await self.api_request(api, headers={"Accept": "application/json"})
        what = f"Figshare article {article}" + (f" version {version}" if version else "")
        if resp.status == 404:
            raise RefNotFound(f"{what} does not exist.")
        if resp.status in (401, 403):
            raise RefNotFound(f"{what} is not public.")
        if resp.status != 200:
            raise ProviderError(
                f"Unexpected answer from Figshare about {what} (HTTP {resp.status})."
            )
        data = json_object(resp, "Figshare")
        latest = data.get("version")
        resolved_version = version or (str(latest) if isinstance(latest, int) else "")
        if not resolved_version:
            raise ProviderError(f"Figshare did not say which version {what} is at.")
        if data.get("is_embargoed"):
            raise Forbidden(f"{what} is under embargo; its files cannot be fetched.")
        resolved = f"{article}.v{resolved_version}"
        doi = f"10.6084/m9.figshare.{resolved}"
        page = str(data.get("url_public_html") or "")
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=version or "latest",
            resolved_ref=resolved,
            resolved_spec=doi,
            # repo2docker's Figshare provider reads id and version from this
            # URL form and fetches through the API; the title slug is unused.
            repo_url=_article_url(article, resolved_version),
            ref_url=f"{page.rstrip('/')}/{resolved_version}" if page else f"https://doi.org/{doi}",
            slug_source=f"figshare.com/articles/{article}",
            content_provider=self.content_provider,
            immutable_ref=bool(version),
        )


def parse_article_path(path: str) -> tuple[str, str | None] | None:
    """``(article id, version or None)`` of a figshare ``/articles/...`` path.

    Figshare has used ``/articles/{slug}/{id}[/{version}]`` and, since 2020,
    ``/articles/{type}/{slug}/{id}[/{version}]``; three segments are told
    apart by which of them are numbers.
    """
    segments = [s for s in path.split("/") if s]
    if len(segments) < 3 or segments[0] != "articles":
        return None
    rest = segments[1:]
    numeric = [s.isdigit() for s in rest]
    if len(rest) == 2 and numeric[1]:
        return rest[1], None
    if len(rest) == 3 and numeric[1] and numeric[2]:
        return rest[1], rest[2]
    if len(rest) == 3 and numeric[2]:
        return rest[2], None
    if len(rest) == 4 and numeric[2] and numeric[3]:
        return rest[2], rest[3]
    return None


def _article_url(article: str, version: str | None) -> str:
    url = f"https://figshare.com/articles/_/{article}"
    return f"{url}/{version}" if version else url
