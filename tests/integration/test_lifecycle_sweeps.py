"""The sweeps (issue 16) against the real engine and a real directory:
stopped server containers of built images go (with their anonymous
volumes), running ones, build sandboxes and other images' containers stay;
stale work directories that name no owner go, fresh ones and live builds'
stay. A dry run removes nothing."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import pytest

from binderbuild import owners
from binderbuild.builders import leftovers
from binderbuild.lifecycle import Sweeper
from tests.integration.test_lifecycle_real import build_image
from tests.realservices import BASE_IMAGE

pytestmark = [pytest.mark.docker]


def test_sweeps_remove_stopped_servers_and_stale_workdirs_only(
    docker_client, tmp_path: Path
) -> None:
    prefix = f"bbsweep-{secrets.token_hex(4)}-"
    image = f"{prefix}img:1"
    build_image(docker_client, image, base=BASE_IMAGE)
    made = []
    try:

        def container(command: list[str], **kw) -> str:
            c = docker_client.containers.run(image, command, detach=True, network_mode="none", **kw)
            made.append(c)
            return c.name

        stopped = container(["true"])
        running = container(["sleep", "300"])
        sandbox = container(["true"], labels={leftovers.ROLE_LABEL: "sandbox"})
        for name in (stopped, sandbox):
            docker_client.containers.get(name).wait(timeout=60)

        root = tmp_path / "work"
        root.mkdir()
        stale = root / f"{leftovers.WORKDIR_PREFIX}stale"
        fresh = root / f"{leftovers.WORKDIR_PREFIX}fresh"
        for path in (stale, fresh):
            (path / "checkout").mkdir(parents=True)
        two_days_ago = time.time() - 2 * 86400
        os.utime(stale, (two_days_ago, two_days_ago))
        live = leftovers.make_workdir(str(root), image)  # this process's: alive
        os.utime(live, (two_days_ago, two_days_ago))
        assert owners.alive(owners.current()) is not False

        sweeper = Sweeper(
            docker_client,
            image_prefix=prefix,
            work_root=str(root),
            stopped_server_age=0,
            stale_workdir_age=86400,
        )
        dry = asyncio.run(sweeper.run_once(dry_run=True))
        assert dry.containers == [stopped] and dry.workdirs == [str(stale)]
        assert stale.exists() and docker_client.containers.get(stopped)

        done = asyncio.run(sweeper.run_once())
        assert done.containers == [stopped], done
        assert done.workdirs == [str(stale)], done
        names = {c.name for c in docker_client.containers.list(all=True)}
        assert stopped not in names
        assert {running, sandbox} <= names
        assert not stale.exists() and fresh.exists() and live.exists()
    finally:
        for c in made:
            try:
                c.remove(force=True)
            except Exception:
                pass
        docker_client.images.remove(image, force=True)
