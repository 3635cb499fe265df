"""The JupyterHub configuration of binderbuild's embedded (single-machine) hub.

``render(HubConfig(...))`` returns the text of a ``jupyterhub_config.py``;
``python -m binderbuild.hubconfig --help`` writes one from the command line
(scripts/run.sh and the tests use it). The file is plain JupyterHub
configuration, meant to be read: an operator who outgrows it copies it and
edits it. What it sets up:

- the hub and its proxy (configurable-http-proxy, started by the hub) on
  loopback, with the hub's database, cookie secret and proxy pid file in
  ``data_dir``;
- ``binderbuild.spawner.BinderDockerSpawner`` on the local Docker engine,
  accepting only images under binderbuild's image prefix; servers run on an
  internal Docker network of their own (``binderbuild-servers``, see
  :mod:`binderbuild.hubconfig.network`) as uid 1000 with no capabilities,
  ``no-new-privileges`` and memory, CPU and PID limits. The hub's own API
  listens on the host's address on that network (``hub_ip``); the proxy, its
  API, the registry and binderbuild stay on loopback, out of the servers'
  reach. ``docker_network = "host"`` is the older, unsafe mode
  (servers share the host's network and its loopback services);
- a ``binder`` service whose API token binderbuild uses, with exactly the
  scopes a launcher needs;
- jupyterhub-idle-culler as a hub-managed service: idle servers are stopped
  and (anonymous deployments) their temporary users deleted;
- ``slow_spawn_timeout = 0``: starting a server answers at once and every
  spawn message, including failures, arrives on the progress stream that
  binderbuild relays.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from binderbuild.hubconfig.auth import Login, render_login, service_oauth, user_role

# The internal Docker network of the servers (binderbuild.hubconfig.network
# makes it), and the name of the unsafe opt-in.
DEFAULT_SERVER_NETWORK = "binderbuild-servers"
HOST_NETWORK = "host"

# What binderbuild's launcher does with its service token: create and delete
# temporary users, start/stop/follow their servers, create the per-launch
# server token, and list active servers for quotas.
BINDER_SERVICE_SCOPES = (
    "admin:users",
    "admin:servers",
    "tokens",
    "access:servers",
    "list:users",
    "read:users",
    "read:servers",
)

# What jupyterhub-idle-culler needs (admin:users only to delete users).
CULLER_SCOPES = (
    "list:users",
    "read:users:activity",
    "read:servers",
    "delete:servers",
    "admin:users",
)


@dataclass
class HubConfig:
    data_dir: Path
    api_token: str  # binderbuild's service token
    image_prefixes: list[str]
    proxy_command: str = "configurable-http-proxy"
    ip: str = "127.0.0.1"
    port: int = 8000  # public: the proxy, where users' browsers go
    hub_port: int = 8081  # the hub's own API (binderbuild's hub_url_local)
    proxy_api_port: int = 8001
    base_url: str = "/"
    # The URL browsers use for the hub when it sits behind one public origin
    # (scripts/run.sh --public): e.g. https://binder.example.org/jupyter/.
    # Sets JupyterHub.public_url, so the hub's own links, redirects and Secure
    # cookies follow it, never a request's Host header. Empty: http://ip:port.
    external_url: str = ""
    # Where servers run: an internal bridge network (ensure_server_network
    # makes it), or "host", the unsafe opt-in (docs/security.md).
    docker_network: str = DEFAULT_SERVER_NETWORK
    # Where the hub's API listens and servers reach it: the host's address on
    # docker_network (its gateway). Empty: `ip` (only right with "host").
    hub_ip: str = ""
    # Limits of every server (BinderDockerSpawner's defaults, written out).
    mem_limit: str = "2G"
    cpu_limit: float = 1.0
    pids_limit: int = 512
    # "user:password" for the engine's pulls of server images (the registry's
    # credentials); read by the hub when it starts, never given to servers.
    registry_credentials_file: str = ""
    pull_policy: str = "ifnotpresent"
    container_prefix: str = "binder"
    start_timeout: int = 120
    http_timeout: int = 60
    cull_timeout: int = 600  # idle seconds before a server is culled; 0: no culler
    cull_every: int = 60
    cull_max_age: int = 0
    auth_enabled: bool = False
    # How people sign in with auth_enabled (binderbuild.hubconfig.auth):
    # NativeLogin, OAuthLogin, or None (the hub's default, set in `extra`).
    login: Login | None = None
    allow_named_servers: bool = True
    # Signed-in servers only (docs/persistent-servers.md): each keeps its home
    # in storage under storage_dir (default data_dir/storage) of storage_limit
    # bytes ("": unlimited); profiles a user may pick (BinderSpawnerMixin.profiles).
    persistent_storage: bool = True
    storage_dir: str = ""
    storage_limit: str = ""
    profiles: list[dict[str, object]] = field(default_factory=list)
    service_name: str = "binder"
    service_url: str = ""  # binderbuild's URL, shown in the hub's service list
    python: str = field(default_factory=lambda: sys.executable)
    extra: str = ""  # appended verbatim

    @property
    def public_url(self) -> str:
        return self.external_url or f"http://{self.ip}:{self.port}{self.base_url}"

    @property
    def host_network(self) -> bool:
        return self.docker_network == HOST_NETWORK

    @property
    def hub_listen_ip(self) -> str:
        return self.hub_ip or self.ip

    @property
    def hub_api_base(self) -> str:
        """The hub itself (binderbuild's hub_url_local)."""
        return f"http://{self.hub_listen_ip}:{self.hub_port}{self.base_url}"


def _is_loopback(ip: str) -> bool:
    return ip in ("localhost", "::1") or ip.startswith("127.")


def render(cfg: HubConfig) -> str:
    if not cfg.host_network and _is_loopback(cfg.hub_listen_ip):
        raise ValueError(
            f"servers on the Docker network {cfg.docker_network!r} cannot reach a hub on "
            f"{cfg.hub_listen_ip}: set hub_ip to the host's address on that network "
            "(binderbuild.hubconfig.network.ensure_server_network returns it)"
        )
    if cfg.hub_listen_ip in ("0.0.0.0", "::", ""):
        raise ValueError("the hub must not listen on every address: set hub_ip")
    data = Path(cfg.data_dir).resolve()
    culler: list[str] = []
    if cfg.cull_timeout > 0:
        culler = [
            cfg.python,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={cfg.cull_timeout}",
            f"--cull-every={cfg.cull_every}",
            # Anonymous Binder: temporary users go with their servers.
            # Signed in: users and their named servers stay (stopped, with
            # their storage) to be started again (docs/persistent-servers.md).
            f"--cull-users={'false' if cfg.auth_enabled else 'true'}",
            "--remove-named-servers=false",
        ]
        if cfg.cull_max_age > 0:
            culler.append(f"--max-age={cfg.cull_max_age}")
    service: dict[str, object] = {"name": cfg.service_name, "api_token": cfg.api_token}
    if cfg.service_url:
        service["url"] = cfg.service_url
        service["display"] = True
        if cfg.auth_enabled:
            # binderbuild's pages log people in through the hub (OAuth).
            service.update(service_oauth(cfg.service_name, cfg.service_url))
    services: list[dict[str, object]] = [service]
    roles: list[dict[str, object]] = [
        {
            "name": f"{cfg.service_name}-launcher",
            "scopes": list(BINDER_SERVICE_SCOPES),
            "services": [cfg.service_name],
        }
    ]
    if cfg.auth_enabled and cfg.service_url:
        roles.append(user_role(cfg.service_name))
    if culler:
        services.append({"name": "idle-culler", "command": culler})
        roles.append(
            {"name": "idle-culler", "scopes": list(CULLER_SCOPES), "services": ["idle-culler"]}
        )
    authenticator = "jupyterhub.auth.NullAuthenticator" if not cfg.auth_enabled else None

    lines = [
        "# JupyterHub configuration written by binderbuild.hubconfig.",
        "# Regenerate it with `python -m binderbuild.hubconfig` rather than editing it,",
        "# or copy it and make it your own (docs/operators.md).",
        "",
        "# --- where the hub and its proxy listen ---",
        f"c.JupyterHub.ip = {cfg.ip!r}",
        f"c.JupyterHub.port = {cfg.port}",
        f"c.JupyterHub.base_url = {cfg.base_url!r}",
        # The hub's API: servers must reach it (token checks, activity), so it
        # listens on the host's address on the servers' network; nothing else
        # of this machine is reachable from there.
        f"c.JupyterHub.hub_ip = {cfg.hub_listen_ip!r}",
        f"c.JupyterHub.hub_port = {cfg.hub_port}",
        f"c.JupyterHub.hub_connect_ip = {cfg.hub_listen_ip!r}",
        f"c.ConfigurableHTTPProxy.api_url = 'http://{cfg.ip}:{cfg.proxy_api_port}'",
        f"c.ConfigurableHTTPProxy.command = [{cfg.proxy_command!r}]",
        # A proxy left running by a hub that was killed is found and replaced
        # through this pid file on the next start.
        f"c.ConfigurableHTTPProxy.pid_file = {str(data / 'jupyterhub-proxy.pid')!r}",
        "",
        "# --- state ---",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(data / 'jupyterhub.sqlite')!r}",
        f"c.JupyterHub.cookie_secret_file = {str(data / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.pid_file = {str(data / 'jupyterhub.pid')!r}",
        "c.JupyterHub.cleanup_servers = True",
        *(
            ["# The one public origin (docs/public-single-machine.md).",
             f"c.JupyterHub.public_url = {cfg.external_url!r}"]
            if cfg.external_url
            else []
        ),
        "",
        "# --- launches ---",
        "c.JupyterHub.spawner_class = 'binderbuild.spawner.BinderDockerSpawner'",
        f"c.JupyterHub.allow_named_servers = {cfg.allow_named_servers!r}",
        "# Answer POST /users/{name}/server at once; binderbuild relays the progress stream.",
        "c.JupyterHub.tornado_settings = {'slow_spawn_timeout': 0}",
        f"c.BinderSpawnerMixin.allowed_image_prefixes = {list(cfg.image_prefixes)!r}",
        f"c.BinderSpawnerMixin.auth_enabled = {cfg.auth_enabled!r}",
        f"c.DockerSpawner.network_name = {cfg.docker_network!r}",
        *(
            [
                "# UNSAFE for public use: servers share the host's network and reach",
                "# every service it binds to loopback (docs/security.md).",
                "c.BinderDockerSpawner.allow_host_network = True",
            ]
            if cfg.host_network
            else ["# The proxy reaches each server at its address on that network."]
        ),
        "c.DockerSpawner.use_internal_ip = True",
        "c.DockerSpawner.remove = True",
        f"c.DockerSpawner.prefix = {cfg.container_prefix!r}",
        f"c.DockerSpawner.pull_policy = {cfg.pull_policy!r}",
        f"c.Spawner.start_timeout = {cfg.start_timeout}",
        f"c.Spawner.http_timeout = {cfg.http_timeout}",
        "# Every server: uid 1000, no capabilities, no-new-privileges (always), and:",
        f"c.BinderDockerSpawner.mem_limit = {cfg.mem_limit!r}",
        f"c.BinderDockerSpawner.cpu_limit = {float(cfg.cpu_limit)!r}",
        f"c.BinderDockerSpawner.pids_limit = {int(cfg.pids_limit)}",
        "",
        "# --- services: binderbuild, idle culler ---",
        f"c.JupyterHub.services = {services!r}",
        f"c.JupyterHub.load_roles = {roles!r}",
    ]
    if authenticator:
        lines += [
            "",
            "# Anonymous Binder: nobody logs in; binderbuild creates temporary users.",
            f"c.JupyterHub.authenticator_class = {authenticator!r}",
            "c.Authenticator.any_allow_config = True  # no logins, no allow list needed",
        ]
    if cfg.auth_enabled:
        lines += [
            "",
            "# --- signed-in servers: storage that survives stop, start and rebuilds ---",
            f"c.BinderSpawnerMixin.persistent_storage = {cfg.persistent_storage!r}",
            f"c.BinderDockerSpawner.storage_dir = {cfg.storage_dir or str(data / 'storage')!r}",
            f"c.BinderSpawnerMixin.storage_limit = {cfg.storage_limit!r}",
            f"c.BinderSpawnerMixin.profiles = {list(cfg.profiles)!r}",
        ]
    if cfg.login is not None and not cfg.auth_enabled:
        raise ValueError("a sign-in method (login) needs auth_enabled")
    if cfg.auth_enabled:
        lines += render_login(cfg.login, public_url=cfg.public_url)
    if cfg.registry_credentials_file:
        lines += [
            "",
            "# The registry's credentials, for the engine's pulls only (not the servers').",
            f"with open({str(cfg.registry_credentials_file)!r}) as _f:",
            "    _user, _, _password = _f.read().strip().partition(':')",
            "c.BinderDockerSpawner.registry_username = _user",
            "c.BinderDockerSpawner.registry_password = _password",
            "del _f, _user, _password",
        ]
    if cfg.extra:
        lines += ["", "# --- extra ---", cfg.extra]
    return "\n".join(lines) + "\n"


def write(cfg: HubConfig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.data_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(render(cfg))
    # The file holds the service token.
    path.chmod(0o600)
    return path
