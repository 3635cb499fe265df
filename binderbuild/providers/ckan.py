"""CKAN: ``ckan/{url-encoded dataset URL}`` resolved to a dataset activity (version).

The dataset URL names the site (CKAN may live under a path prefix) and the
dataset: ``https://demo.ckan.org/dataset/sample``. A particular version is
named as CKAN does, by activity: ``.../dataset/sample/history/{activity id}``
or ``...?activity_id={activity id}``.

The host is the user's choice, so every request passes the network-safety
check (after DNS and on every redirect). Resolution uses the action API:

- ``package_show?id=`` proves the dataset exists and is public;
- with an activity: ``activity_show?id=`` proves it belongs to the dataset;
  the activity id is the immutable ref (cached forever);
- without: ``package_activity_list?id=&limit=1`` gives the latest activity, so
  the build is pinned to it. Sites without the activity plugin fall back to
  the dataset's ``metadata_modified`` time (``v{unix time}``, like BinderHub),
  which cannot be pinned for the build.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from traitlets import List, Unicode

from binderbuild.errors import ProviderError, RefNotFound, SpecError, UnsafeURL
from binderbuild.http import HttpResponse
from binderbuild.models import ResolvedRef
from binderbuild.providers.base import ParsedSpec, reject_control_chars
from binderbuild.providers.httpapi import HttpRepoProvider

# CKAN dataset names (2-100 of a-z0-9-_) or ids (UUIDs); activity ids are UUIDs.
_DATASET = re.compile(r"^[A-Za-z0-9_-]{2,100}$")
_ACTIVITY = re.compile(r"^[0-9a-fA-F-]{8,64}$")


def _epoch(value: object) -> int | None:
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if when.tzinfo is None:  # CKAN timestamps are UTC without an offset
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


class CKANProvider(HttpRepoProvider):
    provider_id = "ckan"
    display_name = "CKAN dataset"
    content_provider = "ckan"
    repo_label = "CKAN dataset URL"
    repo_placeholder = "https://demo.ckan.org/dataset/sample-dataset-1"
    repo_regex = r"^https?://\S+/dataset/\S+$"
    spec_regex = r"^https?%3[Aa]%2[Ff]%2[Ff][^/]+$"
    url_encoded = True
    uses_ref = False
    ref_label = ""

    allowed_hosts = List(
        Unicode(),
        config=True,
        help="CKAN sites (host names) served. Empty: any site that passes the network-safety check.",
    )

    def parse(self, spec: str) -> ParsedSpec:
        reject_control_chars(spec, "spec")
        url = unquote(spec)
        reject_control_chars(url, "dataset URL")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SpecError(
                "A CKAN spec is a url-encoded dataset URL, e.g. "
                "https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1"
            )
        if parts.username or parts.password:
            raise UnsafeURL("A CKAN dataset URL must not carry credentials.")
        if self.allowed_hosts and parts.hostname.lower() not in {
            h.lower() for h in self.allowed_hosts
        }:
            raise SpecError(f"CKAN site {parts.hostname} is not served here.")
        if "/dataset/" not in parts.path:
            raise SpecError(f"{url!r} is not a CKAN dataset URL (no /dataset/ in its path).")
        prefix, rest = parts.path.split("/dataset/", 1)
        segments = [s for s in rest.split("/") if s]
        if not segments or not _DATASET.match(segments[0]):
            raise SpecError(f"{url!r} does not name a CKAN dataset.")
        activity = ""
        if len(segments) >= 3 and segments[1] == "history":
            activity = segments[2]
        elif len(segments) > 1:
            raise SpecError(f"{url!r}: expected /dataset/NAME or /dataset/NAME/history/ACTIVITY.")
        else:
            activity = (parse_qs(parts.query).get("activity_id") or [""])[0]
        if activity and not _ACTIVITY.match(activity):
            raise SpecError(f"{activity!r} is not a CKAN activity id.")
        site = f"{parts.scheme}://{parts.netloc}{prefix}"
        return ParsedSpec(repo=f"{site}/dataset/{segments[0]}", ref=activity)

    async def _action(self, api: str, action: str, **params: str) -> tuple[int, Any]:
        """Call an action; (status, result) for 200, (status, None) otherwise."""
        resp: HttpResponse = await self.api_request(
            f"{api}{action}?{urlencode(params)}",
            service=f"CKAN ({urlsplit(api).hostname})",
            headers={"Accept": "application/json"},
            check_network=True,
        )
        if resp.status != 200:
            return resp.status, None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or "result" not in data:
            raise SpecError(f"{urlsplit(api).hostname} does not answer like a CKAN site.")
        return 200, data["result"]

    async def resolve(self, spec: str) -> ResolvedRef:
        parsed = self.parse(spec)
        dataset_url, activity = parsed.repo, parsed.ref
        site, name = dataset_url.rsplit("/dataset/", 1)
        api = f"{site}/api/3/action/"
        status, package = await self._action(api, "package_show", id=name)
        if status in (403, 404) or (
            status == 200 and isinstance(package, dict) and package.get("state") == "deleted"
        ):
            raise RefNotFound(
                f"CKAN dataset {name} was not found on {urlsplit(site).hostname} (or is not public)."
            )
        if status != 200 or not isinstance(package, dict):
            raise ProviderError(
                f"Unexpected answer from CKAN about dataset {name} (HTTP {status})."
            )
        package_id = str(package.get("id", ""))
        if activity:
            status, found = await self._action(api, "activity_show", id=activity)
            if status in (403, 404) or not isinstance(found, dict):
                raise RefNotFound(f"Activity {activity} of CKAN dataset {name} was not found.")
            if str(found.get("object_id", "")) != package_id:
                raise RefNotFound(f"Activity {activity} does not belong to CKAN dataset {name}.")
            resolved, pinned = activity, True
        else:
            status, activities = await self._action(
                api, "package_activity_list", id=package_id or name, limit="1"
            )
            if (
                status == 200
                and isinstance(activities, list)
                and activities
                and isinstance(activities[0], dict)
            ):
                resolved, pinned = str(activities[0].get("id", "")), True
            else:
                resolved, pinned = "", False
            if not resolved:
                epoch = _epoch(package.get("metadata_modified"))
                if epoch is None:
                    raise ProviderError(f"CKAN did not say when dataset {name} was modified.")
                resolved, pinned = f"v{epoch}", False
        versioned = (
            f"{dataset_url}?{urlencode({'activity_id': resolved})}" if pinned else dataset_url
        )
        canonical_name = str(package.get("name") or name)
        return ResolvedRef(
            provider_id=self.provider_id,
            spec=spec,
            unresolved_ref=activity or "latest",
            resolved_ref=resolved,
            resolved_spec=quote(versioned, safe=""),
            # repo2docker's CKAN provider fetches the activity named in the URL.
            repo_url=versioned,
            ref_url=versioned,
            slug_source=f"{site}/dataset/{canonical_name}".lower(),
            content_provider=self.content_provider,
            immutable_ref=bool(activity),
        )
