"""A git server that accepts connections and never answers must not hang resolution.

Uses the real git binary against a TCP server on loopback that holds every
connection open without a byte of answer (what a hostile "repository" can do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

from binderbuild.errors import ProviderError
from binderbuild.providers.git import GitRepoProvider


def _pids_with(text: str) -> list[int]:
    """Processes whose command line mentions ``text`` (our unique URL)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


async def _resolve_against_silent_server() -> tuple[BaseException | None, float, str]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()  # until the client goes away; never answer
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/silent.git"
    provider = GitRepoProvider(ls_remote_timeout=1.0)
    started = time.monotonic()
    error: BaseException | None = None
    try:
        # Generous outer bound: without the fix, ls_remote never returns.
        await asyncio.wait_for(provider.ls_remote(url, "main"), 15)
    except (ProviderError, TimeoutError) as exc:
        error = exc
    finally:
        server.close()
    return error, time.monotonic() - started, url


def test_ls_remote_timeout_ends_resolution_and_kills_git_helpers():
    error, elapsed, url = asyncio.run(_resolve_against_silent_server())
    leftovers = _pids_with(url)
    try:
        assert isinstance(error, ProviderError), f"resolution did not end with a clear error: {error!r}"
        assert "Could not reach the repository" in error.message
        assert elapsed < 10, f"resolution took {elapsed:.1f}s with a 1s timeout"
        assert leftovers == [], f"git processes left behind: {leftovers}"
    finally:
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

