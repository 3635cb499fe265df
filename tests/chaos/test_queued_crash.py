"""The service killed (SIGKILL) while a build waits in the queue.

Real service, engine, registry and git server. A queued build is written
ahead to the history when it is submitted, not only when it starts, so the
restarted service says it was interrupted (it is not silently lost: its id
still answers), and asking again starts a new build rather than joining a
ghost.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import sqlite3
from typing import Any
from urllib.parse import quote

import pytest

from binderbuild.history import DB_NAME
from tests.api.helpers import build_status, call, post_build, slow_repo_files, wait_for
from tests.chaos.test_build_crash import AUTH, crash_config
from tests.realservices import dockerfile_repo_files, make_repo

pytestmark = [pytest.mark.docker]


def stored_state(svc: Any, build_id: str) -> str | None:
    """The state the history database holds for a build (read-only, as a
    backup tool would read it)."""
    path = svc.workdir / "var" / DB_NAME
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT state FROM builds WHERE id = ?", (build_id,)).fetchone()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def test_killed_with_a_build_in_the_queue(
    start_service: Any, registry: Any, docker_client: Any, git_server: Any
) -> None:
    marker = secrets.token_hex(6)
    make_repo(git_server.root, f"qrun-{marker}", slow_repo_files(marker, ticks=600))
    make_repo(git_server.root, f"qwait-{marker}", dockerfile_repo_files(marker))
    running_spec = f"{quote(git_server.git_url(f'qrun-{marker}'), safe='')}/main"
    queued_spec = f"{quote(git_server.git_url(f'qwait-{marker}'), safe='')}/main"
    # One build slot: the second build waits in the queue.
    svc = start_service(crash_config(registry) + "c.BinderBuild.concurrent_build_limit = 1\n")
    assert svc.proc is not None

    first = post_build(svc.url, running_spec)
    assert first.status in (200, 201, 202), first.text
    running = first.json()["id"]
    wait_for("the first build to run", lambda: build_status(svc.url, running)["state"] == "running")
    second = post_build(svc.url, queued_spec)
    assert second.status in (200, 201, 202), second.text
    queued = second.json()["id"]
    status = build_status(svc.url, queued)
    assert status["state"] == "queued" and status["queue_position"] == 1, status
    # Written ahead, and on disk before POST /api/builds answered: killed
    # right after the answer, the build is still in the history.
    assert stored_state(svc, queued) == "queued"

    svc.proc.send_signal(signal.SIGKILL)
    svc.proc.wait(10)
    svc.start()

    # Not lost: the queued build answers, as interrupted while it waited.
    old = build_status(svc.url, queued)
    assert (old["state"], old["failure"]["type"]) == ("failed", "BuildInterrupted"), old
    assert "waiting in the queue" in old["failure"]["reason"], old
    assert old["resolved_ref"] == second.json()["resolved_ref"]
    log = call(f"{svc.url}/api/builds/{queued}/log").text
    assert "position 1 in the queue" in log and "interrupted" in log, log
    assert build_status(svc.url, running)["failure"]["type"] == "BuildInterrupted"

    # Asked again: a new build, not the ghost of the old one.
    again = post_build(svc.url, queued_spec)
    assert again.status == 201, again.text
    fresh = again.json()["id"]
    assert fresh != queued
    resp = call(f"{svc.url}/api/builds/{fresh}", "DELETE", headers=AUTH)
    assert resp.status in (200, 202), resp.text
    wait_for("the cancel", lambda: build_status(svc.url, fresh)["state"] == "cancelled", 60)
