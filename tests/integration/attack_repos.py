"""Hostile repositories on the test git server, and building one through the
service's event stream: what test_security.py and test_build_sandbox.py
share."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.realservices import dockerfile_repo_files, make_repo
from tests.sse import read_events


def repo_with_symlink(git_root: Path, name: str, link: str, target: Path) -> str:
    """A repository without a Dockerfile whose ``link`` points at a host file."""

    def add_link(work: Path, git: Any) -> None:
        (work / link).symlink_to(target)

    return make_repo(git_root, name, {"README.md": "symlinks to the host\n"}, prepare=add_link)


def repo_with_submodule(git_root: Path, name: str, submodule_url: str) -> str:
    """A Dockerfile repository whose .gitmodules points at ``submodule_url``."""
    files = dockerfile_repo_files(secrets.token_hex(6))
    files[".gitmodules"] = f'[submodule "data"]\n\tpath = data\n\turl = {submodule_url}\n'

    def add_gitlink(work: Path, git: Any) -> None:
        # A gitlink: the submodule's commit, which git must fetch from its
        # URL. Its directory stays empty, as in a clone without submodules.
        (work / "data").mkdir()
        git("update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},data", cwd=work)

    return make_repo(git_root, name, files, prepare=add_gitlink)


def build_stream(
    service_url: str, provider: str, source: str, ref: str = "", timeout: float = 300
) -> Any:
    """Build ``source`` (a repository or record URL, quoted here) at ``ref``
    through the build-only event stream; its result, after checking it opened."""
    spec = quote(source, safe="") + (f"/{ref}" if ref else "")
    result = read_events(f"{service_url}/build/{provider}/{spec}?build_only=true", timeout=timeout)
    assert result.status == 200, result.body
    return result


def build_git(service_url: str, clone_url: str, ref: str) -> tuple[dict[str, Any], str]:
    """Build a git repository; the final event and the whole log."""
    result = build_stream(service_url, "git", clone_url, ref)
    log = "".join(e.get("message", "") for e in result.events)
    return result.final, log
