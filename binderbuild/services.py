"""The composition root: every long-lived object of the service, built once.

``compose(app)`` reads the application's configuration and constructs each
service in dependency order, handing every collaborator its settings and
hooks as constructor arguments. The result is a frozen ``Services``; nothing
completes it later, and handlers only read it (``BaseHandler.ctx``).

Order, and why:

1. scrubber, HTTP client, providers: everything below may log or fetch.
2. metrics (needs the providers' hosts to name upstreams), event log.
3. history store, usage tracker and the builds API state (their hooks).
4. image store, builder (``BuildResources``: shared parts, and the history
   hook for builds it finds that no manager started).
5. the hub launcher and its warm pool, before the build manager: the pool
   drains servers of an image that is built again (a manager hook).
6. build manager, with every on_started/on_finished hook: write-ahead and
   finished history, metrics, the known-images cache, usage, the pool.
7. the launcher the pipeline uses, wrapped for metrics *before* the pipeline
   gets it, so the pipeline and ``Services.launcher`` are the same object.
8. pipeline (with its run observers: the launch event log, usage).
9. access control: tokens, hub login, client IPs, bans, rate limit, and the
   admission checks built from them.
10. health checks over all of the above; the lifecycle cleaners.

``start(services)`` starts the backend, marks builds a previous process left
as interrupted, starts the pool and the cleaners;
``shutdown(services)`` releases them in reverse.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import TYPE_CHECKING, Any, cast

from binderbuild import __version__, plugins
from binderbuild.auth import (
    ApiTokens,
    AuthCheck,
    HubUserResolver,
    is_authenticated_caller,
    make_hub_auth,
    oauth_callback_handler,
)
from binderbuild.builders.base import Builder, BuildResources
from binderbuild.builds import BuildManager
from binderbuild.clientip import BannedNetworks, ClientIPResolver
from binderbuild.errors import ConfigError, Forbidden, RateLimited
from binderbuild.eventlog import EventLog
from binderbuild.handlers.api import BuildsAPI
from binderbuild.handlers.info import HealthChecker
from binderbuild.history import (
    INTERRUPTED_ELSEWHERE_REASON,
    INTERRUPTED_REASON,
    BuildHistory,
    external_build_recorder,
    history_recorder,
    history_write_ahead,
)
from binderbuild.http import HttpClient
from binderbuild.hub import HubLauncher
from binderbuild.launcher import Launcher
from binderbuild.lifecycle import (
    DockerEngine,
    EngineImageCleaner,
    Lifecycle,
    RegistryLifecycle,
    Sweeper,
    UsageTracker,
)
from binderbuild.logging_setup import attach_scrubber
from binderbuild.metrics import InstrumentedLauncher, Metrics, Refusal, UpstreamClassifier
from binderbuild.models import BuildRequest
from binderbuild.netsafety import AllowRule, parse_allowed
from binderbuild.operations import collect_secrets
from binderbuild.pipeline import KnownImages, Pipeline, PipelineSettings
from binderbuild.providers.base import RepoProvider
from binderbuild.ratelimit import RateLimitCheck, RateLimiter
from binderbuild.registry import ImageStore, LocalImageStore, RegistryClient
from binderbuild.secrets import Scrubber
from binderbuild.tokens import BuildTokens
from binderbuild.units import parse_bytes
from binderbuild.warmpool import PoolBackend, WarmPoolLauncher, pipeline_preparer

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth
    from tornado.httputil import HTTPServerRequest
    from tornado.web import RequestHandler

    from binderbuild.app import BinderBuild, DockerRegistry

log = logging.getLogger("binderbuild.services")


@dataclass(frozen=True)
class Settings:
    """Plain values read once from configuration; handlers never see traitlets."""

    base_url: str = "/"
    launch_host: str = ""
    keepalive_interval: float = 25.0
    allow_build_only: bool = True
    require_build_only: bool = False
    image_prefix: str = ""
    version_info: Mapping[str, Any] = field(default_factory=dict)
    # The service's own address, for URLs when launch_host is unset and the
    # request's Host header is not a loopback name.
    listen_origin: str = "http://127.0.0.1:8585"


# Admission checks run before a stream starts (auth, rate limit). They raise
# RequestError subclasses and may set response headers.
AdmissionCheck = Callable[["RequestHandler", BuildRequest], Awaitable[None]]
Route = tuple[Any, ...]


@dataclass(frozen=True)
class Services:
    """Every long-lived object of one running service."""

    settings: Settings
    scrubber: Scrubber
    http: HttpClient
    providers: Mapping[str, RepoProvider]
    metrics: Metrics
    eventlog: EventLog
    history: BuildHistory
    builds_api: BuildsAPI
    image_store: ImageStore
    builder: Builder
    builds: BuildManager
    # The launcher the pipeline uses (instrumented for metrics); None: build only.
    launcher: Launcher | None
    pipeline: Pipeline
    build_tokens: BuildTokens
    api_tokens: ApiTokens
    client_ip_resolver: ClientIPResolver
    banned_networks: BannedNetworks
    rate_limiter: RateLimiter
    admission_checks: tuple[AdmissionCheck, ...]
    health: HealthChecker
    # With auth_enabled: the hub login and who is behind a request.
    hub_auth: HubOAuth | None = None
    user_resolver: HubUserResolver | None = None
    # Routes some services add (the OAuth callback with auth_enabled).
    extra_handlers: tuple[Route, ...] = ()
    # Image use tracking and the periodic image cleaners (issue 16).
    lifecycle: Lifecycle | None = None
    # Started servers handed out on launch (issue 15); None: every launch is cold.
    warm_pool: WarmPoolLauncher | None = None

    def client_ip(self, request: HTTPServerRequest) -> str:
        return self.client_ip_resolver(request)

    async def current_user_name(self, handler: RequestHandler) -> str | None:
        return await self.user_resolver(handler) if self.user_resolver else None

    async def admit(self, handler: RequestHandler, request: BuildRequest) -> None:
        for check in self.admission_checks:
            await check(handler, request)


# --- the composition root ---------------------------------------------------------


def compose(app: BinderBuild, registry_config: DockerRegistry) -> Services:
    """Create every long-lived service once. Called inside the running loop."""
    scrubber = Scrubber([app.hub_api_token, *app.extra_log_secrets, registry_config.password])
    http = HttpClient(user_agent=f"binderbuild/{__version__}")
    internal_networks = parse_allowed(app.allowed_internal_networks)
    providers = make_providers(app, http, internal_networks)
    for provider in providers.values():
        scrubber.add(*provider.secret_values())

    registry_url = registry_config.url if app.use_registry else ""
    metrics = Metrics(
        repo_labels=app.metrics_repo_labels,
        scrubber=scrubber,
        classifier=UpstreamClassifier.from_providers(
            providers,
            [registry_url] if registry_url else [],
            [u for u in (app.hub_url, app.hub_url_local) if u],
        ),
        provider_ids=providers,
    )
    # The client exists before metrics (providers need it); this is the one
    # observer it gets, added here and nowhere else.
    http.observers.append(metrics.observe_http)
    eventlog = EventLog(parent=app, scrubber=scrubber, log=app.log)

    api_tokens = ApiTokens(app.api_tokens)
    history = BuildHistory(app.data_dir, parent=app, log=app.log)
    usage = UsageTracker(history)
    builds_api = BuildsAPI(
        parent=app, log=app.log, providers=providers, history=history, api_tokens=api_tokens
    )

    docker_client = docker_client_for(app)
    image_store = make_image_store(app, registry_config, http, docker_client)
    builder = make_builder(
        app,
        BuildResources(
            scrubber=scrubber,
            docker_host=app.build_docker_host,
            memory_limit=parse_bytes(app.build_memory_limit),
            registry_credentials=(
                {
                    "registry": registry_config.url,
                    "username": registry_config.username,
                    "password": registry_config.password,
                }
                if app.use_registry
                else {}
            ),
            allowed_internal_networks=tuple(internal_networks),
            docker_client=docker_client,
            # Builds the backend saw end without the manager (build pods
            # adopted from a replica that died) are kept in history too.
            on_external_build=(external_build_recorder(history, builds_api.repo_of),),
        ),
    )
    known_images = KnownImages(ttl=app.image_exists_cache_ttl)
    # The launcher before the build manager: a warm pool drains the servers
    # of an image that is built again (one of the manager's hooks).
    hub_launcher = make_launcher(app, http, providers)
    warm_pool = make_warm_pool(app, hub_launcher, metrics)
    builds = BuildManager(
        builder,
        concurrency=app.concurrent_build_limit or os.cpu_count() or 1,
        build_timeout=app.build_timeout,
        idle_timeout=app.build_idle_timeout,
        abandoned_grace=app.abandoned_build_grace,
        max_log_bytes=parse_bytes(app.build_log_max_bytes),
        max_line_bytes=parse_bytes(app.build_log_line_max_bytes),
        # Write-ahead: a build is in the history while it waits in the queue
        # and before the backend starts it.
        on_queued=[history_write_ahead(history, builds_api.repo_of)],
        # A registry that stops answering during a push ends the build.
        push_watch=(
            image_store.wait_unresponsive if isinstance(image_store, RegistryClient) else None
        ),
        on_started=[metrics.build_started, history_write_ahead(history, builds_api.repo_of)],
        on_finished=[
            known_images.remember_built,
            metrics.build_finished_hook,
            history_recorder(history, builds_api.repo_of),
            usage.remember_built,
            *([warm_pool.image_rebuilt] if warm_pool is not None else []),
        ],
    )
    metrics.watch_queue(builds)

    launcher = warm_pool if warm_pool is not None else hub_launcher
    if launcher is not None:
        launcher = InstrumentedLauncher(launcher, metrics)
    pipeline = Pipeline(
        providers=providers,
        image_store=image_store,
        builds=builds,
        known_images=known_images,
        launcher=launcher,
        settings=PipelineSettings(
            image_prefix=app.image_prefix,
            resolve_cache_ttl=app.resolve_cache_ttl,
            max_concurrent_resolutions=app.resolve_concurrency_limit,
        ),
        observers=[eventlog.observe_run, usage.observe_run],
    )

    # Every secret-named option (also of the providers, builder, launcher and
    # registry) is scrubbed from logs and events from here on.
    owners = [*providers.values(), builder, launcher, registry_config]
    scrubber.add(*collect_secrets(app, [o for o in owners if o is not None]))
    build_tokens = make_build_tokens(app, scrubber)
    hub_auth, user_resolver, extra_handlers = make_hub_login(app, api_tokens, scrubber)
    attach_scrubber(scrubber, [app.log])
    rate_limiter = RateLimiter(parent=app, log=app.log)
    admission_checks = (
        counted(
            AuthCheck(auth_enabled=app.auth_enabled, api_tokens=api_tokens, base_url=app.base_url),
            metrics,
        ),
        counted(
            RateLimitCheck(
                rate_limiter,
                build_tokens,
                exempt=lambda handler, request: is_authenticated_caller(
                    handler, request, api_tokens
                ),
            ),
            metrics,
        ),
    )

    lifecycle = make_lifecycle(
        app,
        usage,
        docker_client,
        image_store,
        builds,
        known_images,
        on_image_removed=warm_pool.image_removed if warm_pool is not None else None,
        work_root=getattr(builder, "work_root", None),
    )
    # A build that ran out of disk space starts a cleanup (issue 16).
    builds.on_finished = (*builds.on_finished, lifecycle.build_finished)
    # A push the registry refused for lack of disk space says so (issue 16).
    builds.classify_failure = lifecycle.classify_failure
    metrics.watch_lifecycle(lifecycle.stats)

    checks: dict[str, tuple[Callable[[], Awaitable[dict[str, Any]]], bool]] = {
        "registry" if app.use_registry else "image-store": (image_store.check, True),
        "build-backend": (builder.check, True),
        "queue": (lambda: queue_check(builds), False),
    }
    if launcher is not None:
        checks["hub"] = (launcher.check, True)
    if warm_pool is not None:
        checks["warm-pool"] = (warm_pool.health, False)
    if lifecycle.engine_cleaner is not None or lifecycle.registry is not None:
        checks["disk"] = (lifecycle.health, True)
    health = HealthChecker(checks, ttl=app.health_check_ttl, scrub=scrubber.scrub)

    return Services(
        settings=Settings(
            base_url=app.base_url,
            launch_host=app.launch_host,
            keepalive_interval=app.keepalive_interval,
            allow_build_only=app.allow_build_only,
            require_build_only=app.require_build_only or launcher is None,
            image_prefix=app.image_prefix,
            version_info=version_info(),
            listen_origin=listen_origin(app.ip, app.port),
        ),
        scrubber=scrubber,
        http=http,
        providers=providers,
        metrics=metrics,
        eventlog=eventlog,
        history=history,
        builds_api=builds_api,
        image_store=image_store,
        builder=builder,
        builds=builds,
        launcher=launcher,
        pipeline=pipeline,
        build_tokens=build_tokens,
        api_tokens=api_tokens,
        client_ip_resolver=ClientIPResolver(app.trusted_proxies),
        banned_networks=BannedNetworks(app.ban_networks),
        rate_limiter=rate_limiter,
        admission_checks=admission_checks,
        health=health,
        hub_auth=hub_auth,
        user_resolver=user_resolver,
        extra_handlers=extra_handlers,
        lifecycle=lifecycle,
        warm_pool=warm_pool,
    )


async def start(services: Services) -> None:
    """Start what needs the running loop before the first request. A backend
    that cannot start yet (cluster unreachable) is logged, not fatal: builds
    start it lazily and /health reports it meanwhile."""
    try:
        # Also removes what builds of a killed predecessor left (DockerBuilder).
        await services.builder.start()
    except Exception as exc:
        log.warning("build backend did not start yet: %s", services.scrubber.scrub(str(exc)))
    # Builds a killed predecessor was running: stored as interrupted.
    await services.history.mark_interrupted(
        reason=INTERRUPTED_REASON
        if services.builder.needs_local_engine
        else INTERRUPTED_ELSEWHERE_REASON
    )
    if services.lifecycle is not None:
        services.lifecycle.start()
    if services.warm_pool is not None:
        services.warm_pool.start(
            pipeline_preparer(services.pipeline, services.settings.launch_host)
        )


async def shutdown(services: Services) -> None:
    """Release everything, in reverse order of construction."""
    # A backend whose builds outlive this process (build pods) stops owning
    # them first, so closing the manager does not cancel them and a restarted
    # replica can re-attach.
    await services.builder.begin_shutdown()
    await services.builds.close()
    services.eventlog.close()
    # Stops the cleaners and writes the last image uses, before the history closes.
    if services.lifecycle is not None:
        await services.lifecycle.close()
    # After builds.close(): interrupted builds are recorded too.
    await services.history.close()
    if services.launcher is not None:
        await services.launcher.close()
    await services.builder.close()
    services.http.close()


# --- the parts ------------------------------------------------------------------


def make_providers(
    app: BinderBuild, http: HttpClient, internal_networks: Sequence[AllowRule]
) -> dict[str, RepoProvider]:
    providers: dict[str, RepoProvider] = {}
    for prefix, cls in app.repo_providers.items():
        klass = plugins.load("binderbuild.providers", cls, RepoProvider)
        providers[prefix] = klass(
            parent=app, http=http, allowed_internal_networks=list(internal_networks), log=app.log
        )
    return providers


def docker_client_for(app: BinderBuild) -> Any:
    """A Docker engine client when builds run on this machine, else None."""
    klass = plugins.load("binderbuild.builders", app.build_class, Builder)
    if not klass.needs_local_engine:
        # Builds run elsewhere (build pods); the registry is the only image
        # store, so this process needs no Docker engine at all.
        if not app.use_registry:
            raise ConfigError(
                f"build_class {app.build_class!r} builds away from this machine: "
                "set BinderBuild.use_registry = True and DockerRegistry.url."
            )
        return None
    import docker

    try:
        if app.build_docker_host:
            return docker.DockerClient(base_url=app.build_docker_host)
        return docker.from_env()
    except docker.errors.DockerException as exc:
        raise ConfigError(
            f"Cannot reach the Docker engine ({exc}). Start it (scripts/setup.sh) "
            "or set BinderBuild.build_docker_host."
        ) from None


def make_image_store(
    app: BinderBuild, registry_config: DockerRegistry, http: HttpClient, docker_client: Any
) -> ImageStore:
    if not app.use_registry:
        return LocalImageStore(docker_client)
    if not registry_config.url:
        raise ConfigError("use_registry is True but DockerRegistry.url is empty.")
    return RegistryClient(
        http,
        registry_config.url,
        registry_config.username,
        registry_config.password,
        registry_config.timeout,
        registry_config.unresponsive_timeout,
    )


def make_lifecycle(
    app: BinderBuild,
    usage: UsageTracker,
    docker_client: Any,
    image_store: ImageStore,
    builds: BuildManager,
    known_images: KnownImages,
    on_image_removed: Callable[[str], None] | None = None,
    work_root: str | None = None,
) -> Lifecycle:
    """Usage tracking, and the cleaners that are enabled: the engine's and
    the sweeps when this machine has the engine, the registry's when images
    go to one (present for the health check, deleting only when enabled)."""
    engine_cleaner: EngineImageCleaner | None = None

    def removed(image: str) -> None:
        known_images.cache.discard(image)
        if on_image_removed is not None:
            on_image_removed(image)

    if docker_client is not None:
        engine_cleaner = EngineImageCleaner(
            DockerEngine(docker_client),
            parent=app,
            log=app.log,
            image_prefix=app.image_prefix,
            usage=usage,
            in_use_names=lambda: {b.image_name for b in builds.builds() if not b.state.finished},
            # A removed image must be looked up again (and rebuilt), not remembered.
            on_removed=removed,
        )
        if not engine_cleaner.enabled:
            engine_cleaner = None
    registry: RegistryLifecycle | None = None
    if isinstance(image_store, RegistryClient):
        registry = RegistryLifecycle(
            image_store,
            parent=app,
            log=app.log,
            image_prefix=app.image_prefix,
            usage=usage,
            on_removed=removed,
        )
        if registry.enabled and not registry.budget:
            raise ConfigError("RegistryLifecycle.enabled needs RegistryLifecycle.budget (e.g. '100G').")
    sweeper: Sweeper | None = None
    if docker_client is not None:
        sweeper = Sweeper(
            docker_client,
            parent=app,
            log=app.log,
            image_prefix=app.image_prefix,
            work_root=work_root,
        )
        if not sweeper.enabled:
            sweeper = None
    return Lifecycle(usage, engine_cleaner, registry, sweeper, builds)


def make_builder(app: BinderBuild, resources: BuildResources) -> Builder:
    klass: type[Builder] = plugins.load("binderbuild.builders", app.build_class, Builder)
    return klass(parent=app, log=app.log, resources=resources)


def make_launcher(
    app: BinderBuild, http: HttpClient, providers: Mapping[str, RepoProvider]
) -> Launcher | None:
    if app.require_build_only:
        return None
    name = app.launcher_class
    if not name:
        if not app.hub_url:
            return None
        name = "binderbuild.hub.HubLauncher"
    klass = plugins.load("binderbuild.launchers", name, Launcher)
    from binderbuild.hub import HubSettings

    # The launcher contract's constructor: traitlets parent and log, the
    # shared HTTP client, the providers (per-spec quotas: high_quota_specs,
    # spec_config "quota") and the application's launch options.
    launcher: Launcher = klass(
        parent=app,
        log=app.log,
        http=http,
        providers=providers,
        settings=HubSettings.from_app(app),
    )
    return launcher


def make_warm_pool(
    app: BinderBuild, launcher: Launcher | None, metrics: Metrics
) -> WarmPoolLauncher | None:
    """A warm pool around the hub launcher when one is configured
    (``WarmPoolLauncher.images`` or ``.popular_images``). Anonymous
    deployments only: signed-in launches are always cold."""
    if launcher is None:
        return None
    # The pool's options decide whether there is one; the launcher is checked after.
    pool = WarmPoolLauncher(
        inner=cast(PoolBackend, launcher), metrics=metrics, parent=app, log=app.log
    )
    if not pool.enabled:
        return None
    if app.auth_enabled:
        raise ConfigError(
            "WarmPoolLauncher needs an anonymous Binder: with auth_enabled every server belongs "
            "to the signed-in user who asked for it (docs/launching.md#warm-pools)."
        )
    if not isinstance(launcher, HubLauncher):
        raise ConfigError(
            f"WarmPoolLauncher works with binderbuild.hub.HubLauncher, not {type(launcher).__name__}."
        )
    metrics.watch_pool(pool)
    return pool


def make_build_tokens(app: BinderBuild, scrubber: Scrubber) -> BuildTokens:
    """The one BuildTokens: pages issue what the rate limit verifies."""
    secret = app.build_token_secret
    if not secret:
        # One replica may sign with a per-process key; several must share one.
        log.warning(
            "Generating a random build token secret; set BinderBuild.build_token_secret "
            "when running more than one replica."
        )
        secret = secrets.token_hex(32)
        scrubber.add(secret)
    return BuildTokens(
        secret,
        expires_seconds=app.build_token_expires_seconds,
        check_origin=app.build_token_check_origin,
    )


def make_hub_login(
    app: BinderBuild, api_tokens: ApiTokens, scrubber: Scrubber
) -> tuple[HubOAuth | None, HubUserResolver | None, tuple[Route, ...]]:
    """With auth_enabled: the hub OAuth client, the user resolver and the
    OAuth callback route. Otherwise nothing."""
    if not app.auth_enabled:
        return None, None, ()
    hub_auth = make_hub_auth(
        parent=app,
        api_token=app.hub_api_token,
        hub_url=app.hub_url,
        # The hub's own address when the operator gave one (no round trip
        # through the public proxy).
        hub_api_url=app.hub_url_local,
        base_url=app.base_url,
        launch_host=app.launch_host,
    )
    scrubber.add(hub_auth.api_token)
    if not hub_auth.oauth_redirect_uri.startswith(("http://", "https://")):
        log.warning(
            "auth_enabled: the OAuth callback %s is not an absolute URL, so browser "
            "logins will fail; set BinderBuild.launch_host (this service's public URL) "
            "or JUPYTERHUB_OAUTH_CALLBACK_URL.",
            hub_auth.oauth_redirect_uri,
        )
    return (
        hub_auth,
        HubUserResolver(hub_auth, api_tokens),
        (oauth_callback_handler(hub_auth),),
    )


def counted(check: AdmissionCheck, metrics: Metrics) -> AdmissionCheck:
    """An admission check whose refusals are counted in /metrics."""

    async def counted_check(handler: RequestHandler, request: BuildRequest) -> None:
        try:
            await check(handler, request)
        except RateLimited:
            metrics.refused(Refusal.RATE_LIMIT)
            raise
        except Forbidden:
            metrics.refused(Refusal.FORBIDDEN)
            raise

    return counted_check


async def queue_check(builds: BuildManager) -> dict[str, Any]:
    # paused: a maintenance window holds every build (they queue meanwhile).
    return {"running": builds.running, "queued": builds.queue_length, "paused": builds.paused}


def listen_origin(ip: str, port: int) -> str:
    """``http://ip:port`` of the service; a wildcard address becomes loopback."""
    if ip in ("", "0.0.0.0", "::"):
        ip = "127.0.0.1"
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


def version_info() -> dict[str, Any]:
    try:
        r2d = version("jupyter-repo2docker")
    except Exception:
        r2d = "unknown"
    return {
        "binderbuild": __version__,
        "builder": f"repo2docker {r2d}",
        "builder_info": {"repo2docker-version": r2d},
    }
