"""Repository providers, one per module, chosen by their URL prefix."""

from __future__ import annotations

from binderbuild.providers.base import ParsedSpec, RepoProvider
from binderbuild.providers.git import GitRepoProvider

# Prefix -> import string. Operators change the set with BinderBuild.repo_providers.
DEFAULT_PROVIDERS: dict[str, str] = {
    "git": "binderbuild.providers.git.GitRepoProvider",
}

__all__ = ["DEFAULT_PROVIDERS", "GitRepoProvider", "ParsedSpec", "RepoProvider"]
