"""Record providers (Zenodo, Figshare, Dataverse, HydroShare) and the ``doi`` prefix."""

from __future__ import annotations

import pytest

from binderbuild.errors import (
    Forbidden,
    ProviderError,
    ProviderRateLimited,
    RefNotFound,
    SpecError,
    UnsafeURL,
)
from binderbuild.providers.dataverse import DataverseProvider
from binderbuild.providers.doi import DoiProvider, normalize_doi
from binderbuild.providers.figshare import FigshareProvider
from binderbuild.providers.hydroshare import HydroshareProvider, modified_epoch
from binderbuild.providers.zenodo import ZenodoProvider
from tests.providers.helpers import assert_ref, expect_errors


@pytest.mark.parametrize(
    "value, doi",
    [
        ("10.5281/zenodo.3242074", "10.5281/zenodo.3242074"),
        ("doi:10.5281/zenodo.3242074", "10.5281/zenodo.3242074"),
        ("DOI:10.7910/DVN/TJCLKP", "10.7910/DVN/TJCLKP"),
        ("https://doi.org/10.6084/m9.figshare.9782777.v1", "10.6084/m9.figshare.9782777.v1"),
        ("http://dx.doi.org/10.4211/hs.abc", "10.4211/hs.abc"),
        ("3242074", None),
        ("https://zenodo.org/records/3242074", None),
        ("10.5281", None),
    ],
)
def test_normalize_doi(value: str, doi: str | None) -> None:
    assert normalize_doi(value) == doi


# --- Zenodo -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "10.5281/zenodo.3242074",
        "doi:10.5281/zenodo.3242074",
        "https://doi.org/10.5281/zenodo.3242074",
        "https://zenodo.org/records/3242074",
        "https://zenodo.org/record/3242074/",
        "3242074",
    ],
)
async def test_zenodo_spec_forms(make_provider, spec: str) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    assert_ref(
        await provider.resolve(spec),
        resolved_ref="3242074",
        resolved_spec="10.5281/zenodo.3242074",
        repo_url="https://zenodo.org/record/3242074",
        ref_url="https://zenodo.org/records/3242074",
        content_provider="zenodo",
        slug_source="zenodo.org/zenodo/3242073",
        immutable_ref=True,
    )
    # The DOI's form names the record: doi.org is never asked.
    assert [r.url for r in provider.http.requests] == ["https://zenodo.org/api/records/3242074"]


