"""CKAN and Software Heritage providers against recorded API answers."""

from __future__ import annotations

import ipaddress
from urllib.parse import quote

import pytest

from binderbuild.errors import ProviderError, ProviderRateLimited, RefNotFound, SpecError, UnsafeURL
from binderbuild.providers.ckan import CKANProvider
from binderbuild.providers.swhid import SwhidProvider
from tests.providers.helpers import assert_ref, expect_errors, expect_parse_error

DATASET = "https://demo.ckan.org/dataset/sample-dataset-1"
LATEST_ACTIVITY = "6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c"
OLD_ACTIVITY = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"


def q(url: str) -> str:
    return quote(url, safe="")


# --- CKAN ------------------------------------------------------------------------------


async def test_ckan_latest_is_pinned_to_its_activity(make_provider, resolver) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    pinned = f"{DATASET}?activity_id={LATEST_ACTIVITY}"
    assert_ref(
        await provider.resolve(q(DATASET)),
        resolved_ref=LATEST_ACTIVITY,
        repo_url=pinned,
        resolved_spec=q(pinned),
        content_provider="ckan",
        slug_source=DATASET,
        immutable_ref=False,
    )
    assert resolver.asked == ["demo.ckan.org", "demo.ckan.org"]


@pytest.mark.parametrize(
    "url",
    [
        f"{DATASET}/history/{OLD_ACTIVITY}",
        f"{DATASET}?activity_id={OLD_ACTIVITY}",
    ],
)
async def test_ckan_history_version_is_immutable(make_provider, url: str) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    assert_ref(
        await provider.resolve(q(url)),
        resolved_ref=OLD_ACTIVITY,
        repo_url=f"{DATASET}?activity_id={OLD_ACTIVITY}",
        immutable_ref=True,
    )


