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
import signal
import sys
from pathlib import Path
from typing import Any

import tornado.web
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Float, Integer, List, Unicode, default, validate
from traitlets.config import Application, Config, LoggingConfigurable
from traitlets.utils.importstring import import_item

from binderbuild import __version__, plugins
from binderbuild.auth import api_only
from binderbuild.errors import ConfigError
from binderbuild.handlers.admin import admin_handlers
from binderbuild.handlers.api import api_handlers
from binderbuild.handlers.build import BuildHandler
from binderbuild.handlers.info import (
    HealthHandler,
    NotFoundHandler,
    RepoProvidersHandler,
    VersionsHandler,
)
from binderbuild.handlers.metrics import MetricsHandler
from binderbuild.handlers.pages import PageOptions, page_handlers, page_settings
from binderbuild.logging_setup import configure_logging
from binderbuild.netsafety import parse_allowed, parse_networks
from binderbuild.operations import BinderBuildWebApp
from binderbuild.providers import DEFAULT_PROVIDERS
from binderbuild.providers.base import RepoProvider
from binderbuild.services import Services, compose, shutdown, start

ROOT = Path(__file__).resolve().parent.parent
# Largest request body accepted (POST /api/builds is a few hundred bytes).
MAX_REQUEST_BODY = 1024 * 1024


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
    timeout = Float(
        10.0,
        config=True,
        help="Seconds one registry request may take (cut to the time left of its operation, "
        "see unresponsive_timeout).",
    )
    unresponsive_timeout = Float(
        30.0,
        config=True,
        help="Seconds one registry operation may take in all (an image check with its token "
        "fetch and retries; a request that timed out is tried again within it, a refused "
        "one is not), and seconds a registry may stay silent while a build pushes before "
        "the push is stopped and the build fails.",
    )

    @default("url")
    def _url_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_URL", "")

    @default("username")
    def _username_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_USERNAME", "")

    @default("password")
    def _password_default(self) -> str:
        return os.environ.get("BINDERBUILD_REGISTRY_PASSWORD", "")


# Configurable classes listed by --help-all and in docs/configuration.md,
# besides BinderBuild itself and the repository providers.
CONFIGURABLES: list[str] = [
    "binderbuild.app.DockerRegistry",
    "binderbuild.builders.docker.DockerBuilder",
    "binderbuild.ratelimit.RateLimiter",
    "binderbuild.eventlog.EventLog",
    "binderbuild.hub.HubLauncher",
    "binderbuild.warmpool.WarmPoolLauncher",
    "binderbuild.quota.HubServerCounter",
    "binderbuild.lifecycle.EngineImageCleaner",
    "binderbuild.lifecycle.RegistryLifecycle",
    "binderbuild.lifecycle.Sweeper",
]


