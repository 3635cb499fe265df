"""The hub side of a Binder launch: spawners that run the image binderbuild asks for.

This module runs inside JupyterHub, not in binderbuild: configure the hub with
``c.JupyterHub.spawner_class = "binderbuild.spawner.BinderDockerSpawner"``
(or mix ``BinderSpawnerMixin`` into another container spawner, e.g.
``class BinderKubeSpawner(BinderSpawnerMixin, KubeSpawner)``).

What the mixin does with the ``user_options`` of a launch (see
docs/launching.md):

- ``image``: the image to run. Only names starting with one of
  ``allowed_image_prefixes`` are accepted: a hub service token must not be
  enough to run arbitrary images on the hub's infrastructure.
- ``token``: sent with every anonymous launch except the start of a warm-pool
  server (its token is minted when it is handed out; refused with
  ``server_token_args``, which needs it at start). binderbuild's launcher created
  it as a hub API token of the launch's user, scoped to this one server, so
  the server (``jupyterhub-singleuser``) accepts it in an ``Authorization``
  header or as ``?token=`` on the first page load. With
  ``server_token_args`` it is also passed as the server's own token, for
  images whose command is a plain ``jupyter server`` / ``jupyter notebook``
  (BinderHub's unauthenticated mode).
- ``repo_url``, ``binder_ref_url``, ``binder_launch_host``, ``binder_request``,
  ``binder_persistent_request``: passed to the server's environment as
  ``BINDER_REPO_URL``, ``BINDER_REF_URL`` ... as BinderHub does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import socket
import string
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tornado import web
from traitlets import (
    Bool,
    Callable,
    Dict,
    Float,
    Integer,
    List,
    Unicode,
    Union,
    default,
    validate,
)
from traitlets.config import Configurable

try:  # JupyterHub >= 6: a policy refusal, logged without a traceback
    from jupyterhub.spawner import SpawnException
except ImportError:  # pragma: no cover - older hubs
    SpawnException = None

BINDER_ENV_FIELDS = (
    ("repo_url", "BINDER_REPO_URL"),
    ("binder_ref_url", "BINDER_REF_URL"),
    ("binder_launch_host", "BINDER_LAUNCH_HOST"),
    ("binder_request", "BINDER_REQUEST"),
    ("binder_persistent_request", "BINDER_PERSISTENT_REQUEST"),
)


def spawn_error(message: str, status: int = 500, refusal: bool = False) -> web.HTTPError:
    """An exception whose message JupyterHub relays verbatim in its progress
    stream ("Spawn failed: <message>"), so binderbuild can show the real reason.

    ``refusal``: a policy decision (bad image, missing token), which
    JupyterHub >= 6 logs and counts as such rather than as a hub error.
    """
    exc: web.HTTPError
    if refusal and SpawnException is not None:
        exc = SpawnException(message, reason="binder-policy", status_code=status)
    else:
        exc = web.HTTPError(status, "%s", message)
    exc.jupyterhub_message = message  # type: ignore[attr-defined]  # read by JupyterHub, not declared
    return exc


# Limits a profile (or a launch's user_options) may set.
RESOURCE_LIMITS = ("cpu_limit", "mem_limit", "storage_limit")


def _quantity(name: str, value: Any) -> float:
    """CPUs for cpu_limit, bytes for the others ('512M', '2G', a number)."""
    if name == "cpu_limit":
        return float(value)
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    from binderbuild.errors import ConfigError
    from binderbuild.units import parse_bytes

    try:
        return float(parse_bytes(str(value)))
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _show(name: str, amount: float) -> str:
    if name == "cpu_limit":
        return f"{amount:g} CPU"
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if amount >= size:
            return f"{amount / size:g}{unit}"
    return f"{amount:g} bytes"


class BinderSpawnerMixin(Configurable):
    """Turns a container spawner into a Binder spawner.

    The container spawner must have an ``image`` attribute that selects the
    image to run (DockerSpawner and KubeSpawner do).
    """

    # Provided by the spawner this is mixed into (a LoggingConfigurable).
    log: logging.Logger

    auth_enabled = Bool(
        False,
        config=True,
        help="""Authenticated Binder: servers belong to logged-in hub users, so no
        token is required in user_options and tokens in URLs are not enabled.""",
    )
    allowed_image_prefixes = List(
        Unicode(),
        config=True,
        help="""Only images whose name starts with one of these prefixes may be launched,
        e.g. ['registry.example.org/binder-']. Use binderbuild's image_prefix (with the
        registry host when a registry is used). Empty: every image is refused.""",
    )
    cors_allow_origin = Unicode(
        "",
        config=True,
        help="Access-Control-Allow-Origin of the spawned servers ('*': any origin).",
    )
    allow_token_in_url = Bool(
        True,
        config=True,
        help="""For anonymous launches, let the server accept its token as ?token= in the
        URL (JUPYTERHUB_ALLOW_TOKEN_IN_URL): Binder clients open the server that way.""",
    )
    server_token_args = Bool(
        False,
        config=True,
        help="""Also pass the launch token and base URL as jupyter server command-line
        arguments (--ServerApp.token ...), for images whose command is a plain
        `jupyter server`/`jupyter notebook` rather than jupyterhub-singleuser.""",
    )

    persistent_storage = Bool(
        False,
        config=True,
        help="""With auth_enabled: every server of a signed-in user keeps its home directory
        in storage of its own that survives stop, start and a rebuild of its image; the
        repository's files from the image are copied into it without overwriting the
        user's (docs/persistent-servers.md). Anonymous servers never get storage.""",
    )
    storage_limit = Unicode(
        "",
        config=True,
        help="""Size of each server's persistent storage, e.g. '1G' (a profile's
        storage_limit wins). Writes past it fail with "No space left on device". Empty:
        no size limit (BinderDockerSpawner: a plain directory instead of a
        loop-mounted ext4 image).""",
    )
    profiles = List(
        Dict(),
        config=True,
        help="""Resource profiles a user may pick at launch (user_options 'profile'):
        [{'name': 'small', 'display_name': 'Small: 1 CPU, 2 GB', 'cpu_limit': 1,
        'mem_limit': '2G', 'storage_limit': '1G', 'default': True}, ...]. A launch asking
        for an unknown profile, or for more cpu_limit / mem_limit / storage_limit than its
        profile (or, without profiles, than this spawner's own limits) is refused. Empty:
        no profiles, the spawner's limits apply to every server.""",
    )

    # --- policy --------------------------------------------------------------

    def check_binder_image(self, image: Any) -> str:
        """The image name if this hub may run it; raises a spawn refusal otherwise."""
        if not isinstance(image, str) or not image or image != image.strip():
            raise spawn_error(f"Invalid image name {image!r}.", 400, refusal=True)
        if image.startswith("-") or any(ch.isspace() for ch in image):
            raise spawn_error(f"Invalid image name {image!r}.", 400, refusal=True)
        prefixes = [p for p in self.allowed_image_prefixes if p]
        if not prefixes:
            raise spawn_error(
                f"Image {image} refused: this hub allows no Binder images "
                "(BinderSpawnerMixin.allowed_image_prefixes is empty).",
                403,
                refusal=True,
            )
        if not any(image.startswith(p) for p in prefixes):
            raise spawn_error(
                f"Image {image} is not allowed on this hub: only images starting with "
                f"{' or '.join(prefixes)} may be launched.",
                403,
                refusal=True,
            )
        return image

    def _binder_options(self) -> dict[str, Any]:
        options = getattr(self, "user_options", None)
        return dict(options) if isinstance(options, dict) else {}

    def _limit_of(self, name: str) -> float:
        """The spawner's own limit ``name`` in comparable units (bytes, CPUs);
        0: none."""
        if self._configured_limits is None:
            # The operator's values, before any start replaced them.
            self._configured_limits = {
                n: getattr(self, n, None) if n != "storage_limit" else self.storage_limit
                for n in RESOURCE_LIMITS
            }
        value = self._configured_limits.get(name)
        if callable(value) or value in (None, ""):
            return 0.0
        return float(_quantity(name, value))

    def resolve_resources(self, options: dict[str, Any]) -> dict[str, float]:
        """The limits of this start from ``user_options``: ``profile`` picks one
        of ``profiles`` (the default one, or the spawner's own limits, when
        absent), and ``cpu_limit`` / ``mem_limit`` / ``storage_limit`` may ask
        for less than it allows, never more. Raises a spawn refusal otherwise.
        Returns {"cpu_limit": CPUs, "mem_limit": bytes, "storage_limit": bytes}
        with only the limits that are set."""
        wanted = options.get("profile")
        profiles = [p for p in self.profiles if isinstance(p, dict) and p.get("name")]
        chosen: dict[str, Any] | None = None
        if wanted not in (None, ""):
            if not profiles:
                raise spawn_error(
                    f"Profile {wanted!r} refused: this hub offers no profiles.", 400, True
                )
            chosen = next((p for p in profiles if p["name"] == wanted), None)
            if chosen is None:
                names = ", ".join(str(p["name"]) for p in profiles)
                raise spawn_error(
                    f"Profile {wanted!r} does not exist on this hub (profiles: {names}).",
                    400,
                    True,
                )
        elif profiles:
            chosen = next((p for p in profiles if p.get("default")), profiles[0])
        allowed: dict[str, float] = {}
        for name in RESOURCE_LIMITS:
            if chosen is not None and chosen.get(name) not in (None, ""):
                allowed[name] = float(_quantity(name, chosen[name]))
            else:
                own = self._limit_of(name)
                if own:
                    allowed[name] = own
        granted = dict(allowed)
        where = f"profile {chosen['name']!r}" if chosen is not None else "this hub"
        for name in RESOURCE_LIMITS:
            asked = options.get(name)
            if asked in (None, ""):
                continue
            try:
                amount = float(_quantity(name, asked))
            except ValueError:
                raise spawn_error(f"Invalid {name} {asked!r}.", 400, True) from None
            if amount <= 0:
                raise spawn_error(f"Invalid {name} {asked!r}.", 400, True)
            if name in allowed and amount > allowed[name]:
                raise spawn_error(
                    f"{name} {asked} refused: {where} allows at most {_show(name, allowed[name])}.",
                    403,
                    True,
                )
            granted[name] = amount
        return granted

    def apply_resources(self, granted: dict[str, float]) -> None:
        """Set the granted limits on the spawner (DockerSpawner and KubeSpawner
        both have cpu_limit and mem_limit; KubeSpawner's storage_capacity sizes
        the server's volume claim)."""
        if "cpu_limit" in granted:
            self.cpu_limit = granted["cpu_limit"]
        if "mem_limit" in granted:
            self.mem_limit = int(granted["mem_limit"])
        self._storage_bytes = int(granted.get("storage_limit", 0))
        if self._storage_bytes and hasattr(self, "storage_capacity"):
            self.storage_capacity = str(self._storage_bytes)

    _storage_bytes: int = 0
    _configured_limits: dict[str, Any] | None = None

    @property
    def persistent(self) -> bool:
        """Whether this server keeps its files (signed-in users only)."""
        return bool(self.auth_enabled and self.persistent_storage)

    # --- spawner hooks -----------------------------------------------------------

    async def start(self) -> Any:
        options = self._binder_options()
        if not self.auth_enabled:
            # No token: a server of binderbuild's warm pool, whose launch token
            # is minted at hand-out (jupyterhub-singleuser asks the hub about
            # every token, so it needs none at start). A plain `jupyter server`
            # with server_token_args would start with no known token at all.
            if not options.get("token") and self.server_token_args:
                raise spawn_error(
                    "A Binder launch needs a token in user_options with "
                    "server_token_args (warm pools need jupyterhub-singleuser images).",
                    400,
                    True,
                )
            if not options.get("image"):
                raise spawn_error("A Binder launch needs an image in user_options.", 400, True)
        if options.get("image"):
            self.image = self.check_binder_image(options["image"])
        self.apply_resources(self.resolve_resources(options))
        self._forget_persisted_token(options)
        result = super().start()  # type: ignore[misc]  # the spawner mixed in after this defines start()
        if inspect.isawaitable(result):
            result = await result
        return result

    _binder_token: str = ""

    def _forget_persisted_token(self, options: dict[str, Any]) -> None:
        # JupyterHub keeps user_options in memory and in its database, and
        # shows them in its API. The token is a credential for the server:
        # keep it only in this spawner, for this start.
        if "token" not in options:
            return
        token = options.pop("token")
        self._binder_token = token if isinstance(token, str) else ""
        self.user_options = options
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is None:
            return
        try:
            # The session the hub loaded it with (Spawner.db is deprecated).
            from sqlalchemy import inspect as orm_inspect

            db = orm_inspect(orm_spawner).session
        except Exception:
            db = None
        if db is None:
            return
        try:
            orm_spawner.user_options = dict(options)
            db.commit()
        except Exception as exc:  # never fail a launch over this
            self.log.warning("could not drop the token from stored user_options: %s", exc)
            db.rollback()

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Any:
        # JupyterHub >= 5.3 warns about user_options nobody applies; this
        # mixin applies them in start() (and works with older hubs that way).
        return lambda spawner, options: None

    def get_env(self) -> dict[str, str]:
        env: dict[str, str] = super().get_env()  # type: ignore[misc]  # defined by the spawner mixed in
        options = self._binder_options()
        for key, name in BINDER_ENV_FIELDS:
            value = options.get(key)
            if isinstance(value, str) and value:
                env[name] = value
        if not self.auth_enabled and self.allow_token_in_url:
            env["JUPYTERHUB_ALLOW_TOKEN_IN_URL"] = "1"
        return env

    def get_args(self) -> list[str]:
        args: list[str] = list(super().get_args())  # type: ignore[misc]  # defined by the spawner mixed in
        origin = self.cors_allow_origin
        if origin:
            args.append(f"--ServerApp.allow_origin={origin}")
            if origin == "*":
                # allow_origin='*' alone does not cover requests for single files.
                args.append("--ServerApp.allow_origin_pat=.*")
        token = self._binder_token
        if self.server_token_args and not self.auth_enabled and token:
            server = getattr(self, "server", None)
            base_url = getattr(server, "base_url", "") if server is not None else ""
            args.append(f"--ServerApp.token={token}")
            args.append(f"--IdentityProvider.token={token}")
            if base_url:
                args.append(f"--ServerApp.base_url={base_url}")
        return args


