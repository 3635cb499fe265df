"""Hostile repositories against the real service, engine and git server.

Every test here is an attack a stranger can send to a public Binder as a
launch URL. The "internal" service they aim at listens on 127.0.0.2 (loopback
too on Linux) and records every request; the service allows only 127.0.0.1
(the test git server), so 127.0.0.2 plays the cloud metadata service, the
registry or the hub. A test passes only if the build fails with a message
that says why *and* the internal service saw nothing.
"""

from __future__ import annotations

import http.client
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import service_config
from tests.integration.attack_repos import build_git, repo_with_submodule
from tests.realservices import dockerfile_repo_files, make_repo

pytestmark = [pytest.mark.docker]

INTERNAL_IP = "127.0.0.2"
ONLY_THE_GIT_SERVER = "c.BinderBuild.allowed_internal_networks = ['127.0.0.1/32']"


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        body = b"internal secret\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


class _Redirector(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(302)
        self.send_header("Location", f"{self.server.target}{self.path}")  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _serve(handler: type[BaseHTTPRequestHandler], host: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, 0), handler)
    server.paths = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def internal() -> Iterator[ThreadingHTTPServer]:
    """The service builds must never reach, recording what reaches it."""
    try:
        server = _serve(_Recorder, INTERNAL_IP)
    except OSError as exc:
        pytest.fail(f"cannot listen on {INTERNAL_IP} (loopback): {exc}", pytrace=False)
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def guarded(start_service, docker_client):
    """binderbuild that may fetch from the git server (127.0.0.1) only."""
    return start_service(service_config(None, ONLY_THE_GIT_SERVER))


def _internal_url(internal: ThreadingHTTPServer, path: str) -> str:
    return f"http://{INTERNAL_IP}:{internal.server_address[1]}{path}"


def test_submodule_pointing_at_an_internal_address_is_not_fetched(guarded, git_server, internal):
    name = f"sec-submodule-{secrets.token_hex(4)}"
    repo_with_submodule(git_server.root, name, _internal_url(internal, "/secret.git"))

    final, log = build_git(guarded.url, git_server.git_url(name), "main")

    assert internal.paths == [], f"the build reached the internal service: {internal.paths}"
    assert final["phase"] == "failed", final
    assert "internal address" in final["message"] + log, final["message"]


def test_clone_redirect_to_an_internal_address_is_not_followed(guarded, internal):
    # The repository host is allowed; it answers every request with a
    # redirect to the internal service. A full SHA skips ls-remote, so the
    # first fetch is repo2docker's clone.
    redirector = _serve(_Redirector, "127.0.0.1")
    redirector.target = f"http://{INTERNAL_IP}:{internal.server_address[1]}"  # type: ignore[attr-defined]
    try:
        clone_url = f"http://127.0.0.1:{redirector.server_address[1]}/innocent.git"
        final, log = build_git(guarded.url, clone_url, "a" * 40)
    finally:
        redirector.shutdown()
        redirector.server_close()

    assert internal.paths == [], f"the clone followed a redirect inside: {internal.paths}"
    assert final["phase"] == "failed", final
    assert "internal address" in final["message"] + log, final["message"]


def test_dockerfile_add_from_an_internal_url_is_refused(guarded, git_server, internal):
    files = dockerfile_repo_files(secrets.token_hex(6))
    files["Dockerfile"] = files["Dockerfile"].replace(
        "USER root\n",
        f"USER root\nADD {_internal_url(internal, '/latest/meta-data/iam')} /tmp/stolen\n",
        1,
    )
    assert "ADD http://" in files["Dockerfile"]
    name = f"sec-add-{secrets.token_hex(4)}"
    make_repo(git_server.root, name, files)

    final, log = build_git(guarded.url, git_server.git_url(name), "main")

    assert internal.paths == [], f"the Docker daemon fetched {internal.paths}"
    assert final["phase"] == "failed", final
    assert "RUN" in final["message"] and "ADD" in final["message"], final["message"]


def test_oversized_request_bodies_are_refused_before_they_are_read(guarded):
    # Headers announce 50 MB (under Tornado's default limit) and no body
    # follows: a server that would buffer it waits; one with a small limit
    # answers 400 at once.
    host, port = guarded.url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n"
        )
        sock.settimeout(5)
        try:
            answer = sock.recv(4096)
        except TimeoutError:
            answer = b""
    assert answer.startswith(b"HTTP/1.1 400"), f"no early refusal: {answer[:100]!r}"
    # And the service is still there for everyone else.
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/versions")
    assert conn.getresponse().status == 200
