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
    ref = await provider.resolve(spec)
    assert ref.resolved_ref == "3242074"
    assert ref.resolved_spec == "10.5281/zenodo.3242074"
    assert ref.repo_url == "https://zenodo.org/record/3242074"
    assert ref.ref_url == "https://zenodo.org/records/3242074"
    assert ref.content_provider == "zenodo"
    assert ref.slug_source == "zenodo.org/zenodo/3242073"
    assert ref.immutable_ref
    # The DOI's form names the record: doi.org is never asked.
    assert [r.url for r in provider.http.requests] == ["https://zenodo.org/api/records/3242074"]


async def test_zenodo_concept_id_follows_to_latest_version(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    ref = await provider.resolve("10.5281/zenodo.3242073")
    assert ref.resolved_ref == "3242074"
    assert ref.resolved_spec == "10.5281/zenodo.3242074"
    assert not ref.immutable_ref  # a concept id moves with new versions


async def test_zenodo_sandbox(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    ref = await provider.resolve("10.5072/zenodo.123456")
    assert ref.repo_url == "https://sandbox.zenodo.org/record/123456"
    assert ref.resolved_spec == "10.5072/zenodo.123456"


async def test_zenodo_errors(make_provider) -> None:
    provider = make_provider(ZenodoProvider, "zenodo/records")
    with pytest.raises(RefNotFound, match="has been deleted"):
        await provider.resolve("10.5281/zenodo.1234567")
    with pytest.raises(RefNotFound, match="does not exist"):
        await provider.resolve("99999999")
    with pytest.raises(Forbidden, match="restricted"):
        await provider.resolve("7777777")
    with pytest.raises(ProviderRateLimited, match="Zenodo rate limit exceeded") as limited:
        await provider.resolve("5555555")
    assert limited.value.retry_after == 30
    with pytest.raises(ProviderError, match="could not be reached"):
        await provider.resolve("6666666")


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
    ref = await provider.resolve(spec)
    assert ref.resolved_ref == "9782777.v3"
    assert ref.resolved_spec == "10.6084/m9.figshare.9782777.v3"
    assert ref.repo_url == "https://figshare.com/articles/_/9782777/3"
    assert (
        ref.ref_url
        == "https://figshare.com/articles/software/Binder-ready_openSenseMap_Analysis/9782777/3"
    )
    assert ref.content_provider == "figshare"
    assert not ref.immutable_ref


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
    ref = await provider.resolve(spec)
    assert ref.resolved_ref == "9782777.v1"
    assert ref.repo_url == "https://figshare.com/articles/_/9782777/1"
    assert ref.immutable_ref


async def test_figshare_errors(make_provider) -> None:
    provider = make_provider(FigshareProvider, "figshare/articles")
    with pytest.raises(RefNotFound, match="version 9 does not exist"):
        await provider.resolve("10.6084/m9.figshare.9782777.v9")
    with pytest.raises(RefNotFound, match="article 1 does not exist"):
        await provider.resolve("1")
    with pytest.raises(Forbidden, match="embargo"):
        await provider.resolve("22222222")
    with pytest.raises(ProviderError, match="HTTP 503"):
        await provider.resolve("33333333")
    with pytest.raises(SpecError):
        await provider.resolve("https://example.org/articles/x/1")


# --- Dataverse -------------------------------------------------------------------------


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
    ref = await provider.resolve(spec)
    assert ref.resolved_ref == "3035124.v3.0"
    assert ref.resolved_spec == "doi:10.7910/DVN/TJCLKP"
    assert (
        ref.repo_url
        == "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP"
    )
    assert ref.ref_url == "https://doi.org/10.7910/DVN/TJCLKP"
    assert ref.content_provider == "dataverse"
    assert not ref.immutable_ref
    # Dataverse hosts are checked against internal networks on every request.
    assert "dataverse.harvard.edu" in resolver.asked


async def test_dataverse_file_doi_leads_to_its_dataset(make_provider) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    ref = await provider.resolve("10.7910/DVN/6ZXAGT/3YRRYJ")
    assert ref.resolved_ref == "3600000.v1.1"
    assert ref.resolved_spec == "doi:10.7910/DVN/6ZXAGT"


async def test_dataverse_errors(make_provider) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    with pytest.raises(RefNotFound, match="deaccessioned"):
        await provider.resolve(
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/GONE01"
        )
    with pytest.raises(RefNotFound, match="was not found"):
        await provider.resolve(
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/NOPE00"
        )
    with pytest.raises(RefNotFound, match="does not exist"):
        await provider.resolve("10.7910/DVN/NOPE00")
    with pytest.raises(SpecError, match="not a Dataverse record"):
        await provider.resolve("10.1038/nphys1170")
    with pytest.raises(ProviderError, match="HTTP 500"):
        await provider.resolve(
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/DOWN00"
        )


async def test_dataverse_hosts_and_network_safety(make_provider) -> None:
    provider = make_provider(DataverseProvider, "dataverse/datasets")
    with pytest.raises(SpecError, match="not a Dataverse installation served here"):
        await provider.resolve("https://dv.example.com/dataset.xhtml?persistentId=doi:10.1/x")
    anywhere = make_provider(DataverseProvider, "dataverse/datasets", hosts=["*"])
    with pytest.raises(UnsafeURL, match="internal address"):
        await anywhere.resolve("https://internal.example/dataset.xhtml?persistentId=doi:10.1/x")
    with pytest.raises(UnsafeURL, match="169.254.169.254"):
        await anywhere.resolve("http://169.254.169.254/dataset.xhtml?persistentId=doi:10.1/x")
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
    ref = await provider.resolve(spec)
    # 2021-08-03T09:15:02Z
    assert ref.resolved_ref == f"{RESOURCE}.v1627982102"
    assert ref.repo_url == f"https://www.hydroshare.org/resource/{RESOURCE}"
    assert ref.resolved_spec == ref.repo_url
    assert ref.content_provider == "hydroshare"
    assert not ref.immutable_ref


async def test_hydroshare_errors(make_provider) -> None:
    provider = make_provider(HydroshareProvider, "hydroshare/resources")
    with pytest.raises(RefNotFound, match="does not exist"):
        await provider.resolve("0" * 32)
    with pytest.raises(RefNotFound, match="not public"):
        await provider.resolve("1" * 32)
    with pytest.raises(ProviderError, match="did not say when"):
        await provider.resolve("2" * 32)
    with pytest.raises(SpecError):
        await provider.resolve("not-a-resource")


def test_modified_epoch_formats() -> None:
    assert (
        modified_epoch([{"type": "modified", "start_date": "2021-08-03T09:15:02Z"}]) == 1627982102
    )
    assert (
        modified_epoch([{"type": "modified", "start_date": "2021-08-03T09:15:02.5"}]) == 1627982102
    )
    assert (
        modified_epoch([{"type": "modified", "start_date": "2021-08-03T11:15:02+02:00"}])
        == 1627982102
    )
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
    with pytest.raises(RefNotFound, match="does not exist"):
        await provider.resolve("10.9999/does-not-exist")
    with pytest.raises(
        SpecError, match="www.nature.com.*not a record on Zenodo, Figshare, Dataverse, HydroShare"
    ):
        await provider.resolve("10.1038/nphys1170")
    with pytest.raises(RefNotFound, match="does not point to a web page"):
        await provider.resolve("10.1234/no-url")
    with pytest.raises(ProviderError, match="doi.org is having trouble"):
        await provider.resolve("10.5555/doi-org-down")
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
