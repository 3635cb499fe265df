"""A real JupyterHub for tests: hub + configurable-http-proxy + BinderDockerSpawner.

``HubService`` writes a config with ``binderbuild.hubconfig`` (the same
generator the single-machine mode uses), starts ``jupyterhub`` as its own
process on free loopback ports and talks to it over its REST API with the
``binder`` service token. ``stop()`` then ``start()`` restarts it with the
same ports, database and token, like an operator restarting the hub.

Containers are named ``<container_prefix>-<user>``; the prefix is random per
instance so a test can find (and the fixture remove) exactly its own.

Servers run as in the single-machine mode: on the project's internal Docker
network (``binderbuild-servers``, created here when missing), the hub's API
on the host's address on that network, everything else on loopback.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

from binderbuild.hubconfig import HOST_NETWORK, HubConfig, write
from binderbuild.hubconfig.network import DEFAULT_SERVER_NETWORK, ensure_server_network
from tests.realservices import free_port

ROOT = Path(__file__).resolve().parent.parent
PROXY_COMMAND = ROOT / "var" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HubUnavailable(AssertionError):
    pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class HubService:
    def __init__(
        self,
        workdir: Path,
        image_prefixes: list[str],
        *,
        cull_timeout: int = 0,
        cull_every: int = 60,
        auth_enabled: bool = False,
        extra: str = "",
        start_timeout: int = 60,
        pull_policy: str = "never",
        registry_credentials_file: Path | None = None,
        network: str = DEFAULT_SERVER_NETWORK,
    ) -> None:
        if not PROXY_COMMAND.exists():
            raise HubUnavailable(
                f"configurable-http-proxy is missing at {PROXY_COMMAND}: run scripts/setup.sh"
            )
        if not Path(_bin("jupyterhub")).exists():
            raise HubUnavailable("jupyterhub is not installed in the venv: run scripts/setup.sh")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(32)
        self.container_prefix = f"bbhub-{secrets.token_hex(3)}"
        # The host's address on the servers' network: the hub's API listens
        # there (servers need it) and binderbuild's hub_url_local points there.
        hub_ip = "" if network == HOST_NETWORK else ensure_server_network(network)
        self.config = HubConfig(
            data_dir=self.workdir,
            api_token=self.token,
            image_prefixes=list(image_prefixes),
            proxy_command=str(PROXY_COMMAND),
            port=free_port(),
            hub_port=free_port(hub_ip or "127.0.0.1"),
            proxy_api_port=free_port(),
            docker_network=network,
            hub_ip=hub_ip,
            registry_credentials_file=str(registry_credentials_file or ""),
            container_prefix=self.container_prefix,
            pull_policy=pull_policy,
            cull_timeout=cull_timeout,
            cull_every=cull_every,
            auth_enabled=auth_enabled,
            start_timeout=start_timeout,
            http_timeout=30,
            python=sys.executable,
            extra=extra,
        )
        self.config_path = write(self.config, self.workdir / "jupyterhub_config.py")
        self.log_path = self.workdir / "jupyterhub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    # --- addresses --------------------------------------------------------------

    @property
    def url(self) -> str:
        """Public URL (the proxy): binderbuild's hub_url, where browsers go."""
        return self.config.public_url

    @property
    def local_url(self) -> str:
        """The hub itself: binderbuild's hub_url_local."""
        return self.config.hub_api_base

    @property
    def api_url(self) -> str:
        return self.local_url + "hub/api/"

    def binderbuild_config(self) -> str:
        """Lines for a binderbuild config file that launch on this hub."""
        return (
            f"c.BinderBuild.hub_url = {self.url!r}\n"
            f"c.BinderBuild.hub_url_local = {self.local_url!r}\n"
            f"c.BinderBuild.hub_api_token = {self.token!r}\n"
        )

    # --- life cycle -------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> HubService:
        if self.running:
            return self
        env = dict(os.environ)
        env.pop("JUPYTERHUB_API_TOKEN", None)
        env.pop("JUPYTERHUB_API_URL", None)
        # The hub starts the proxy and the culler with this PATH.
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [_bin("jupyterhub"), "-f", str(self.config_path)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubUnavailable(
                    f"jupyterhub exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise HubUnavailable(f"jupyterhub did not answer within {timeout}s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        # Through the proxy: then both the hub and its proxy are up.
        for url in (self.api_url, self.url + "hub/api/"):
            try:
                with _OPENER.open(url, timeout=2) as resp:
                    if resp.status != 200:
                        return False
            except (urllib.error.URLError, OSError):
                return False
        return True

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, as an operator stopping the hub: it stops its servers and proxy."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- REST API -------------------------------------------------------------------

    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        if data is None and method in ("POST", "PUT", "PATCH"):
            data = b""
        req = urllib.request.Request(
            self.api_url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"token {token or self.token}",
                "Content-Type": "application/json",
            },
        )
        try:
            with _OPENER.open(req, timeout=30) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def users(self) -> dict[str, dict[str, Any]]:
        status, data = self.api("GET", "users?include_stopped_servers=1")
        assert status == 200, (status, data)
        return {u["name"]: u for u in data}

    def user(self, name: str) -> dict[str, Any] | None:
        status, data = self.api("GET", f"users/{quote(name)}")
        return data if status == 200 else None

    def delete_user(self, name: str) -> None:
        self.api("DELETE", f"users/{quote(name)}/server")
        for _ in range(50):
            status, _ = self.api("DELETE", f"users/{quote(name)}")
            if status in (204, 404):
                return
            time.sleep(0.2)

    def containers(self, docker_client: Any, all: bool = True) -> list[Any]:
        """This hub's server containers (running or not)."""
        # Filtered by the engine: listing inspects each container it returns,
        # and one of another test going meanwhile would fail the list (404).
        prefix = self.container_prefix + "-"
        return [
            c
            for c in docker_client.containers.list(all=all, filters={"name": prefix})
            if c.name.startswith(prefix)
        ]

    def remove_containers(self, docker_client: Any) -> None:
        for container in self.containers(docker_client):
            try:
                container.remove(force=True)
            except Exception:
                pass
