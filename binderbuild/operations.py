"""Wires the operator-facing services into a built ``Context``.

``install(app, ctx)`` is the one call ``BinderBuild.build_context`` makes:
metrics, the launch event log, client-IP resolution behind proxies, banned
networks, access control and the rate limit, and makes sure every secret
option reaches the scrubber. ``BinderBuildWebApp`` is the Tornado
application: it gives every request an id (logged on every line, echoed as
``X-Request-Id``) and refuses banned networks before any handler runs.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import tornado.escape
import tornado.web
from tornado import httputil
from traitlets.config import Configurable

from binderbuild.auth import (
    ApiTokens,
    AuthCheck,
    HubUserResolver,
    is_authenticated_caller,
    make_hub_auth,
    oauth_callback_handler,
)
from binderbuild.clientip import BannedNetworks, ClientIPResolver
from binderbuild.errors import Forbidden, RateLimited
from binderbuild.eventlog import EventLog
from binderbuild.logging_setup import attach_scrubber, new_request_id, set_request_id
from binderbuild.metrics import Metrics, Refusal, UpstreamClassifier
from binderbuild.models import BuildRequest
from binderbuild.ratelimit import RateLimitCheck, RateLimiter
from binderbuild.tokens import BuildTokens

if TYPE_CHECKING:
    from binderbuild.context import Context

log = logging.getLogger("binderbuild.operations")

# Option names whose values are secrets wherever they appear (any class).
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential|api_key|apikey|private_key)")
# key=value lines (git credentials) whose value is the secret part.
_SECRET_LINE = re.compile(r"(?im)^\s*(?:password|token|secret)\s*=\s*(\S.*?)\s*$")


def _secret_strings(value: Any) -> Iterable[str]:
    """The strings of a secret option's value (keys too: api_tokens maps
    token -> name)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        if value:
            yield value
            # key=value lines (git credentials), also with BinderHub's literal "\\n".
            for match in _SECRET_LINE.finditer(value.replace("\\n", "\n")):
                yield match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_strings(key)
            yield from _secret_strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _secret_strings(item)


