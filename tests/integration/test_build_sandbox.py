"""What a repository can do to the host while it is fetched and detected.

repo2docker's content providers write files named by a remote API, and its
buildpack detection reads files of the checkout, following symlinks. Both
used to run on the host as root, next to the Docker socket. These tests
attack that step for real (service, engine, git server and a record API on
loopback) and check the host afterwards:

- a CKAN record whose resources are named ``/abs/path``, ``../..`` or
  percent-encoded paths writes nothing outside the build's own directory;
- a repository whose runtime.txt, requirements.txt or environment.yml is a
  symlink to a host file never shows that file's content in the build's
  events, its log or the stored history;
- the process that fetches and detects runs as an unprivileged user (the
  operator's ``DockerBuilder.sandbox_uid``) in a container with no Docker
  socket, no capabilities and no network of its own.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.api.helpers import call, list_builds, post_build, wait_for
from tests.conftest import service_config
from tests.integration.attack_repos import build_stream, repo_with_symlink
from tests.realservices import dockerfile_repo_files, make_repo

pytestmark = [pytest.mark.docker]

ACTIVITY = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"


# --- a CKAN site on loopback whose resources are named to escape -----------------------


class _CKAN(BaseHTTPRequestHandler):
    """The action API of one dataset, ``traversal``, and its file downloads."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        server: Any = self.server
        server.paths.append(self.path)
        path = urlsplit(self.path).path
        action = path.removeprefix("/api/3/action/") if path.startswith("/api/3/action/") else None
        package = {
            "id": "pkg-traversal",
            "name": "traversal",
            "state": "active",
            "metadata_modified": "2026-01-02T03:04:05.000006",
            "resources": server.resources,
        }
        results: dict[str, Any] = {
            "status_show": {"ckan_version": "2.10"},
            "package_show": package,
            "package_activity_list": [{"id": ACTIVITY, "object_id": "pkg-traversal"}],
            "activity_show": {"id": ACTIVITY, "object_id": "pkg-traversal"},
            "activity_data_show": package,
        }
        if action in results:
            body = json.dumps({"success": True, "result": results[action]}).encode()
            ctype = "application/json"
        elif path.startswith("/files/"):
            body, ctype = b"written by a CKAN record\n", "application/octet-stream"
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canaries() -> Iterator[list[Path]]:
    """Host paths a traversal would create; removed afterwards whatever happened."""
    token = secrets.token_hex(6)
    base = f"/tmp/bb-canary-{token}"  # noqa: S108 - host paths a traversal would reach
    paths = [Path(f"{base}-{kind}") for kind in ("abs", "dotdot", "encoded")]
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def test_record_file_names_cannot_write_outside_the_build(start_service, docker_client, canaries):
    absolute, dotdot, encoded = canaries
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CKAN)
    port = server.server_address[1]
    files = f"http://127.0.0.1:{port}/files/"
    server.paths = []  # type: ignore[attr-defined]
    # repo2docker names each file after the last segment of its URL, or the
    # resource id when the URL ends with "/".
    server.resources = [  # type: ignore[attr-defined]
        {"id": str(absolute), "url": files},
        {"id": "../" * 12 + str(dotdot).lstrip("/"), "url": files},
        {"id": "enc", "url": files + quote("../" * 12 + str(encoded).lstrip("/"), safe="")},
        {"id": "plain", "url": files + "data.csv"},
    ]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        svc = start_service(service_config(None))
        dataset = f"http://127.0.0.1:{port}/dataset/traversal"
        result = build_stream(svc.url, "ckan", dataset)
    finally:
        server.shutdown()
        server.server_close()

    fetched = [p for p in server.paths if p.startswith("/files/")]  # type: ignore[attr-defined]
    assert len(fetched) >= 2, f"the record's files were never fetched: {server.paths}"  # type: ignore[attr-defined]
    written = [str(p) for p in canaries if p.exists()]
    assert written == [], f"a record's file names wrote on the host: {written}"
    assert result.final["phase"] in ("failed", "ready"), result.final


# --- symlinks in the checkout to host files ------------------------------------------------