# PageOptions: the pages' branding options (template_path, banner_message, ...).
class BinderBuild(PageOptions, Application):
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
    build_log_max_bytes = Unicode(
        "16M",
        config=True,
        help="Largest build log kept and streamed per build (e.g. '16M'); past it, one "
        "'[log truncated]' line and the rest is dropped (the build goes on). Bounds the "
        "service's memory against builds that flood their output.",
    )
    build_log_line_max_bytes = Unicode(
        "64K",
        config=True,
        help="Longest build log line kept (e.g. '64K'); longer lines are cut and marked "
        "'[line truncated]'.",
    )
    build_idle_timeout = Float(
        900.0, config=True, help="Seconds a build may go without any output before it is stopped."
    )
    allow_build_only = Bool(True, config=True, help="Accept build_only=true on /build requests.")
    require_build_only = Bool(
        False, config=True, help="Never launch: every /build request stops at 'ready' with the image."
    )
    abandoned_build_grace = Float(
        0.0,
        config=True,
        help="Seconds a build may run or wait with no client following its events or "
        "polling its status before it is cancelled, freeing its slot. 0: never cancel "
        "(BinderHub's behaviour: a build continues when its clients leave).",
    )
    data_dir = Unicode(
        "var",
        config=True,
        help="Directory for state that must survive restarts (the build history "
        "database). Relative paths are relative to the working directory.",
    )

    # --- repositories --------------------------------------------------------
    repo_providers = Dict(
        config=True,
        help="Provider prefix -> provider class, import string, or entry point name of "
        "group binderbuild.providers (e.g. {\"gh\": \"gh\"}). Default: all built-in providers.",
    )
    allowed_internal_networks = List(
        Unicode(),
        config=True,
        help="Internal (private, loopback, link-local) places repositories may be fetched "
        "from: networks ('10.1.0.0/16': any port) or one address and port ('127.0.0.1:9419', "
        "'[::1]:9419'). Prefer address:port: a network also admits the hub, the registry and "
        "this service if they live in it. Default: none.",
    )
    resolve_cache_ttl = Float(
        60.0, config=True, help="Seconds a branch/tag resolution is reused (commit SHAs: forever)."
    )
    resolve_concurrency_limit = Integer(
        16,
        config=True,
        help="Ref resolutions (git ls-remote, provider API calls) running at once; further "
        "ones wait. Identical requests always share one resolution.",
    )

    # --- launching -------------------------------------------------------------
    launcher_class = Unicode(
        "",
        config=True,
        help="Launcher: an entry point name of group binderbuild.launchers ('hub') or an "
        "import string. Empty: JupyterHub launcher when hub_url is set, otherwise no "
        "launches (build only).",
    )
    hub_url = Unicode("", config=True, help="Public URL of the JupyterHub that runs servers.")
    hub_api_token = Unicode("", config=True, help="API token of binderbuild's hub service.").tag(
        env="JUPYTERHUB_API_TOKEN"
    )
    # Launch options BinderHub has on its application; HubLauncher reads them
    # from here (its own retry/timeout options are c.HubLauncher.*, docs/launching.md).
    hub_url_local = Unicode(
        "",
        config=True,
        help="URL binderbuild uses for the hub's REST API when it differs from hub_url "
        "(e.g. the hub's internal address, bypassing the proxy). Default: hub_url.",
    )
    use_named_servers = Bool(
        False,
        config=True,
        help="With auth_enabled: start each launch as a new named server of the logged-in "
        "user (the hub needs allow_named_servers). Otherwise the user's default server.",
    ).tag(env="JUPYTERHUB_ALLOW_NAMED_SERVERS")
    named_server_limit_per_user = Integer(
        0,
        config=True,
        help="With auth_enabled and use_named_servers: servers one user may run at once "
        "(0: no limit). Over it, the launch fails with a clear message.",
    ).tag(env="JUPYTERHUB_NAMED_SERVER_LIMIT_PER_USER")
    per_repo_quota = Integer(
        0,
        config=True,
        help="Servers that may run at once from one repository (0: no limit).",
    )
    per_repo_quota_higher = Integer(
        0,
        config=True,
        help="Per-repository limit for specs matching a provider's high_quota_specs "
        "(0: use per_repo_quota).",
    )
    pod_quota = Integer(
        None,
        allow_none=True,
        config=True,
        help="Servers that may run at once in total (None: no limit; 0: no launches, "
        "e.g. during maintenance).",
    )

    @default("use_named_servers")
    def _default_use_named_servers(self) -> bool:
        return os.environ.get("JUPYTERHUB_ALLOW_NAMED_SERVERS", "").lower() == "true"

    @default("named_server_limit_per_user")
    def _default_named_server_limit(self) -> int:
        value = os.environ.get("JUPYTERHUB_NAMED_SERVER_LIMIT_PER_USER", "")
        return int(value) if value.isdigit() else 0

    extra_log_secrets = List(
        Unicode(), config=True, help="Further values that must never appear in logs or events."
    )

    # --- operations: access control, abuse protection, observability ---------
    # (wired by binderbuild.operations.install; see docs/operations.md)
    auth_enabled = Bool(
        False,
        config=True,
        help="""Require a JupyterHub login (BinderHub's option): binderbuild runs as a hub
        service, pages and /build need a hub user (OAuth cookie or 'Authorization: token'),
        and servers start for that user instead of a temporary one.""",
    )
    api_tokens = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Bearer tokens of programmatic callers: {token: caller name}. A request with
        'Authorization: Bearer <token>' is not rate limited; with auth_enabled it may
        only build (build_only=true). The name appears in logs, the token never.""",
    )
    cors_allow_origin = Unicode(
        "",
        config=True,
        help="""Value of Access-Control-Allow-Origin on every response, e.g.
        'https://myfrontend.org' or '*', so pages on other sites can call the API
        (EventSource on /build). Empty: no CORS header.""",
    )
    enable_api_only_mode = Bool(
        False,
        config=True,
        help="""Serve only the API (/build, /versions, /health, /metrics, /api/...):
        no home page, launch pages or badges; anything else is a JSON 404.""",
    )
    ban_networks = Dict(
        key_trait=Unicode(),
        value_trait=Unicode(),
        config=True,
        help="""Networks whose requests are refused with 403 before any work:
        {CIDR: label}, e.g. {'198.51.100.0/24': 'crawler'}. The label is logged.""",
    )
    trusted_proxies = List(
        Unicode(),
        config=True,
        help="""CIDR networks of the reverse proxies / load balancers in front of the
        service. X-Forwarded-For is believed only from them, to find the client IP used
        by the rate limit and ban_networks. Empty: the TCP peer is the client.""",
    ).tag(env="BINDERBUILD_TRUSTED_PROXIES")
    build_token_secret = Unicode(
        "",
        config=True,
        help="""Key that signs the launch page's build tokens (which bypass the rate
        limit). Replicas behind one load balancer must share it. Empty: a random key
        per process.""",
    ).tag(env="BINDERBUILD_BUILD_TOKEN_SECRET")
    build_token_expires_seconds = Integer(
        300, config=True, help="Lifetime of a build token, in seconds."
    )
    build_token_check_origin = Bool(
        True,
        config=True,
        help="Accept a build token only from the origin (host) of the page it was issued to.",
    )
    json_logs = Bool(
        False,
        config=True,
        help="""Write the service log as JSON lines for log pipelines (one object per line
        with time, level, logger, message, request_id, build_id) instead of text.""",
    ).tag(env="BINDERBUILD_JSON_LOGS")
    metrics_repo_labels = Bool(
        False,
        config=True,
        help="""Add a 'repo' label (repository URL) to the build and launch counters of
        /metrics. Off by default: every repository becomes its own time series.""",
    )
    health_check_ttl = Float(
        5.0,
        config=True,
        help="Seconds each /health dependency check is cached (probe storms cost one check).",
    )

    @default("trusted_proxies")
    def _default_trusted_proxies(self) -> list[str]:
        raw = os.environ.get("BINDERBUILD_TRUSTED_PROXIES", "")
        return [part.strip() for part in raw.split(",") if part.strip()]

    @default("build_token_secret")
    def _default_build_token_secret(self) -> str:
        return os.environ.get("BINDERBUILD_BUILD_TOKEN_SECRET") or os.environ.get(
            "BINDERHUB_BUILD_TOKEN_SECRET", ""
        )

    @default("json_logs")
    def _default_json_logs(self) -> bool:
        return os.environ.get("BINDERBUILD_JSON_LOGS", "").lower() in ("1", "true", "yes")

    @validate("allowed_internal_networks")
    def _valid_allowed(self, proposal: Any) -> Any:
        try:
            parse_allowed(list(proposal["value"]))
        except ValueError as exc:
            raise ConfigError(f"allowed_internal_networks: {exc}") from None
        return proposal["value"]

    @validate("ban_networks", "trusted_proxies")
    def _valid_networks(self, proposal: Any) -> Any:
        try:
            parse_networks(list(proposal["value"]))
        except ValueError as exc:
            raise ConfigError(f"{proposal['trait'].name}: {exc}") from None
        return proposal["value"]

    tornado_settings = Dict(config=True, help="Extra settings passed to the Tornado application.")

    @default("log_level")
    def _default_log_level(self) -> int:
        return logging.INFO

    @default("repo_providers")
    def _default_providers(self) -> dict[str, Any]:
        return dict(DEFAULT_PROVIDERS)

    @default("hub_api_token")
    def _default_hub_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @validate("base_url")
    def _valid_base_url(self, proposal: Any) -> str:
        value = "/" + str(proposal["value"]).strip("/") + "/"
        return value.replace("//", "/")

    # --- wiring ------------------------------------------------------------

    # traitlets declares ``path`` more narrowly than it accepts.
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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Imported here, not at module level: the Kubernetes and hub classes
        # pull in their (heavier) libraries only when the app really starts.
        classes: list[type[Any]] = [import_item(name) for name in CONFIGURABLES]
        for cls in self.repo_providers.values():
            classes.append(plugins.load("binderbuild.providers", cls, RepoProvider))
        self.classes = [type(self), *dict.fromkeys(classes)]

    def initialize(self, argv: list[str] | None = None) -> None:
        super().initialize(argv)
        if self.config_file and os.path.exists(self.config_file):
            self.load_config_file(self.config_file)
        self.log.setLevel(self.log_level)
        self._setup_logging()

    def _setup_logging(self) -> None:
        """binderbuild.*, tornado.* and the application log write to stderr at
        log_level, as text or JSON lines (json_logs), with request/build ids."""
        # Application.log_level is a traitlets Enum (int or level name).
        level = self.log_level if isinstance(self.log_level, int | str) else logging.INFO
        configure_logging(level, "json" if self.json_logs else "text", app_logger=self.log)

    def make_tornado_app(self, services: Services) -> tornado.web.Application:
        base = self.base_url
        spec_pattern = r"(?P<provider_id>[^/]+)/(?P<spec>.+)"
        handlers: list[Any] = [
            (rf"{base}build/{spec_pattern}", BuildHandler),
            (rf"{base}versions", VersionsHandler),
            (rf"{base}health", HealthHandler),
            (rf"{base}metrics", MetricsHandler),
            (rf"{base}api/repoproviders", RepoProvidersHandler),
        ]
        handlers += api_handlers(base)
        handlers += admin_handlers(base)
        handlers += services.extra_handlers
        handlers += page_handlers(base, self)
        settings: dict[str, Any] = {
            "binderbuild": services,
            "template_path": str(ROOT / "templates"),
            "static_path": str(ROOT / "static"),
            "static_url_prefix": f"{base}static/",
            "compress_response": False,
        }
        settings.update(page_settings(self))
        settings.update(self.tornado_settings)
        if self.enable_api_only_mode:
            handlers = api_only(handlers, base) + [(rf"{base}.*", NotFoundHandler)]
        if self.cors_allow_origin:
            headers: dict[str, str] = dict(settings.get("extra_headers", {}))
            headers["Access-Control-Allow-Origin"] = self.cors_allow_origin
            settings["extra_headers"] = headers
        if self.auth_enabled:
            # Signs the OAuth login cookie; replicas share it via tornado_settings.
            settings.setdefault("cookie_secret", os.urandom(32))
        return BinderBuildWebApp(handlers, **settings)

    def compose(self) -> Services:
        """Every long-lived service, built once (``binderbuild.services``)."""
        return compose(self, DockerRegistry(parent=self, log=self.log))

    async def serve(self) -> None:
        services = self.compose()
        await start(services)
        app = self.make_tornado_app(services)
        # Tornado buffers a whole request body before any handler runs (100 MiB
        # by default, per connection); the only body binderbuild reads is the
        # small JSON of POST /api/builds, so larger ones are refused (400) early.
        server = HTTPServer(
            app,
            xheaders=False,
            idle_connection_timeout=3600,
            max_body_size=MAX_REQUEST_BODY,
        )
        server.listen(self.port, self.ip)
        if not self.launch_host and self.ip not in ("127.0.0.1", "::1", "localhost"):
            self.log.warning(
                "BinderBuild.launch_host is not set: links this service hands out use "
                "%s unless a request names a loopback host. Set launch_host to the public URL.",
                services.settings.listen_origin,
            )
        self.log.info("binderbuild %s listening on http://%s:%s%s", __version__, self.ip, self.port, self.base_url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        self.log.info("shutting down")
        server.stop()
        await shutdown(services)

    def start(self) -> None:
        asyncio.run(self.serve())


def main(argv: list[str] | None = None) -> None:
    app = BinderBuild.instance()
    try:
        app.initialize(argv)
        app.start()
    except ConfigError as exc:
        print(f"binderbuild: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
