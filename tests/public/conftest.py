"""The public single machine (issue 17): one HTTPS origin, units, backup.

Everything runs for real and on loopback: scripts/install.sh writes the
systemd unit into a temporary directory, and ``PublicStack`` runs exactly
the unit's command line (``ExecStart``, its ``Environment=`` and
``EnvironmentFile=``, ``WorkingDirectory=``), as systemd would: run.sh with
the registry, configurable-http-proxy, JupyterHub and binderbuild. The
public mode listens on 127.0.0.2 with a certificate from a test CA made
here with ``cryptography``; every internal part stays on 127.0.0.1 (or the
servers' Docker network). All ports are free ports picked at start.

Chromium trusts the test certificate through
``--ignore-certificate-errors-spki-list`` (the SHA-256 of the certificate's
public key): it needs no NSS database and trusts exactly this key, nothing
else. Python clients trust the test CA itself (``ssl`` context with it as
the only CA).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import os
import shlex
import signal
import ssl
import string
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import escapism
import pytest

from tests.realservices import free_port

ROOT = Path(__file__).resolve().parents[2]
PUBLIC_IP = "127.0.0.2"
STOP_GRACE = 3


# ------------------------------------------------------------ test CA


@dataclass(frozen=True)
class CertAuthority:
    ca_cert: Path
    cert: Path
    key: Path
    spki_sha256: str  # base64 SHA-256 of the server certificate's public key

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_cert))
        return ctx


def make_test_ca(directory: Path, ip: str = PUBLIC_IP) -> CertAuthority:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "binderbuild test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = CertAuthority(
        directory / "ca.crt", directory / "server.crt", directory / "server.key", ""
    )
    paths.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths.key.chmod(0o600)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return CertAuthority(
        paths.ca_cert,
        paths.cert,
        paths.key,
        base64.b64encode(hashlib.sha256(spki).digest()).decode(),
    )


# ------------------------------------------------------------ the unit, and running it


@dataclass
class Unit:
    path: Path
    exec_start: list[str]
    environment: dict[str, str]
    environment_files: list[Path]
    working_directory: Path
    settings: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, path: Path) -> Unit:
        settings: dict[str, list[str]] = {}
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith(("#", ";", "[")):
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
        env: dict[str, str] = {}
        for item in settings.get("Environment", []):
            for word in shlex.split(item):
                k, _, v = word.partition("=")
                env[k] = v
        (exec_start,) = settings["ExecStart"]
        (workdir,) = settings["WorkingDirectory"]
        return cls(
            path=path,
            exec_start=shlex.split(exec_start),
            environment=env,
            environment_files=[Path(p.lstrip("-")) for p in settings.get("EnvironmentFile", [])],
            working_directory=Path(workdir),
            settings=settings,
        )

    def full_environment(self) -> dict[str, str]:
        """The environment systemd gives ExecStart: its own (PATH) plus the
        unit's, EnvironmentFile= last (it wins, as in systemd)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERBUILD_")}
        env.pop("JUPYTERHUB_API_TOKEN", None)
        env.update(self.environment)
        for path in self.environment_files:
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and "=" in line:
                    k, _, v = line.partition("=")
                    env[k.strip()] = v.strip()
        return env


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.raw_headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class PublicStack:
    """The stack of the installed unit, run as systemd would run it."""

    def __init__(self, base: Path, ca: CertAuthority, allowed_git: str) -> None:
        self.base = base
        self.ca = ca
        self.unit_dir = base / "units"
        self.config_dir = base / "etc"
        self.state = base / "state"
        self.port = free_port()
        self.hub_port = free_port()
        self.hub_api_port = free_port()
        self.proxy_api_port = free_port()
        self.registry_port = free_port()
        self.public_port = free_port(PUBLIC_IP)
        self.http_port = free_port(PUBLIC_IP)
        self.origin = f"https://{PUBLIC_IP}:{self.public_port}"
        self.allowed_git = allowed_git
        self.output = base / "unit-output.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.unit: Unit | None = None
        self.users: set[str] = set()  # hub users of launches, for the clean-up

    # -- install and run
    def install(self, checkout: Path = ROOT, **extra: str) -> Unit:
        settings: dict[str, object] = {
            **extra,
            "BINDERBUILD_PORT": self.port,
            "BINDERBUILD_HUB_PORT": self.hub_port,
            "BINDERBUILD_HUB_API_PORT": self.hub_api_port,
            "BINDERBUILD_PROXY_API_PORT": self.proxy_api_port,
            "BINDERBUILD_REGISTRY_PORT": self.registry_port,
            "BINDERBUILD_STOP_GRACE": STOP_GRACE,
            "BINDERBUILD_HSTS": 600,
        }
        args = [
            "bash",
            str(checkout / "scripts" / "install.sh"),
            "--no-setup",
            "--no-start",
            "--unit-dir",
            str(self.unit_dir),
            "--config-dir",
            str(self.config_dir),
            "--state",
            str(self.state),
            "--public",
            self.origin,
            "--listen",
            PUBLIC_IP,
            "--tls-cert",
            str(self.ca.cert),
            "--tls-key",
            str(self.ca.key),
            "--http-port",
            str(self.http_port),
        ]
        for key, value in settings.items():
            args += ["--set", f"{key}={value}"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        config = self.config_dir / "config.py"
        if self.allowed_git not in config.read_text():
            with config.open("a") as f:
                f.write(
                    "# the test's git server, on loopback\n"
                    f"c.BinderBuild.allowed_internal_networks.append({self.allowed_git!r})\n"
                )
        self.unit = Unit.parse(self.unit_dir / "binderbuild.service")
        return self.unit

    def start(self) -> None:
        assert self.unit is not None, "install first"
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                self.unit.exec_start,
                env=self.unit.full_environment(),
                cwd=self.unit.working_directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the unit's command exited:\n{self.logs()}"
            if self._answers("/versions") and self._answers("/jupyter/hub/api/"):
                return
            time.sleep(0.5)
        raise AssertionError(f"the stack did not answer on {self.origin}:\n{self.logs()}")

    def stop(self) -> None:
        """As systemd stops the unit (KillMode=mixed): SIGTERM to the main
        process, then whatever is left of its session is killed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        # The registry runs in its own session (services.sh): what this
        # stack started, by its pid file.
        pidfile = self.state / "run" / "registry.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass

    def pid(self, name: str) -> int:
        path = self.state / "singlemachine" / "run" / f"{name}.pid"
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            return 0

    def text(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""

    def logs(self) -> str:
        return self.text()[-8000:]

    # -- HTTPS clients of the public origin
    def _answers(self, path: str) -> bool:
        try:
            return self.get(path, timeout=3).status == 200
        except OSError:
            return False

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 30,
    ) -> Response:
        conn = http.client.HTTPSConnection(
            PUBLIC_IP, self.public_port, context=self.ca.context(), timeout=timeout
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.getheaders()
            return Response(resp.status, {k.lower(): v for k, v in raw}, resp.read(), raw)
        finally:
            conn.close()

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> Response:
        return self.request("GET", path, headers, timeout=timeout)

    def events(
        self, path: str, headers: dict[str, str] | None = None, timeout: float = 600
    ) -> list[dict[str, Any]]:
        """The events of a stream, read to its end."""
        conn = http.client.HTTPSConnection(
            PUBLIC_IP, self.public_port, context=self.ca.context(), timeout=timeout
        )
        try:
            conn.request("GET", path, headers={"Accept": "text/event-stream", **(headers or {})})
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            events = []
            for raw in resp:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("phase") in ("ready", "failed"):
                        break
            for event in events:
                if event.get("phase") == "ready":
                    self.users.add(event["url"].split("/jupyter/user/", 1)[1].split("/")[0])
            return events
        finally:
            conn.close()

    @property
    def service_token(self) -> str:
        return (self.state / "singlemachine" / "binder-service-token").read_text().strip()

    def hub_api(self, method: str, path: str) -> Response:
        return self.request(
            method, f"/jupyter/hub/api/{path}", {"Authorization": f"token {self.service_token}"}
        )

    def launch_path(self, repo_url: str, ref: str = "main") -> str:
        return f"/build/git/{quote(repo_url, safe='')}/{ref}"

    def hub_users(self) -> set[str]:
        try:
            return {u["name"] for u in self.hub_api("GET", "users").json()}
        except (OSError, ValueError, KeyError, TypeError):
            return set()


def server_container_name(user: str) -> str:
    """DockerSpawner's container name for a user's default server under
    run.sh's prefix ``binder`` (its escaping: lowercase letters and digits
    kept, anything else ``-XX``)."""
    safe = set(string.ascii_lowercase + string.digits)
    return "binder-" + escapism.escape(user, safe=safe, escape_char="-").lower()


def remove_servers(stack: PublicStack, docker_client: Any) -> None:
    """Stops the stack and removes its users' server containers (the state
    goes with the temporary directory, so the hub need not stop them)."""
    if stack.proc is not None and stack.proc.poll() is None:
        stack.users |= stack.hub_users()
    stack.stop()
    names = {server_container_name(user) for user in stack.users}
    for container in docker_client.containers.list(all=True):
        if container.name in names:
            try:
                container.remove(force=True)
            except Exception:
                pass


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return make_test_ca(tmp_path_factory.mktemp("test-ca"))


@pytest.fixture(scope="module")
def public_stack(
    tmp_path_factory: pytest.TempPathFactory,
    test_ca: CertAuthority,
    git_server: Any,
    docker_client: Any,
) -> Iterator[PublicStack]:
    stack = PublicStack(
        tmp_path_factory.mktemp("public"), test_ca, f"127.0.0.1:{git_server.git_port}"
    )
    stack.install()
    stack.start()
    yield stack
    remove_servers(stack, docker_client)
    prefix = f"127.0.0.1:{stack.registry_port}/"
    for image in docker_client.images.list():
        if any(tag.startswith(prefix) for tag in image.tags):
            try:
                docker_client.images.remove(image.id, force=True)
            except Exception:
                pass