@pytest.mark.parametrize("link", ["runtime.txt", "requirements.txt", "environment.yml"])
def test_symlinks_to_host_files_never_reveal_them(
    start_service, docker_client, git_server, tmp_path, link
):
    marker = f"host-secret-{secrets.token_hex(8)}"
    secret = tmp_path / "cookie_secret"
    # One line, no known runtime: repo2docker quotes an invalid runtime.txt.
    secret.write_text(f"{marker}\n")
    name = f"sandbox-symlink-{secrets.token_hex(4)}"
    repo_with_symlink(git_server.root, name, link, secret)
    svc = start_service(service_config(None))

    stream = build_stream(svc.url, "git", git_server.git_url(name), "main")
    assert stream.final["phase"] == "failed", stream.final
    assert marker not in json.dumps(stream.events), "the host file is in the events"

    builds = wait_for(
        "the build in the history",
        lambda: [
            b
            for b in list_builds(svc.url, "git", git_server.git_url(name))
            if b["state"] == "failed"
        ],
        timeout=60,
    )
    assert marker not in json.dumps(builds), "the host file is in the history"
    log = call(f"{svc.url}/api/builds/{builds[0]['id']}/log")
    assert log.status == 200 and log.text, log
    assert marker not in log.text, "the host file is in the build log"


# --- who fetches and detects -----------------------------------------------------------------


# Not the builder image's own user (1000): the option is what decides.
SANDBOX_UID = 4242


def test_fetch_and_detection_run_unprivileged_without_the_docker_socket(
    start_service, registry, docker_client, git_server
):
    name = f"sandbox-who-{secrets.token_hex(4)}"
    make_repo(git_server.root, name, dockerfile_repo_files(secrets.token_hex(6)))
    svc = start_service(service_config(registry, f"c.DockerBuilder.sandbox_uid = {SANDBOX_UID}"))

    seen: dict[str, dict[str, Any]] = {}
    done = threading.Event()

    def watch() -> None:
        # The sandbox lives for the fetch and detection only: look often.
        while not done.is_set():
            for container in docker_client.containers.list(
                filters={"label": "binderbuild.role=build-sandbox"}
            ):
                if name in container.labels.get("binderbuild.image", ""):
                    try:
                        seen.setdefault(
                            container.id, docker_client.api.inspect_container(container.id)
                        )
                    except Exception:  # gone between list and inspect
                        pass
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        created = post_build(svc.url, f"{quote(git_server.git_url(name), safe='')}/main")
        assert created.status == 201, created.text
        build_id = created.json()["id"]
        status = wait_for(
            "the build to finish",
            lambda: (
                body
                if (body := call(f"{svc.url}/api/builds/{build_id}").json())["state"]
                not in ("queued", "running")
                else None
            ),
            timeout=300,
        )
    finally:
        done.set()
        watcher.join(10)

    assert status["state"] == "succeeded", status
    assert seen, "no sandbox container ran the fetch and detection"
    for attrs in seen.values():
        config, host = attrs["Config"], attrs["HostConfig"]
        assert config["User"] == f"{SANDBOX_UID}:{SANDBOX_UID}", config["User"]
        assert host["NetworkMode"] == "none"
        assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd")
        assert not host["Privileged"]
        assert "no-new-privileges" in (host.get("SecurityOpt") or [])
        assert host["ReadonlyRootfs"] is True
        assert host["Memory"] > 0 and (host.get("PidsLimit") or 0) > 0
        mounts = attrs["Mounts"]
        for mount in mounts:
            assert "docker.sock" not in mount["Source"], mount
            assert mount["Type"] in ("bind", "tmpfs"), mount
        binds = [m for m in mounts if m["Type"] == "bind"]
        # Its own work directory (written) and the egress socket (read-only).
        assert len(binds) <= 2, binds
        assert all(m["Source"].startswith(tempfile.gettempdir()) for m in binds), binds
        assert [m for m in binds if m["RW"]] and all(
            "binderbuild-" in m["Source"] for m in binds
        ), binds
        assert not any("DOCKER" in e.split("=", 1)[0] for e in config["Env"]), config["Env"]
        assert not any("REGISTRY_CREDENTIALS" in e for e in config["Env"]), config["Env"]


def test_the_sandbox_uid_is_never_root():
    from traitlets import TraitError

    from binderbuild.builders import sandbox
    from binderbuild.builders.docker import DockerBuilder

    with pytest.raises(TraitError, match="positive"):
        DockerBuilder(sandbox_uid=0)
    assert DockerBuilder().sandbox_uid == sandbox.SANDBOX_UID == 1000
    with pytest.raises(ValueError, match="root"):
        sandbox.container_args(
            image="i",
            r2d_args=[],
            env={},
            work_dir="/w",
            egress_dir=None,
            network="none",
            memory_limit=1,
            pids_limit=1,
            image_name="x",
            uid=0,
        )
