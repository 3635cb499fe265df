"""Fixtures of the chaos scenarios: the real hub, stopped, frozen and restarted.

The hub fixtures of tests/hub (its own hub per test, test images made on the
engine) are reused; ``frozen`` SIGSTOPs a hub process and always resumes it.
Each hub here leaves user servers alone when it stops
(``cleanup_servers = False``), as a supervised single-machine hub does, so a
restart mid-spawn is a restart and not a shutdown of every server.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from binderbuild.models import ResolvedRef
from tests.hub.conftest import (  # noqa: F401  (fixtures, registered by import)
    _check_proxy_installed,
    make_image,
    plain_image,
    slow_image,
    start_hub,
)
from tests.hubservice import HubService

# Appended to the generated config; harmless when hubconfig already says so.
KEEP_SERVERS = "c.JupyterHub.cleanup_servers = False\n"


def pinned_git_ref(url: str, sha: str) -> ResolvedRef:
    """What binderbuild's git provider resolves ``<url>/<sha>`` to: a ref
    asked for by its commit (the image name is computed from it)."""
    return ResolvedRef(
        provider_id="git",
        spec=f"{url}/{sha}",
        unresolved_ref=sha,
        resolved_ref=sha,
        resolved_spec=f"{url}/{sha}",
        repo_url=url,
        ref_url=url,
        slug_source=url,
    )


@contextlib.contextmanager
def frozen(hub: HubService) -> Iterator[None]:
    """The hub process stopped (SIGSTOP): it accepts connections and answers
    nothing. Resumed (SIGCONT) when the block ends, whatever happened."""
    assert hub.proc is not None
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)


def hub_requests(hub: HubService, method: str, pattern: str) -> list[str]:
    """Requests the hub logged (one line each, once it answered them) whose
    path matches ``pattern`` (a regex on the path after /hub/api/)."""
    rx = re.compile(rf"\b{method} /hub/api/({pattern})[\s?]")
    return [m.group(1) for line in hub.log().splitlines() if (m := rx.search(line))]


@pytest.fixture
def hub_keeping_servers(start_hub: Any) -> HubService:  # noqa: F811
    """A hub of this test alone (it may be frozen or restarted)."""
    hub: HubService = start_hub(extra=KEEP_SERVERS)
    return hub
