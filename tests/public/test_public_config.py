"""Public mode's pieces that need no running stack: the hub's configuration
for a path under one origin, and the HTTP redirect's answer to a forged or
absolute-form request (scripts/https_redirect.py, run for real)."""

from __future__ import annotations

import os
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


def _run_sh(var: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERBUILD_")}
    env["BINDERBUILD_VAR"] = str(var)
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "run.sh"), "--no-setup", "--local-store", "--no-demo", *args],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_self_signed_certificate_for_trials_and_a_busy_public_port(tmp_path: Path) -> None:
    from cryptography import x509

    with socket.socket() as busy:
        busy.bind(("127.0.0.2", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run_sh(tmp_path, "--public", f"https://127.0.0.2:{port}", "--listen", "127.0.0.2")
    # Made before anything starts, then the busy public port stops the start.
    assert done.returncode != 0
    assert f"port {port} on 127.0.0.2 is in use" in done.stderr, done.stdout + done.stderr
    tls = tmp_path / "singlemachine" / "tls"
    cert = x509.load_pem_x509_certificate((tls / "selfsigned.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.2"]
    assert (tls / "selfsigned.key").stat().st_mode & 0o077 == 0
    assert "self-signed certificate for 127.0.0.2" in done.stdout


def test_public_mode_refuses_a_url_with_a_path(tmp_path: Path) -> None:
    done = _run_sh(tmp_path, "--public", "https://binder.example.org/binder/")
    assert done.returncode != 0
    assert "--public wants scheme://name[:port]" in done.stderr, done.stderr
