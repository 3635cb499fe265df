"""The engine image cleaner as the chart runs it next to each builder daemon
(``python -m binderbuild.lifecycle``), against the real engine: over its
budget it removes the images under its prefix, oldest built first, never one
a container runs, never anything else (no prune: other tests share the engine)."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import pytest

from tests.integration.test_lifecycle_real import build_image
from tests.realservices import BASE_IMAGE

pytestmark = [pytest.mark.docker]


def test_node_cleaner_command_removes_oldest_first_and_keeps_running_images(docker_client) -> None:
    prefix = f"bbnode-{secrets.token_hex(4)}-"
    names = [f"{prefix}img{i}:1" for i in range(3)]
    container = None
    try:
        for name in names:
            build_image(docker_client, name, base=BASE_IMAGE)
            time.sleep(1.1)  # distinct creation times (one-second resolution)
        container = docker_client.containers.run(
            names[1], ["sleep", "300"], detach=True, network_mode="none"
        )
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "binderbuild.lifecycle",
                f"--docker-host={os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}",
                f"--image-prefix={prefix}",
                "--budget=1",
                "--grace-period=0",
                "--no-prune",
                "--once",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        left = sorted(
            t for i in docker_client.images.list() for t in i.tags if t.startswith(prefix)
        )
        assert left == [names[1]], result.stderr
        removed = [line for line in result.stderr.splitlines() if "removed image" in line]
        assert [names[0] in removed[0], names[2] in removed[1]] == [True, True], removed
        docker_client.images.get(BASE_IMAGE)
    finally:
        if container is not None:
            container.remove(force=True)
        for name in names:
            try:
                docker_client.images.remove(name, force=True)
            except Exception:
                pass
