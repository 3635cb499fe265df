"""Repository providers, one per module, chosen by their URL prefix."""

from __future__ import annotations

from binderbuild.providers.base import ParsedSpec, RepoProvider
from binderbuild.providers.git import GitRepoProvider

# Prefix -> import string. Operators change the set with BinderBuild.repo_providers.
DEFAULT_PROVIDERS: dict[str, str] = {
    "gh": "binderbuild.providers.github.GitHubRepoProvider",
    "gist": "binderbuild.providers.gist.GistRepoProvider",
    "gl": "binderbuild.providers.gitlab.GitLabRepoProvider",
    "git": "binderbuild.providers.git.GitRepoProvider",
    "zenodo": "binderbuild.providers.zenodo.ZenodoProvider",
    "figshare": "binderbuild.providers.figshare.FigshareProvider",
    "dataverse": "binderbuild.providers.dataverse.DataverseProvider",
    "hydroshare": "binderbuild.providers.hydroshare.HydroshareProvider",
    "ckan": "binderbuild.providers.ckan.CKANProvider",
    "swh": "binderbuild.providers.swhid.SwhidProvider",
    "doi": "binderbuild.providers.doi.DoiProvider",
}

__all__ = ["DEFAULT_PROVIDERS", "GitRepoProvider", "ParsedSpec", "RepoProvider"]
