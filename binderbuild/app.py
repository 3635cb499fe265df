"""The binderbuild application: reads configuration, builds every service once,
serves HTTP, and releases everything at shutdown.

Option names follow BinderHub's where the meaning is the same. A config file
written for BinderHub (``c.BinderHub.x = ...``) is read too: its values are
forwarded to ``BinderBuild`` (see ``_forward_binderhub_config``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from importlib.metadata import entry_points, version
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application, Config, LoggingConfigurable
from traitlets.utils.importstring import import_item

from binderbuild import __version__
from binderbuild.builders.base import Builder
from binderbuild.builds import BuildManager
from binderbuild.context import Context, Settings
from binderbuild.errors import ConfigError
from binderbuild.handlers.build import BuildHandler
from binderbuild.handlers.info import (
    HealthChecker,
    HealthHandler,
    RepoProvidersHandler,
    VersionsHandler,
)
from binderbuild.http import HttpClient
from binderbuild.launcher import Launcher
from binderbuild.netsafety import parse_networks
from binderbuild.pipeline import Pipeline, PipelineSettings
from binderbuild.providers import DEFAULT_PROVIDERS
from binderbuild.providers.base import RepoProvider
from binderbuild.registry import ImageStore, LocalImageStore, RegistryClient
from binderbuild.secrets import Scrubber, ScrubbingFilter

ROOT = Path(__file__).resolve().parent.parent

_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_bytes(value: str | int) -> int:
    """'2G', '512M', '1.5GiB', 1073741824 -> bytes."""
    if isinstance(value, int):
        return value
    if not value:
        return 0
    match = _BYTES.match(value)
    if not match:
        raise ConfigError(f"Not a byte size: {value!r} (use e.g. 512M, 2G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


class DockerRegistry(LoggingConfigurable):
    """The container registry images are pushed to (BinderHub's DockerRegistry)."""

    url = Unicode(
        "",
        config=True,
        help="Registry API URL, e.g. https://registry.example.org or http://127.0.0.1:5000.",
    ).tag(env="BINDERBUILD_REGISTRY_URL")
    username = Unicode("", config=True, help="Registry user name (basic or token auth).").tag(
        env="BINDERBUILD_REGISTRY_USERNAME"
    )
    password = Unicode("", config=True, help="Registry password or token.").tag(
        env="BINDERBUILD_REGISTRY_PASSWORD"
    )
    timeout = Float(10.0, config=True, help="Seconds before a registry request is an error.")

    @default("url")
    def _url_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_URL", "")

    @default("username")
    def _username_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_USERNAME", "")

    @default("password")
    def _password_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_PASSWORD", "")


class BinderBuild(Application):
    name = "binderbuild"
    version = __version__
    description = "Build repositories into images and launch them on JupyterHub (a BinderHub replacement)."

    aliases = {
        "port": "BinderBuild.port",
        "ip": "BinderBuild.ip",
        "base-url": "BinderBuild.base_url",
        "config": "BinderBuild.config_file",
        "log-level": "Application.log_level",
    }
    flags = {
        "debug": ({"Application": {"log_level": logging.DEBUG}}, "Log at debug level."),
        "no-launch": ({"BinderBuild": {"require_build_only": True}}, "Build only; never launch."),
    }

    config_file = Unicode(
        "binderbuild_config.py", config=True, help="Configuration file to load (Python)."
    )

    # --- HTTP ---------------------------------------------------------------
    ip = Unicode("127.0.0.1", config=True, help="Interface the service listens on.")
    port = Integer(8585, config=True, help="Port the service listens on.")
    base_url = Unicode("/", config=True, help="URL prefix of every endpoint (starts and ends with /).")
    launch_host = Unicode(
        "",
        config=True,
        help="Public URL of this service (binder_launch_host). Default: taken from each request.",
    )
    keepalive_interval = Float(
        25.0, config=True, help="Seconds of silence after which an event stream gets a keepalive."
    )

    # --- images and registry ------------------------------------------------
    use_registry = Bool(
        False,
        config=True,
        help="Push images to DockerRegistry.url and check it for existing images. "
        "False (the single-machine default): the local Docker engine's image store is the cache.",
    )
    image_prefix = Unicode(
        "binder-",
        config=True,
        help="Prefix of image names: {image_prefix}{slug}:{resolved ref}. With a registry it "
        "starts with the registry host, e.g. registry.example.org/binder-.",
    )
    image_exists_cache_ttl = Float(
        300.0, config=True, help="Seconds a 'this image exists' answer is reused."
    )

    # --- builds ----------------------------------------------------------------
    build_class = Unicode(
        "docker",
        config=True,
        help="Build backend: an entry point name of group binderbuild.builders "
        "('docker', 'kubernetes') or an import string.",
    )
    build_docker_host = Unicode(
        "", config=True, help="Docker engine URL for builds (default: DOCKER_HOST or the local socket)."
    )
    build_memory_limit = Unicode(
        "", config=True, help="Memory limit of a build, e.g. '2G'. Empty: no limit."
    )
    concurrent_build_limit = Integer(
        0, config=True, help="Builds run at once; the rest wait in a queue. 0: number of CPU cores."
    )
    build_timeout = Float(3600.0, config=True, help="Seconds a build may take in total.")
    build_idle_timeout = Float(
        900.0, config=True, help="Seconds a build may go without any output before it is stopped."
    )
    allow_build_only = Bool(True, config=True, help="Accept build_only=true on /build requests.")
    require_build_only = Bool(
        False, config=True, help="Never launch: every /build request stops at 'ready' with the image."
    )

    # --- repositories --------------------------------------------------------
    repo_providers = Dict(
        config=True,
        help="Provider prefix -> provider class (or import string). Default: all built-in providers.",
    )
    allowed_internal_networks = List(
        Unicode(),
        config=True,
        help="CIDR networks that repositories may be fetched from although they are internal "
        "(private, loopback, link-local). Default: none, e.g. ['127.0.0.0/8'] for a local git server.",
    )
    resolve_cache_ttl = Float(
        60.0, config=True, help="Seconds a branch/tag resolution is reused (commit SHAs: forever)."
    )

    # --- launching -------------------------------------------------------------
    launcher_class = Unicode(
        "",
        config=True,
        help="Import string of the launcher. Empty: JupyterHub launcher when hub_url is set, "
        "otherwise no launches (build only).",
    )
    hub_url = Unicode("", config=True, help="Public URL of the JupyterHub that runs servers.")
    hub_api_token = Unicode("", config=True, help="API token of binderbuild's hub service.").tag(
        env="JUPYTERHUB_API_TOKEN"
    )

    extra_log_secrets = List(
        Unicode(), config=True, help="Further values that must never appear in logs or events."
    )

    tornado_settings = Dict(config=True, help="Extra settings passed to the Tornado application.")

    @default("repo_providers")
    def _default_providers(self) -> dict[str, Any]:
        return dict(DEFAULT_PROVIDERS)

    @default("hub_api_token")
    def _default_hub_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @validate("base_url")
    def _valid_base_url(self, proposal: Any) -> str:
        value = "/" + proposal["value"].strip("/") + "/"
        return value.replace("//", "/")

    # --- wiring ------------------------------------------------------------

    def load_config_file(self, filename: str, path: str | list[str] | None = None) -> None:  # type: ignore[override]
        super().load_config_file(filename, path)
        self._forward_binderhub_config()

    def _forward_binderhub_config(self) -> None:
        """BinderHub config files keep working: BinderHub.x -> BinderBuild.x for
        every option both have."""
        if "BinderHub" not in self.config:
            return
        ours = set(self.class_trait_names(config=True))
        forwarded = Config()
        for key, value in self.config.BinderHub.items():
            if key in ours:
                forwarded.BinderBuild[key] = value
            else:
                self.log.warning("BinderHub.%s has no binderbuild equivalent; ignored", key)
        self.update_config(forwarded)

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file and os.path.exists(self.config_file):
            self.load_config_file(self.config_file)
        self.log.setLevel(self.log_level)

    def _make_providers(self, http: HttpClient) -> dict[str, RepoProvider]:
        networks = parse_networks(self.allowed_internal_networks)
        providers: dict[str, RepoProvider] = {}
        for prefix, cls in self.repo_providers.items():
            klass = import_item(cls) if isinstance(cls, str) else cls
            providers[prefix] = klass(
                parent=self, http=http, allowed_internal_networks=networks, log=self.log
            )
        return providers

    def _make_builder(self, registry: DockerRegistry, docker_client: Any, scrubber: Scrubber) -> Builder:
        name = self.build_class
        matches = [ep for ep in entry_points(group="binderbuild.builders") if ep.name == name]
        klass = matches[0].load() if matches else import_item(name)
        kwargs: dict[str, Any] = {
            "parent": self,
            "log": self.log,
            "docker_host": self.build_docker_host,
            "memory_limit": parse_bytes(self.build_memory_limit),
            "docker_client": docker_client,
            "scrubber": scrubber,
        }
        if self.use_registry:
            kwargs["registry_credentials"] = {
                "registry": registry.url,
                "username": registry.username,
                "password": registry.password,
            }
        return klass(**kwargs)  # type: ignore[no-any-return]

    def _make_launcher(self, http: HttpClient) -> Launcher | None:
        if self.require_build_only:
            return None
        cls = self.launcher_class
        if not cls:
            if not self.hub_url:
                return None
            cls = "binderbuild.hub.HubLauncher"
        klass = import_item(cls)
        return klass(parent=self, log=self.log, http=http)  # type: ignore[no-any-return]

    def build_context(self) -> Context:
        """Create every long-lived service once. Called inside the running loop."""
        scrubber = Scrubber([self.hub_api_token, *self.extra_log_secrets])
        registry_config = DockerRegistry(parent=self, log=self.log)
        scrubber.add(registry_config.password)
        for name in ("binderbuild", "tornado", "traitlets", self.log.name):
            logger = logging.getLogger(name)
            if not any(isinstance(f, ScrubbingFilter) for f in logger.filters):
                logger.addFilter(ScrubbingFilter(scrubber))

        http = HttpClient(user_agent=f"binderbuild/{__version__}")
        docker_client = self._docker_client()
        image_store: ImageStore
        if self.use_registry:
            if not registry_config.url:
                raise ConfigError("use_registry is True but DockerRegistry.url is empty.")
            image_store = RegistryClient(
                http,
                registry_config.url,
                registry_config.username,
                registry_config.password,
                registry_config.timeout,
            )
        else:
            image_store = LocalImageStore(docker_client)
        builder = self._make_builder(registry_config, docker_client, scrubber)
        builds = BuildManager(
            builder,
            concurrency=self.concurrent_build_limit or os.cpu_count() or 1,
            build_timeout=self.build_timeout,
            idle_timeout=self.build_idle_timeout,
        )
        providers = self._make_providers(http)
        launcher = self._make_launcher(http)
        pipeline = Pipeline(
            providers=providers,
            image_store=image_store,
            builds=builds,
            launcher=launcher,
            settings=PipelineSettings(
                image_prefix=self.image_prefix,
                resolve_cache_ttl=self.resolve_cache_ttl,
                image_exists_cache_ttl=self.image_exists_cache_ttl,
            ),
        )
        settings = Settings(
            base_url=self.base_url,
            launch_host=self.launch_host,
            keepalive_interval=self.keepalive_interval,
            allow_build_only=self.allow_build_only,
            require_build_only=self.require_build_only or launcher is None,
            image_prefix=self.image_prefix,
            version_info=self._version_info(),
        )
        ctx = Context(
            settings=settings,
            http=http,
            providers=providers,
            image_store=image_store,
            builder=builder,
            builds=builds,
            pipeline=pipeline,
            launcher=launcher,
            scrubber=scrubber,
        )
        checks: dict[str, tuple[Any, bool]] = {
            "registry" if self.use_registry else "image-store": (image_store.check, True),
            "build-backend": (builder.check, True),
            "queue": (lambda: _queue_check(builds), False),
        }
        if launcher is not None:
            checks["hub"] = (launcher.check, True)
        ctx.services["health"] = HealthChecker(checks)
        ctx.services["docker"] = docker_client
        return ctx

    def _docker_client(self) -> Any:
        import docker

        try:
            if self.build_docker_host:
                return docker.DockerClient(base_url=self.build_docker_host)
            return docker.from_env()
        except docker.errors.DockerException as exc:
            if self.use_registry and self.build_class != "docker":
                return None
            raise ConfigError(
                f"Cannot reach the Docker engine ({exc}). Start it (scripts/setup.sh) "
                "or set BinderBuild.build_docker_host."
            ) from None

    def _version_info(self) -> dict[str, Any]:
        try:
            r2d = version("jupyter-repo2docker")
        except Exception:
            r2d = "unknown"
        return {"binderbuild": __version__, "builder": f"repo2docker {r2d}", "builder_info": {"repo2docker-version": r2d}}

    def make_tornado_app(self, ctx: Context) -> tornado.web.Application:
        base = self.base_url
        spec_pattern = r"(?P<provider_id>[^/]+)/(?P<spec>.+)"
        handlers: list[Any] = [
            (rf"{base}build/{spec_pattern}", BuildHandler),
            (rf"{base}versions", VersionsHandler),
            (rf"{base}health", HealthHandler),
            (rf"{base}api/repoproviders", RepoProvidersHandler),
        ]
        for extra in ctx.services.get("extra_handlers", []):
            handlers.append(extra)
        settings = {
            "binderbuild": ctx,
            "template_path": str(ROOT / "templates"),
            "static_path": str(ROOT / "static"),
            "static_url_prefix": f"{base}static/",
            "compress_response": False,
        }
        settings.update(self.tornado_settings)
        return tornado.web.Application(handlers, **settings)

    async def serve(self) -> None:
        ctx = self.build_context()
        app = self.make_tornado_app(ctx)
        server = HTTPServer(app, xheaders=False, idle_connection_timeout=3600)
        server.listen(self.port, self.ip)
        self.log.info("binderbuild %s listening on http://%s:%s%s", __version__, self.ip, self.port, self.base_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("shutting down")
        server.stop()
        await shutdown(ctx)

    def start(self) -> None:
        asyncio.run(self.serve())


async def shutdown(ctx: Context) -> None:
    await ctx.builds.close()
    if ctx.launcher is not None:
        await ctx.launcher.close()
    await ctx.builder.close()
    ctx.http.close()


async def _queue_check(builds: BuildManager) -> dict[str, Any]:
    return {"running": builds.running, "queued": builds.queue_length}


def main(argv: list[str] | None = None) -> None:
    app = BinderBuild.instance()
    try:
        app.initialize(argv)
        app.start()
    except ConfigError as exc:
        print(f"binderbuild: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