# --- DockerSpawner --------------------------------------------------------------

try:
    import docker.errors
    from dockerspawner import DockerSpawner
    from jupyterhub.traitlets import ByteSpecification
except ImportError:  # pragma: no cover - the hub extra is not installed
    DockerSpawner = None


_KEY_SAFE = set(string.ascii_lowercase + string.digits + "-")


def storage_key(user: str, server: str) -> str:
    """``user.server`` (or ``user`` for a default server), each escaped to
    [a-z0-9-] with ``_XX`` escapes: "." never appears in an escaped name, so
    no two servers share a key."""
    import escapism  # type: ignore[import-untyped]  # no stubs; dockerspawner's dependency

    parts = [user, server] if server else [user]
    return ".".join(escapism.escape(p, safe=_KEY_SAFE, escape_char="_") for p in parts)


# Host paths that are, or contain, the Docker (or containerd) socket: a server
# that can talk to the engine is root on the host.
_SOCKET_DIRS = {"/", "/run", "/var", "/var/run", "/run/docker", "/run/containerd"}
_HOST_NAMESPACES = ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


# Options of Jupyter servers that choose where they listen.
_LISTEN_OPTIONS = {
    f"--{prefix}{name}"
    for prefix in ("", "ServerApp.", "NotebookApp.", "SingleUserNotebookApp.")
    for name in ("ip", "port")
}