def _walk_config(value: Any) -> Iterable[str]:
    """Secret values anywhere in a config tree, also nested (per-spec
    ``spec_config`` entries carry their own access tokens)."""
    if hasattr(value, "items"):
        for key, item in value.items():
            if str(key) in _SECRET_KEYS_ONLY and hasattr(item, "keys"):
                yield from (str(k) for k in item.keys() if k)
            elif SECRET_NAME.search(str(key)) and str(key) not in _NOT_SECRET:
                yield from _secret_strings(item)
            else:
                yield from _walk_config(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk_config(item)


def collect_secrets(app: Any, configurables: Iterable[Any] = ()) -> set[str]:
    """Every value of a secret-named option: in the loaded config (any
    section, nested, also options no class defines yet) and on the live
    objects (values that came from environment variables or defaults), plus
    what providers declare through ``secret_values()``."""
    found: set[str] = set(_walk_config(getattr(app, "config", {}) or {}))
    for obj in [app, *configurables]:
        if isinstance(obj, Configurable):
            for name in obj.trait_names(config=True):
                value = getattr(obj, name, None)
                if name in _SECRET_KEYS_ONLY and isinstance(value, dict):
                    found.update(str(k) for k in value if k)
                elif SECRET_NAME.search(name) and name not in _NOT_SECRET:
                    found.update(_secret_strings(value))
        declared = getattr(obj, "secret_values", None)
        if callable(declared):
            found.update(v for v in declared() if isinstance(v, str) and v)
    return found


# Secret-sounding option names that hold no secret.
_NOT_SECRET = {
    "build_token_expires_seconds",
    "build_token_check_origin",
}
# {token: caller name}: the names are meant for the logs.
_SECRET_KEYS_ONLY = {"api_tokens"}


def _counted(check: Callable[[Any, BuildRequest], Awaitable[None]], metrics: Metrics) -> Any:
    async def counted(handler: Any, request: BuildRequest) -> None:
        try:
            await check(handler, request)
        except RateLimited:
            metrics.refused(Refusal.RATE_LIMIT)
            raise
        except Forbidden:
            metrics.refused(Refusal.FORBIDDEN)
            raise

    return counted


def install(app: Any, ctx: Context) -> None:
    """Attach metrics, event log, access control and rate limit to ``ctx``."""
    providers = list(ctx.providers.values())
    objects = [*providers, ctx.builder, ctx.launcher, ctx.services.get("registry_config")]
    ctx.scrubber.add(*collect_secrets(app, [o for o in objects if o is not None]))
    attach_scrubber(ctx.scrubber, [app.log])

    metrics = Metrics(repo_labels=app.metrics_repo_labels, scrubber=ctx.scrubber)
    registry_url = ""
    if getattr(app, "use_registry", False):
        registry_config = ctx.services.get("registry_config")
        registry_url = getattr(registry_config, "url", "") or ""
    hub_urls = [u for u in (app.hub_url, getattr(app, "hub_url_local", "")) if u]
    metrics.attach(
        ctx,
        UpstreamClassifier.from_providers(
            ctx.providers, [registry_url] if registry_url else [], hub_urls
        ),
    )
    ctx.services["metrics"] = metrics

    eventlog = EventLog(parent=app, scrubber=ctx.scrubber, log=app.log)
    ctx.pipeline.observers.append(eventlog.observe_run)
    ctx.services["eventlog"] = eventlog

    ctx.client_ip_resolver = ClientIPResolver(app.trusted_proxies)
    ctx.services["banned_networks"] = BannedNetworks(app.ban_networks)

    if "build_tokens" not in ctx.services:
        secret = app.build_token_secret
        if not secret:
            # One replica may sign with a per-process key; several must share one.
            log.warning(
                "Generating a random build token secret; set BinderBuild.build_token_secret "
                "when running more than one replica."
            )
            secret = secrets.token_hex(32)
            ctx.scrubber.add(secret)
        ctx.services["build_tokens"] = BuildTokens(
            secret,
            expires_seconds=app.build_token_expires_seconds,
            check_origin=app.build_token_check_origin,
        )
    tokens: BuildTokens = ctx.services["build_tokens"]

    api_tokens = ApiTokens(app.api_tokens)
    ctx.services["api_tokens"] = api_tokens
    if app.auth_enabled:
        hub_auth = make_hub_auth(
            parent=app,
            api_token=app.hub_api_token,
            hub_url=app.hub_url,
            # The hub's own address when the operator gave one (no round trip
            # through the public proxy).
            hub_api_url=getattr(app, "hub_url_local", ""),
            base_url=app.base_url,
            launch_host=app.launch_host,
        )
        ctx.scrubber.add(hub_auth.api_token)
        if not hub_auth.oauth_redirect_uri.startswith(("http://", "https://")):
            log.warning(
                "auth_enabled: the OAuth callback %s is not an absolute URL, so browser "
                "logins will fail; set BinderBuild.launch_host (this service's public URL) "
                "or JUPYTERHUB_OAUTH_CALLBACK_URL.",
                hub_auth.oauth_redirect_uri,
            )
        ctx.user_resolver = HubUserResolver(hub_auth, api_tokens)
        ctx.services["hub_auth"] = hub_auth
        ctx.services.setdefault("extra_handlers", []).append(oauth_callback_handler(hub_auth))

    limiter = RateLimiter(parent=app, log=app.log)
    ctx.services["rate_limiter"] = limiter
    ctx.admission_checks.extend(
        [
            _counted(
                AuthCheck(
                    auth_enabled=app.auth_enabled, api_tokens=api_tokens, base_url=app.base_url
                ),
                metrics,
            ),
            _counted(
                RateLimitCheck(
                    limiter,
                    tokens,
                    exempt=lambda handler, request: is_authenticated_caller(
                        handler, request, api_tokens
                    ),
                ),
                metrics,
            ),
        ]
    )


async def close(ctx: Context) -> None:
    eventlog = ctx.services.get("eventlog")
    if eventlog is not None:
        eventlog.close()


class _RequestIdTransform(tornado.web.OutputTransform):
    """Echo the request id so a user's report can be matched to the log."""

    def __init__(self, request: httputil.HTTPServerRequest) -> None:
        super().__init__(request)
        self.request_id = getattr(request, "_binderbuild_request_id", None)

    def transform_first_chunk(
        self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        if self.request_id:
            headers["X-Request-Id"] = self.request_id
        return status_code, headers, chunk


class _RefusedHandler(tornado.web.RequestHandler):
    """Answers requests from banned networks without running anything else."""

    def initialize(self, message: str) -> None:
        self.message = message

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(tornado.escape.json_encode({"message": self.message, "status_code": 403}))


class BinderBuildWebApp(tornado.web.Application):
    """Tornado application with request ids and network bans at the door."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_transform(_RequestIdTransform)

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        # Runs in the connection's task before the handler's task is created,
        # so the handler (and everything it starts) inherits this context.
        request_id = new_request_id(request.headers.get("X-Request-Id"))
        request._binderbuild_request_id = request_id  # type: ignore[attr-defined]
        set_request_id(request_id)
        ctx = self.settings.get("binderbuild")
        banned: BannedNetworks | None = ctx.services.get("banned_networks") if ctx else None
        if banned:
            ip = ctx.client_ip(request)
            label = banned.match(ip)
            if label is not None:
                log.warning("refused request from banned network %s (%s)", label, ip)
                metrics = ctx.services.get("metrics")
                if metrics is not None:
                    metrics.refused(Refusal.BANNED)
                return self.get_handler_delegate(
                    request,
                    _RefusedHandler,
                    {"message": "Requests from your network are not accepted here."},
                )
        return super().find_handler(request, **kwargs)