async def test_ckan_unencoded_spec_is_accepted(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    assert (await provider.resolve(DATASET)).resolved_ref == LATEST_ACTIVITY


async def test_ckan_site_under_prefix_without_activity_plugin(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    assert_ref(
        await provider.resolve(q("https://data.example.org/catalog/dataset/rainfall")),
        resolved_ref="v1709209845",  # 2024-02-29T12:30:45.678901 UTC
        repo_url="https://data.example.org/catalog/dataset/rainfall",
        immutable_ref=False,
    )


async def test_ckan_not_found_private_and_foreign_activity(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    demo = "https://demo.ckan.org/dataset"
    foreign = "99999999-9999-4999-8999-999999999999"
    unknown = "abcdef00-0000-4000-8000-000000000000"
    await expect_errors(
        provider,
        [
            (q(f"{demo}/no-such-dataset"), RefNotFound, "no-such-dataset was not found"),
            (q(f"{demo}/private-dataset"), RefNotFound, "private-dataset"),
            (q(f"{DATASET}/history/{foreign}"), RefNotFound, "does not belong"),
            (q(f"{DATASET}?activity_id={unknown}"), RefNotFound, "Activity .* was not found"),
            (q(f"{demo}/slow-dataset"), ProviderError, "could not be reached"),
        ],
    )


async def test_ckan_non_ckan_site(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    with pytest.raises(SpecError, match="does not answer like a CKAN site"):
        await provider.resolve(q("https://not-ckan.example.com/dataset/whatever"))


@pytest.mark.parametrize(
    "url, error, message",
    [
        ("https://demo.ckan.org/group/sample", SpecError, "no /dataset/"),
        ("ftp://demo.ckan.org/dataset/x1", SpecError, "url-encoded dataset URL"),
        ("file:///etc/passwd/dataset/x1", SpecError, "url-encoded dataset URL"),
        ("https://user:pw@demo.ckan.org/dataset/x1", UnsafeURL, "credentials"),
        ("https://demo.ckan.org/dataset/x1/resource/abc", SpecError, "expected /dataset/NAME"),
        ("https://demo.ckan.org/dataset/x1/history/not;an-id", SpecError, "not a CKAN activity id"),
        ("https://demo.ckan.org/dataset/", SpecError, "does not name a CKAN dataset"),
        ("https://demo.ckan.org/dataset/x\u0000y", SpecError, "control characters"),
    ],
)
def test_ckan_malformed_specs(url: str, error: type, message: str) -> None:
    expect_parse_error(CKANProvider(), q(url), error, message)


@pytest.mark.parametrize(
    "url, address",
    [
        ("http://127.0.0.1:8080/dataset/x1", "127.0.0.1"),
        ("http://[::1]/dataset/x1", "::1"),
        ("http://169.254.169.254/dataset/x1", "169.254.169.254"),
        ("https://internal.example/dataset/x1", "10.0.0.7"),
        ("https://metadata.example/dataset/x1", "169.254.169.254"),
        ("http://[::ffff:10.1.2.3]/dataset/x1", "10.1.2.3"),
    ],
)
async def test_ckan_refuses_internal_addresses(make_provider, url: str, address: str) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    with pytest.raises(UnsafeURL, match="internal address"):
        await provider.resolve(q(url))
    assert provider.http.requests == []


async def test_ckan_refuses_redirect_to_internal_address(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets")
    with pytest.raises(UnsafeURL, match="internal.example.*10.0.0.7"):
        await provider.resolve(q("https://redirector.example.com/dataset/sneaky"))
    assert len(provider.http.requests) == 1


async def test_ckan_operator_allow_list_admits_internal_site(make_provider) -> None:
    provider = make_provider(
        CKANProvider,
        "ckan/datasets",
        allowed_internal_networks=[ipaddress.ip_network("10.0.0.0/8")],
    )
    # Allowed through the check; the recording then says "no such dataset".
    provider.http.interactions.append(
        {
            "request": {"url": "https://internal.example/api/3/action/package_show?id=x1"},
            "response": {
                "status": 404,
                "json": {"success": False, "error": {"message": "Not found"}},
            },
        }
    )
    with pytest.raises(RefNotFound):
        await provider.resolve(q("https://internal.example/dataset/x1"))


async def test_ckan_allowed_hosts(make_provider) -> None:
    provider = make_provider(CKANProvider, "ckan/datasets", allowed_hosts=["demo.ckan.org"])
    assert (await provider.resolve(q(DATASET))).resolved_ref == LATEST_ACTIVITY
    with pytest.raises(SpecError, match="not served here"):
        provider.parse(q("https://data.example.org/catalog/dataset/rainfall"))


# --- Software Heritage ------------------------------------------------------------------

DIR = "2fbc0a6a7b7b6a7d1f6a4f1a2e0c1c7b6b8d9e0f"
REV = "309cf2674ee7a0749978cf8265ab91a60aea0f7d"
REL = "208f61cc7a5dbc9879ae6e5c2f95891e270f09ef"


async def test_swh_directory(make_provider) -> None:
    provider = make_provider(SwhidProvider, "swh/objects")
    assert_ref(
        await provider.resolve(f"swh:1:dir:{DIR}"),
        resolved_ref=DIR,
        repo_url=f"swh:1:dir:{DIR}",
        resolved_spec=f"swh:1:dir:{DIR}",
        ref_url=f"https://archive.softwareheritage.org/browse/directory/{DIR}/",
        content_provider="swhid",
        immutable_ref=True,
    )


async def test_swh_revision_with_qualifiers_and_release(make_provider) -> None:
    provider = make_provider(SwhidProvider, "swh/objects", auth_token="swh-bearer-secret")
    rev = await provider.resolve(f"swh:1:rev:{REV};origin=https://github.com/example/repo")
    assert rev.repo_url == f"swh:1:rev:{REV}"
    assert provider.http.requests[0].headers["Authorization"] == "Bearer swh-bearer-secret"
    rel = await provider.resolve(f"swh:1:rel:{REL}")
    assert rel.repo_url == f"swh:1:rev:{REV}"
    assert rel.resolved_ref == REV and rel.immutable_ref
    assert provider.secret_values() == ["swh-bearer-secret"]


async def test_swh_errors(make_provider) -> None:
    provider = make_provider(SwhidProvider, "swh/objects")
    await expect_errors(
        provider,
        [
            ("swh:1:dir:" + "0" * 40, RefNotFound, "not in the Software Heritage archive"),
            ("swh:1:dir:" + "1" * 40, ProviderRateLimited, "Try again in 30 minutes"),
        ],
    )


@pytest.mark.parametrize(
    "spec, message",
    [
        ("swh:1:cnt:" + "a" * 40, "Only SWHIDs of directories"),
        ("swh:1:snp:" + "a" * 40, "Only SWHIDs of directories"),
        ("swh:2:dir:" + "a" * 40, "not a SWHID"),
        ("swh:1:dir:" + "a" * 39, "not a SWHID"),
        ("https://archive.softwareheritage.org/", "not a SWHID"),
    ],
)
def test_swh_malformed(spec: str, message: str) -> None:
    expect_parse_error(SwhidProvider(), spec, SpecError, message)