async def test_zenodo_concept_id_follows_to_latest_version(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    assert_ref(
        await provider.resolve("10.5281/zenodo.3242073"),
        resolved_ref="3242074",
        resolved_spec="10.5281/zenodo.3242074",
        immutable_ref=False,  # a concept id moves with new versions
    )


async def test_zenodo_sandbox(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    assert_ref(
        await provider.resolve("10.5072/zenodo.123456"),
        repo_url="https://sandbox.zenodo.org/record/123456",
        resolved_spec="10.5072/zenodo.123456",
    )


async def test_zenodo_errors(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    errors = await expect_errors(
        provider,
        [
            ("10.5281/zenodo.1234567", RefNotFound, "has been deleted"),
            ("99999999", RefNotFound, "does not exist"),
            ("7777777", Forbidden, "restricted"),
            ("5555555", ProviderRateLimited, "Zenodo rate limit exceeded"),
            ("6666666", ProviderError, "could not be reached"),
        ],
    )
    assert errors[3].retry_after == 30


@pytest.mark.parametrize(
    "spec, message",
    [
        ("not a record", "cannot contain spaces"),
        ("https://example.com/records/1", "not a DOI or URL of a Zenodo record"),
        ("https://zenodo.org/communities/x", "not a DOI or URL of a Zenodo record"),
        ("", "empty"),
    ],
)
async def test_zenodo_bad_specs(make_provider, spec: str, message: str) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    with pytest.raises(SpecError, match=message):
        await provider.resolve(spec)
    assert provider.http.requests == []


# --- Figshare -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "10.6084/m9.figshare.9782777",
        "https://figshare.com/articles/software/Binder-ready_openSenseMap_Analysis/9782777",
        "9782777",
    ],
)
async def test_figshare_latest_version(make_provider, spec: str) -> None:
    provider = make_provider(FigshareProvider, "figshare/articles")
    assert_ref(
        await provider.resolve(spec),
        resolved_ref="9782777.v3",
        resolved_spec="10.6084/m9.figshare.9782777.v3",
        repo_url="https://figshare.com/articles/_/9782777/3",
        ref_url="https://figshare.com/articles/software/Binder-ready_openSenseMap_Analysis/9782777/3",
        content_provider="figshare",
        immutable_ref=False,
    )


@pytest.mark.parametrize(
    "spec",
    [
        "10.6084/m9.figshare.9782777.v1",
        "https://figshare.com/articles/software/Binder-ready_openSenseMap_Analysis/9782777/1",
        "9782777.v1",
    ],
)
async def test_figshare_given_version_is_immutable(make_provider, spec: str) -> None:
    provider = make_provider(FigshareProvider, "figshare/articles")
    assert_ref(
        await provider.resolve(spec),
        resolved_ref="9782777.v1",
        repo_url="https://figshare.com/articles/_/9782777/1",
        immutable_ref=True,
    )


async def test_figshare_errors(make_provider) -> None:
    provider = make_provider(FigshareProvider, "figshare/articles")
    await expect_errors(
        provider,
        [
            ("10.6084/m9.figshare.9782777.v9", RefNotFound, "version 9 does not exist"),
            ("1", RefNotFound, "article 1 does not exist"),
            ("22222222", Forbidden, "embargo"),
            ("33333333", ProviderError, "HTTP 503"),
            ("https://example.org/articles/x/1", SpecError, None),
        ],
    )


# --- Dataverse -------------------------------------------------------------------------

DATASET_PAGE = "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/"


@pytest.mark.parametrize(
    "spec",
    [
        "10.7910/DVN/TJCLKP",
        "doi:10.7910/DVN/TJCLKP",
        "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
        "https://dataverse.harvard.edu/citation?persistentId=doi:10.7910/DVN/TJCLKP",
        "https://dataverse.harvard.edu/api/access/datafile/3323458",
    ],
)
async def test_dataverse_dataset(make_provider, resolver, spec: str) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    assert_ref(
        await provider.resolve(spec),
        resolved_ref="3035124.v3.0",
        resolved_spec="doi:10.7910/DVN/TJCLKP",
        repo_url=f"{DATASET_PAGE}TJCLKP",
        ref_url="https://doi.org/10.7910/DVN/TJCLKP",
        content_provider="dataverse",
        immutable_ref=False,
    )
    # Dataverse hosts are checked against internal networks on every request.
    assert "dataverse.harvard.edu" in resolver.asked


async def test_dataverse_file_doi_leads_to_its_dataset(make_provider) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    assert_ref(
        await provider.resolve("10.7910/DVN/6ZXAGT/3YRRYJ"),
        resolved_ref="3600000.v1.1",
        resolved_spec="doi:10.7910/DVN/6ZXAGT",
    )


async def test_dataverse_errors(make_provider) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    await expect_errors(
        provider,
        [
            (f"{DATASET_PAGE}GONE01", RefNotFound, "deaccessioned"),
            (f"{DATASET_PAGE}NOPE00", RefNotFound, "was not found"),
            ("10.7910/DVN/NOPE00", RefNotFound, "does not exist"),
            ("10.1038/nphys1170", SpecError, "not a Dataverse record"),
            (f"{DATASET_PAGE}DOWN00", ProviderError, "HTTP 500"),
        ],
    )


async def test_dataverse_hosts_and_network_safety(make_provider) -> None:
    page = "dataset.xhtml?persistentId=doi:10.1/x"
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    with pytest.raises(SpecError, match="not a Dataverse installation served here"):
        await provider.resolve(f"https://dv.example.com/{page}")
    anywhere = make_provider(DataverseProvider, "dataverse/datasets", hosts=["*"])
    await expect_errors(
        anywhere,
        [
            (f"https://internal.example/{page}", UnsafeURL, "internal address"),
            (f"http://169.254.169.254/{page}", UnsafeURL, "169.254.169.254"),
        ],
    )
    assert anywhere.http.requests == []


# --- HydroShare -------------------------------------------------------------------------

RESOURCE = "b8f6eae9d89241cf8b5904033460af61"


@pytest.mark.parametrize(
    "spec",
    [
        RESOURCE,
        f"https://www.hydroshare.org/resource/{RESOURCE}/",
        f"http://hydroshare.org/resource/{RESOURCE}",
        f"10.4211/hs.{RESOURCE}",
        f"https://doi.org/10.4211/hs.{RESOURCE}",
    ],
)
async def test_hydroshare(make_provider, spec: str) -> None:
    provider = make_provider(HydroshareProvider, "hydroshare/resources")
    page = f"https://www.hydroshare.org/resource/{RESOURCE}"
    assert_ref(
        await provider.resolve(spec),
        resolved_ref=f"{RESOURCE}.v1627982102",  # 2021-08-03T09:15:02Z
        repo_url=page,
        resolved_spec=page,
        content_provider="hydroshare",
        immutable_ref=False,
    )


async def test_hydroshare_errors(make_provider) -> None:
    provider = make_provider(HydroshareProvider, "hydroshare/resources")
    await expect_errors(
        provider,
        [
            ("0" * 32, RefNotFound, "does not exist"),
            ("1" * 32, RefNotFound, "not public"),
            ("2" * 32, ProviderError, "did not say when"),
            ("not-a-resource", SpecError, None),
        ],
    )


def test_modified_epoch_formats() -> None:
    for start in ("2021-08-03T09:15:02Z", "2021-08-03T09:15:02.5", "2021-08-03T11:15:02+02:00"):
        assert modified_epoch([{"type": "modified", "start_date": start}]) == 1627982102, start
    assert modified_epoch([{"type": "created", "start_date": "2021-08-03"}]) is None
    assert modified_epoch("nonsense") is None


# --- doi/ -------------------------------------------------------------------------------


async def test_doi_prefix_dispatches_to_the_right_provider(make_provider) -> None:
    provider = make_provider(
        DoiProvider,
        "doi/handles",
        "zenodo/records",
        "figshare/articles",
        "dataverse/datasets",
        "hydroshare/resources",
    )
    zenodo = await provider.resolve("10.5281/zenodo.3242074")
    assert (zenodo.provider_id, zenodo.resolved_ref) == ("zenodo", "3242074")
    assert zenodo.spec == "10.5281/zenodo.3242074"
    figshare = await provider.resolve("10.6084/m9.figshare.9782777.v1")
    assert (figshare.provider_id, figshare.resolved_ref) == ("figshare", "9782777.v1")
    portal = await provider.resolve("10.25405/data.ncl.9782777")
    assert (portal.provider_id, portal.resolved_ref) == ("figshare", "9782777.v3")
    dataverse = await provider.resolve("doi:10.7910/DVN/TJCLKP")
    assert (dataverse.provider_id, dataverse.resolved_ref) == ("dataverse", "3035124.v3.0")
    hydro = await provider.resolve(f"10.4211/hs.{RESOURCE}")
    assert hydro.provider_id == "hydroshare"


async def test_doi_prefix_errors(make_provider) -> None:
    provider = make_provider(DoiProvider, "doi/handles")
    await expect_errors(
        provider,
        [
            ("10.9999/does-not-exist", RefNotFound, "does not exist"),
            (
                "10.1038/nphys1170",
                SpecError,
                "www.nature.com.*not a record on Zenodo, Figshare, Dataverse, HydroShare",
            ),
            ("10.1234/no-url", RefNotFound, "does not point to a web page"),
            ("10.5555/doi-org-down", ProviderError, "doi.org is having trouble"),
        ],
    )
    with pytest.raises(SpecError, match="is not a DOI"):
        provider.parse("zenodo.3242074")


def test_record_providers_describe_no_ref() -> None:
    for cls in (
        ZenodoProvider,
        FigshareProvider,
        DataverseProvider,
        HydroshareProvider,
        DoiProvider,
    ):
        info = cls().describe()
        assert info["ref"]["enabled"] is False
        assert info["id"] == cls.provider_id


@pytest.mark.parametrize(
    "cls, spec",
    [
        (ZenodoProvider, "https://example.com/records/1"),
        (ZenodoProvider, "zenodo.3242074"),
        (FigshareProvider, "https://figshare.com/collections/x/1"),
        (DataverseProvider, "dataset-name"),
        (HydroshareProvider, "https://www.hydroshare.org/resource/short"),
        (DoiProvider, "https://zenodo.org/records/1"),
    ],
)
def test_bad_specs_fail_before_any_request(cls: type, spec: str) -> None:
    """parse() (no I/O) already refuses them, so the client gets a plain 400."""
    with pytest.raises(SpecError):
        cls().parse(spec)