def without_listen_args(command: list[str]) -> list[str]:
    """``command`` without ``--ip``/``--port`` options (``--ip=X`` or ``--ip X``)."""
    out: list[str] = []
    skip = False
    for arg in command:
        if skip:
            skip = False
            continue
        name, eq, _ = arg.partition("=")
        if name in _LISTEN_OPTIONS:
            skip = not eq
            continue
        out.append(arg)
    return out


def _mount_sources(host_config: dict[str, Any]) -> list[str]:
    sources = [str(b).split(":", 1)[0] for b in host_config.get("Binds") or []]
    sources += [str(m.get("Source") or "") for m in host_config.get("Mounts") or []]
    return [s for s in sources if s.startswith("/")]


def _is_engine_socket(path: str) -> bool:
    normalized = "/" + "/".join(part for part in path.split("/") if part not in ("", "."))
    return normalized in _SOCKET_DIRS or normalized.endswith((".sock", "/docker", "/containerd"))


def harden_container(
    create_kwargs: dict[str, Any],
    *,
    uid: int,
    gid: int,
    pids_limit: int,
    allow_host_network: bool,
) -> dict[str, Any]:
    """The ``create_container`` arguments of a Binder server, made safe.

    Whatever the image or the rest of the configuration asks for: the user is
    ``uid:gid`` (never root), every capability is dropped, ``no-new-privileges``
    is set, the container is not privileged and shares no namespace with the
    host, has at most ``pids_limit`` processes and no swap beyond its memory
    limit. The Docker socket (or a directory holding it) is never mounted, and
    the host network only with ``allow_host_network``: both are refused.
    """
    if uid <= 0 or gid < 0:
        raise spawn_error("Refusing to start a server as root (run_as_uid must not be 0).")
    kwargs = dict(create_kwargs)
    host = dict(kwargs.get("host_config") or {})
    if host.get("NetworkMode") == "host" and not allow_host_network:
        raise spawn_error(
            "Refusing to start a server on the host's network: it would reach every service "
            "of this machine. Use an internal network (docs/security.md), or set "
            "BinderDockerSpawner.allow_host_network = True (unsafe for public use)."
        )
    for key in _HOST_NAMESPACES:
        if str(host.get(key) or "").startswith("host"):
            raise spawn_error(f"Refusing to start a server with {key}={host[key]!r}.")
    sockets = [src for src in _mount_sources(host) if _is_engine_socket(src)]
    if sockets:
        raise spawn_error(
            f"Refusing to mount {', '.join(sockets)} into a server: the Docker socket "
            "gives root on the host."
        )
    host["Privileged"] = False
    host.pop("CapAdd", None)
    host["CapDrop"] = ["ALL"]
    security = [o for o in host.get("SecurityOpt") or [] if not o.startswith("no-new-privileges")]
    host["SecurityOpt"] = [*security, "no-new-privileges"]
    host.pop("Devices", None)
    if pids_limit > 0:
        host["PidsLimit"] = pids_limit
    if host.get("Memory"):
        host["MemorySwap"] = host["Memory"]
    kwargs["host_config"] = host
    kwargs["user"] = f"{uid}:{gid}"
    return kwargs


