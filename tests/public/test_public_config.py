"""Public mode's pieces that need no running stack: the hub's configuration
for a path under one origin, and the HTTP redirect's answer to a forged or
absolute-form request (scripts/https_redirect.py, run for real)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from binderbuild.hubconfig import HubConfig, render
from binderbuild.hubconfig.__main__ import main as hubconfig_main
from tests.realservices import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_hub_config_behind_one_origin(tmp_path: Path) -> None:
    out = tmp_path / "jupyterhub_config.py"
    code = hubconfig_main(
        [
            "--out", str(out), "--data-dir", str(tmp_path / "hub"),
            "--token-file", str(tmp_path / "token"), "--image-prefix", "x-",
            "--docker-network", "host",
            "--base-url", "jupyter", "--public-url", "https://binder.example.org/jupyter/",
        ]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "c.JupyterHub.base_url = '/jupyter/'" in text
    assert "c.JupyterHub.public_url = 'https://binder.example.org/jupyter/'" in text
    # The proxy's API stays on loopback whatever the public address.
    assert "c.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:8001'" in text


def test_no_public_url_without_public_mode(tmp_path: Path) -> None:
    cfg = HubConfig(
        data_dir=tmp_path, api_token="t" * 32, image_prefixes=["x-"], docker_network="host"
    )
    assert "c.JupyterHub.public_url" not in render(cfg)
    assert cfg.public_url == "http://127.0.0.1:8000/"
    public = HubConfig(
        data_dir=tmp_path, api_token="t" * 32, image_prefixes=["x-"], docker_network="host",
        base_url="/jupyter/", external_url="https://b.example/jupyter/",
    )  # fmt: skip
    assert public.public_url == "https://b.example/jupyter/"


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        return data


def test_http_redirect_names_only_the_configured_origin() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "https_redirect.py"), "--listen", "127.0.0.1",
         "--port", str(port), "--origin", "https://binder.example.org"],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "redirect did not start"
                time.sleep(0.1)
        cases = {
            b"GET /v2/gh/a/b/HEAD?x=1 HTTP/1.1\r\nHost: evil.example\r\n\r\n":
                "https://binder.example.org/v2/gh/a/b/HEAD?x=1",
            b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\n\r\n":
                "https://binder.example.org/steal",
            b"GET //evil.example/x HTTP/1.1\r\nHost: a\r\n\r\n":
                "https://binder.example.org/evil.example/x",
            b"POST /api/builds HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n":
                "https://binder.example.org/api/builds",
        }  # fmt: skip
        for request, location in cases.items():
            answer = _raw(port, request).decode()
            assert answer.startswith("HTTP/1.0 301") or answer.startswith("HTTP/1.1 301"), answer
            assert f"\r\nLocation: {location}\r\n" in answer, answer
    finally:
        proc.terminate()
        proc.wait(10)