_RECENT_PORTS: dict[int, float] = {}
_PORT_QUARANTINE = 120.0  # seconds a port handed to one spawn is not handed again


def free_loopback_port(ip: str = "127.0.0.1") -> int:
    """A port nothing listens on now and no recent spawn was given."""
    now = time.monotonic()
    for port, at in list(_RECENT_PORTS.items()):
        if now - at > _PORT_QUARANTINE:
            del _RECENT_PORTS[port]
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((ip, 0))
            port = int(sock.getsockname()[1])
        if port not in _RECENT_PORTS:
            _RECENT_PORTS[port] = now
            return port
    raise spawn_error("No free port for the server on this machine.")


if DockerSpawner is not None:

    class BinderDockerSpawner(BinderSpawnerMixin, DockerSpawner):  # type: ignore[misc]  # DockerSpawner is untyped (Any)
        """DockerSpawner for Binder launches.

        Servers run code from strangers, so every container is hardened
        (``harden_container``): uid ``run_as_uid`` whatever the image's
        ``USER``, no capabilities, ``no-new-privileges``, ``mem_limit``,
        ``cpu_limit`` and ``pids_limit``, never the Docker socket. They belong
        on a network of their own (binderbuild's single-machine mode makes an
        internal bridge, ``binderbuild-servers``) where the proxy reaches them
        at their container address and they listen on ``0.0.0.0``.

        ``network_name = "host"`` is refused unless ``allow_host_network`` is
        set: every server then shares the host's network (and reaches its
        loopback services) and listens on ``host_network_ip`` on a free port
        chosen per spawn.

        ``start()`` returns only once the server's port accepts connections,
        and fails with the container's exit status and last log lines when the
        server exits first, so the hub (and the Binder client) see why a
        server did not start instead of a timeout.
        """

        host_network_ip = Unicode(
            "127.0.0.1",
            config=True,
            help="Address servers listen on with network_name='host'. Keep it on "
            "loopback unless the machine's firewall protects the ports.",
        )
        wait_for_port = Bool(
            True,
            config=True,
            help="Wait in start() until the server's port answers or the container exits.",
        )
        exit_log_lines = Integer(
            20, config=True, help="Log lines of an exited container quoted in the failure."
        )
        allow_host_network = Bool(
            False,
            config=True,
            help="""Allow network_name='host'. UNSAFE for public use: every server shares
            the host's network and can reach each service the host binds to loopback
            (registry, binderbuild, the proxy's API). Without it such spawns are refused.""",
        )
        run_as_uid = Integer(
            1000,
            config=True,
            help="""User id every server runs as, whatever the image's USER says (1000, as
            repo2docker images and Zero to JupyterHub use). Must not be 0.""",
        )
        run_as_gid = Integer(1000, config=True, help="Group id every server runs as.")
        pids_limit = Integer(
            512,
            config=True,
            help="Most processes (and threads) a server may run; 0: no limit.",
        )
        mem_limit = Union(
            [Callable(), ByteSpecification()],
            default_value=2 * 1024**3,
            config=True,
            help="""Memory limit of each server (2G by default; e.g. '512M', '4G'). A
            process allocating beyond it is killed; there is no swap beyond it.""",
        )
        cpu_limit = Union(
            [Callable(), Float(allow_none=True)],
            default_value=1.0,
            config=True,
            help="CPUs each server may use (1.0 by default; fractions allowed).",
        )
        registry_username = Unicode(
            "",
            config=True,
            help="""User name for pulling server images from the registry (the registry
            binderbuild pushes to). Used by the Docker engine's pull only; never given to
            a server.""",
        )
        registry_password = Unicode(
            "", config=True, help="Password for pulling server images (registry_username)."
        )
        storage_dir = Unicode(
            "/var/lib/binderbuild/storage",
            config=True,
            help="""Host directory of the servers' persistent storage (persistent_storage):
            one directory per server, or with storage_limit one ext4 image file per server,
            loop-mounted there while the server runs (the hub must run as root).""",
        )
        storage_mount_path = Unicode(
            "",
            config=True,
            help="""Where a server's persistent storage is mounted in its container. Empty:
            the image's HOME (where repo2docker images have the repository).""",
        )
        storage_seed_timeout = Float(
            120.0,
            config=True,
            help="""Seconds the copy of the image's home directory into a server's storage
            (first start, and each start with a new image) may take.""",
        )

        @validate("run_as_uid")
        def _validate_uid(self, proposal: Any) -> int:
            uid = int(proposal["value"])
            if uid <= 0:
                raise ValueError("BinderDockerSpawner.run_as_uid must not be 0 (root)")
            return uid

        # DockerSpawner's Bool trait, declared for the type checker.
        remove: bool

        @default("remove")
        def _default_remove(self) -> bool:
            # Binder servers are disposable: a stopped container is garbage.
            return True

        @default("prefix")
        def _default_prefix(self) -> str:
            return "binder"

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._binder_events: list[dict[str, Any]] = []
            self._binder_changed = asyncio.Event()

        @property
        def _host_network(self) -> bool:
            return bool(self.network_name == "host")

        def _progress(self, percent: int, message: str) -> None:
            self._binder_events.append({"progress": percent, "message": message})
            self._binder_changed.set()

        async def progress(self) -> AsyncIterator[dict[str, Any]]:
            # The hub stops iterating when the spawn finishes.
            sent = 0
            while True:
                while sent < len(self._binder_events):
                    yield self._binder_events[sent]
                    sent += 1
                self._binder_changed.clear()
                await self._binder_changed.wait()

        async def create_object(self) -> Any:
            # DockerSpawner makes containers with auto_remove=remove: the
            # engine then deletes a crashed server's container (and its
            # output) the moment it exits, before anyone can say why. Keep
            # it; stop() removes it (remove=True) once the hub stops the server.
            remove, self.remove = self.remove, False
            try:
                return await super().create_object()
            finally:
                self.remove = remove

        def docker(self, method: str, *args: Any, **kwargs: Any) -> Any:
            # Every call to the engine goes through here: the one place where
            # a container's definition is final, whatever DockerSpawner, its
            # extra_create_kwargs / extra_host_config or the image asked for.
            if (
                method == "create_container"
                and self._storage_bind
                and kwargs.get("name") == self.container_name
            ):
                # The server's container (the storage seeding one has no name).
                host = dict(kwargs.get("host_config") or {})
                host["Binds"] = [*(host.get("Binds") or []), self._storage_bind]
                kwargs["host_config"] = host
            if method == "create_container":
                kwargs = harden_container(
                    kwargs,
                    uid=self.run_as_uid,
                    gid=self.run_as_gid,
                    pids_limit=self.pids_limit,
                    allow_host_network=self.allow_host_network,
                )
            elif method == "pull" and self.registry_username:
                kwargs.setdefault(
                    "auth_config",
                    {"username": self.registry_username, "password": self.registry_password},
                )
            return super().docker(method, *args, **kwargs)

        def get_args(self) -> list[str]:
            args = super().get_args()
            # Where the proxy reaches the server. Last, so that it wins over an
            # --ip in the image's command (which a repository chooses).
            return [*args, f"--ip={self.ip}", f"--port={self.port}"]

        async def get_command(self) -> list[str]:
            if self.cmd:
                command = list(self.cmd)
            else:
                # An image with an ENTRYPOINT and no CMD has Cmd null: the
                # command is then the entrypoint with the server's arguments.
                info = await self.docker("inspect_image", self.image)
                command = list(info["Config"].get("Cmd") or [])
            # The listen address is the spawner's choice, not the image's:
            # Jupyter refuses a second --ip, so the image's own go.
            return without_listen_args(command) + list(self.get_args())

        async def check_allowed(self, image: str) -> str:
            # DockerSpawner's allowed_images is replaced by the prefix rule.
            return self.check_binder_image(image)

        async def pull_image(self, image: str) -> None:
            try:
                await super().pull_image(image)
            except docker.errors.NotFound:
                raise spawn_error(
                    f"Image {image} is not on this Docker engine "
                    f"(pull_policy is {self.pull_policy!r})."
                ) from None
            except docker.errors.APIError as exc:
                raise spawn_error(
                    f"Could not pull image {image}: {exc.explanation or exc}"
                ) from None

        async def start(self) -> Any:
            self._binder_events = []
            if self._host_network and not self.allow_host_network:
                harden_container(
                    {"host_config": {"NetworkMode": "host"}},
                    uid=self.run_as_uid,
                    gid=self.run_as_gid,
                    pids_limit=self.pids_limit,
                    allow_host_network=False,
                )
            if self._host_network:
                # No port mapping exists on the host network: the server binds
                # a free port of the host itself.
                self.use_internal_ip = True
                self.ip = self.host_network_ip
                self.port = free_loopback_port(self.host_network_ip)
            image = self._binder_options().get("image") or self.image
            self._storage_bind = ""
            if self.persistent:
                # The mixin's start() checks and applies these again; the
                # storage needs its size, and the seeding the image, first.
                self.apply_resources(self.resolve_resources(self._binder_options()))
                await self.pull_image(self.check_binder_image(image))
                self._storage_bind = await self._prepare_storage(image)
            self._progress(10, f"Starting a container from {image}")
            ip, port = await super().start()
            if self.wait_for_port:
                self._progress(50, "Container started, waiting for the Jupyter server")
                await self._wait_for_port(ip, port)
                self._progress(90, "The Jupyter server is listening")
            return ip, port

        async def get_ip_and_port(self) -> tuple[str, int]:
            if self._host_network:
                return self.host_network_ip, int(self.port)
            ip_port: tuple[str, int] = await super().get_ip_and_port()
            return ip_port

        async def _wait_for_port(self, ip: str, port: int) -> None:
            last_inspect = 0.0
            while True:
                try:
                    _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), 2)
                except (OSError, TimeoutError):
                    pass
                else:
                    writer.close()
                    return
                now = time.monotonic()
                if now - last_inspect >= 0.5:
                    last_inspect = now
                    await self._fail_if_exited()
                await asyncio.sleep(0.1)

        async def _fail_if_exited(self) -> None:
            try:
                info = await self.docker("inspect_container", self.container_id)
            except docker.errors.NotFound:
                raise spawn_error("The server's container disappeared while starting.") from None
            state = info.get("State", {})
            if state.get("Running"):
                return
            code = state.get("ExitCode")
            tail = ""
            # The engine copies a container's output to its log asynchronously:
            # right after the exit the last lines may not be there yet.
            for _ in range(5):
                try:
                    raw = await self.docker("logs", self.container_id, tail=self.exit_log_lines)
                    tail = raw.decode("utf-8", "replace").strip()
                except docker.errors.APIError:
                    break
                if tail:
                    break
                await asyncio.sleep(0.2)
            message = f"The server exited with status {code} before it started"
            if state.get("OOMKilled"):
                message += " (out of memory)"
            if state.get("Error"):
                message += f": {state['Error']}"
            if tail:
                message += f". Last output:\n{tail}"
            raise spawn_error(message)

        # --- persistent storage (docs/persistent-servers.md) -----------------------

        _storage_bind: str = ""

        @property
        def storage_key(self) -> str:
            """The file-system name of this server's storage (one per named server)."""
            return storage_key(self.user.name, self.name or "")

        @property
        def storage_root(self) -> Path:
            return Path(self.storage_dir) / self.storage_key

        @property
        def storage_image(self) -> Path:
            return Path(self.storage_dir) / f"{self.storage_key}.ext4"

        async def _run(self, *argv: str) -> None:
            """Run a host command (mkfs.ext4, mount); raise a spawn error on failure."""
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                )
            except OSError as exc:
                raise spawn_error(f"Could not prepare the server's storage: {exc}") from None
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                text = out.decode("utf-8", "replace").strip()
                raise spawn_error(
                    f"Could not prepare the server's storage ({argv[0]} exited with "
                    f"{proc.returncode}): {text}"
                )

        async def _prepare_storage(self, image: str) -> str:
            """Make (first start), mount (size-limited) and seed this server's
            storage; returns the bind of its home directory into the container."""
            root = self.storage_root
            size = self._storage_bytes
            if size:
                await self._mount_image(root, size)
            else:
                root.mkdir(parents=True, exist_ok=True)
                os.chmod(root, 0o700)
            home = root / "home"
            if not home.exists():
                home.mkdir()
                os.chown(home, self.run_as_uid, self.run_as_gid)
            target = self.storage_mount_path or await self._image_home(image)
            await self._seed(image, home, target, root / "seeded-image")
            return f"{home}:{target}:rw"

        async def _mount_image(self, root: Path, size: int) -> None:
            path = self.storage_image
            root.mkdir(parents=True, exist_ok=True)
            if os.path.ismount(root):
                return  # still mounted (a hub restart while the server ran)
            if not path.exists():
                self._progress(5, f"Making {_show('storage_limit', size)} of storage")
                with open(path, "wb") as f:
                    f.truncate(size)
                os.chmod(path, 0o600)
                # No reserved blocks: the user gets the whole size.
                await self._run("mkfs.ext4", "-q", "-F", "-m", "0", str(path))
            elif path.stat().st_size < size:
                # A larger limit (operator, profile): grow, never shrink.
                await self._run("e2fsck", "-f", "-p", str(path))
                with open(path, "r+b") as f:
                    f.truncate(size)
                await self._run("resize2fs", str(path))
            await self._run("mount", "-o", "loop,nosuid,nodev", str(path), str(root))
            os.chmod(root, 0o700)

        async def _unmount_storage(self) -> None:
            root = self.storage_root
            if not self.storage_image.exists() or not os.path.ismount(root):
                return
            try:
                await self._run("umount", str(root))
            except web.HTTPError as exc:
                self.log.warning("could not unmount the storage of %s: %s", self.storage_key, exc)

        async def _image_home(self, image: str) -> str:
            info = await self.docker("inspect_image", image)
            for item in info.get("Config", {}).get("Env") or []:
                name, _, value = str(item).partition("=")
                if name == "HOME" and value.startswith("/") and value != "/":
                    return value
            return "/home/jovyan"

        async def _seed(self, image: str, home: Path, target: str, marker: Path) -> None:
            """Copy the image's ``target`` directory (the repository) into the
            storage, never overwriting a file that is there: on the first start
            and whenever the image changed since the last copy."""
            if marker.exists() and marker.read_text().strip() == image:
                return
            self._progress(8, "Copying the repository's files into your storage")
            mount = "/binder-storage"
            host_config = self.client.create_host_config(
                binds=[f"{home}:{mount}:rw"],
                network_mode="none",
                mem_limit=512 * 1024**2,
            )
            container = await self.docker(
                "create_container",
                image=image,
                entrypoint=["cp"],
                command=["-rnP", "--preserve=mode,timestamps,links", f"{target}/.", f"{mount}/"],
                host_config=host_config,
                network_disabled=True,
                labels={"binderbuild.storage-seed": self.storage_key},
            )
            cid = container["Id"]
            try:
                await self.docker("start", cid)
                try:
                    result = await asyncio.wait_for(
                        self.docker("wait", cid), self.storage_seed_timeout
                    )
                except TimeoutError:
                    raise spawn_error(
                        f"Copying the repository into the server's storage took more than "
                        f"{self.storage_seed_timeout:g} seconds."
                    ) from None
                code = int(result.get("StatusCode", -1))
                if code != 0:
                    raw = await self.docker("logs", cid, tail=self.exit_log_lines)
                    tail = raw.decode("utf-8", "replace").strip()
                    raise spawn_error(
                        f"Copying the repository into the server's storage failed "
                        f"(status {code}): {tail}"
                    )
            finally:
                try:
                    await self.docker("remove_container", cid, force=True)
                except docker.errors.APIError as exc:
                    self.log.warning("could not remove seeding container %s: %s", cid, exc)
            marker.write_text(image + "\n")

        async def stop(self, now: bool = False) -> None:
            await super().stop(now=now)
            if self.persistent:
                await self._unmount_storage()

        async def delete_forever(self) -> None:
            # Called when the hub deletes the user or the named server. A hub
            # that crashed while a server was starting never recorded the
            # container, so look it up by name: nothing may be left behind.
            try:
                obj = await self.get_object()
                if obj is not None:
                    await self.docker("remove_container", obj["Id"], force=True)
            except docker.errors.APIError as exc:
                self.log.warning("could not remove container %s: %s", self.object_name, exc)
            parent = super().delete_forever()
            if inspect.isawaitable(parent):
                await parent
            if self.persistent_storage and (
                self.storage_root.exists() or self.storage_image.exists()
            ):
                # The user deleted the server (not the culler: it only stops):
                # its files go with it.
                await self._unmount_storage()
                await asyncio.to_thread(shutil.rmtree, self.storage_root, True)
                self.storage_image.unlink(missing_ok=True)
                self.log.info("deleted the storage of %s", self.storage_key)
