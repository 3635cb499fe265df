"""Access control: JupyterHub login, API tokens, API-only mode.

Three kinds of callers:

- Anonymous (the default deployment): anyone may build and launch; the
  per-IP rate limit (``binderbuild.ratelimit``) protects the service.
- Hub users, when ``BinderBuild.auth_enabled`` is on (BinderHub's option).
  binderbuild is then a JupyterHub *service*: browsers log in through the
  hub's OAuth (``HubOAuth``; the callback is ``{base_url}oauth_callback``
  unless ``JUPYTERHUB_OAUTH_CALLBACK_URL`` says otherwise) and programs send
  a hub token (``Authorization: token ...``). ``/build`` without a hub user
  is refused with 403, and launches start the server for that user.
- Programs holding one of ``BinderBuild.api_tokens``
  (``Authorization: Bearer <token>``): they may *build*; they are not hub
  users, so with ``auth_enabled`` they must ask for ``build_only=true``.
  They are never rate limited.

Identifying a hub user costs a request to the hub on the first sight of a
token or cookie (the answer is cached by ``HubAuth`` for a few minutes).
The resolver awaits HubAuth's async API (``sync=False``), so a slow hub
slows only the requests that need it, never the event loop.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from tornado.httputil import url_concat
from tornado.web import RequestHandler

from binderbuild.errors import ConfigError, Forbidden
from binderbuild.models import BuildRequest

if TYPE_CHECKING:
    from jupyterhub.services.auth import HubOAuth
    from tornado.httputil import HTTPServerRequest

log = logging.getLogger("binderbuild.auth")

_AUTH_HEADER = re.compile(r"^\s*(?:bearer|token)\s+(\S+)\s*$", re.IGNORECASE)

# Endpoints an API-only deployment keeps (BinderHub's list, plus
# /api/repoproviders and the OAuth callback when login is on).
API_PATHS = ("build/", "versions", "health", "metrics", "api/", "oauth_callback")


class ApiTokens:
    """Bearer tokens of programmatic callers: token -> caller name (for logs)."""

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._tokens = [(t.encode(), name or "api") for t, name in tokens.items() if t]

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def caller(self, request: HTTPServerRequest) -> str | None:
        """The caller's name when the request carries one of the tokens."""
        if not self._tokens:
            return None
        match = _AUTH_HEADER.match(request.headers.get("Authorization", ""))
        if not match:
            return None
        offered = match.group(1).encode()
        found = None
        # Compare against every token in constant time, so timing reveals
        # neither which token nor how much of one matched.
        for token, name in self._tokens:
            if hmac.compare_digest(offered, token):
                found = name
        return found


def api_caller(handler: RequestHandler, tokens: ApiTokens) -> str | None:
    cached = getattr(handler, "_binderbuild_api_caller", False)
    if cached is not False:
        return cast("str | None", cached)
    name = tokens.caller(handler.request)
    handler._binderbuild_api_caller = name  # type: ignore[attr-defined]  # per-request memo
    return name


def make_hub_auth(
    *,
    parent: Any,
    api_token: str,
    hub_url: str,
    hub_api_url: str = "",
    base_url: str = "/",
    launch_host: str = "",
) -> HubOAuth:
    """A ``HubOAuth`` for binderbuild as a hub service.

    The hub sets ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_CLIENT_ID``,
    ``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_HOST`` and
    ``JUPYTERHUB_OAUTH_CALLBACK_URL`` for the services it runs; for an external
    service they are derived from binderbuild's options: the API from
    ``hub_api_url`` (the hub's own address) or ``hub_url``, the login page
    from the public ``hub_url``, the callback from ``launch_host``.
    ``c.HubOAuth.*`` in the config file overrides any of them.
    """
    from jupyterhub.services.auth import HubOAuth

    env = os.environ
    kwargs: dict[str, Any] = {"parent": parent}
    if api_token:
        kwargs["api_token"] = api_token
    if not env.get("JUPYTERHUB_API_URL") and (hub_api_url or hub_url):
        kwargs["api_url"] = (hub_api_url or hub_url).rstrip("/") + "/hub/api"
    if hub_url:
        public = urlsplit(hub_url)
        if not env.get("JUPYTERHUB_HOST"):
            # Browsers go to the hub's public address to log in.
            kwargs["hub_host"] = f"{public.scheme}://{public.netloc}"
        if not env.get("JUPYTERHUB_BASE_URL"):
            kwargs["hub_prefix"] = public.path.rstrip("/") + "/hub/"
    if not env.get("JUPYTERHUB_SERVICE_PREFIX"):
        kwargs["base_url"] = base_url
    if not env.get("JUPYTERHUB_CLIENT_ID"):
        kwargs["oauth_client_id"] = "service-binder"
    if not env.get("JUPYTERHUB_OAUTH_CALLBACK_URL") and launch_host:
        # The hub compares the redirect URI with the registered one exactly.
        kwargs["oauth_redirect_uri"] = launch_host.rstrip("/") + "/oauth_callback"
    # Values from c.HubOAuth win over ours.
    configured = parent.config.get("HubOAuth", {}) if parent is not None else {}
    for key in list(kwargs):
        if key != "parent" and key in configured:
            del kwargs[key]
    try:
        return HubOAuth(**kwargs)
    except Exception as exc:  # traitlets raises TraitError/ValueError for empty values
        raise ConfigError(
            f"auth_enabled needs binderbuild to be a JupyterHub service: {exc} "
            "(set hub_api_token and the JUPYTERHUB_* service variables)."
        ) from None


class HubUserResolver:
    """``Services.user_resolver``: the hub user behind a request, or None."""

    def __init__(self, hub_auth: HubOAuth, api_tokens: ApiTokens) -> None:
        self.hub_auth = hub_auth
        self.api_tokens = api_tokens

    async def __call__(self, handler: RequestHandler) -> str | None:
        cached = getattr(handler, "_binderbuild_user", False)
        if cached is not False:
            return cast("str | None", cached)
        name: str | None = None
        if api_caller(handler, self.api_tokens) is None:
            try:
                model = await self.hub_auth.get_user(handler, sync=False)
            except Exception as exc:
                # Hub down or token rejected: treat as anonymous; the auth
                # check then refuses with a clear message.
                log.warning("could not identify the hub user: %s", exc)
                model = None
            if model and model.get("kind", "user") == "user":
                name = model.get("name")
        handler._binderbuild_user = name  # type: ignore[attr-defined]  # per-request memo
        return name


class AuthCheck:
    """Admission check: who may use ``/build``."""

    def __init__(self, *, auth_enabled: bool, api_tokens: ApiTokens, base_url: str = "/") -> None:
        self.auth_enabled = auth_enabled
        self.api_tokens = api_tokens
        self.base_url = base_url

    async def __call__(self, handler: RequestHandler, request: BuildRequest) -> None:
        caller = api_caller(handler, self.api_tokens)
        if caller is not None:
            if self.auth_enabled and not request.build_only:
                raise Forbidden(
                    "API tokens may only build on this deployment: add build_only=true, "
                    "or log in to the hub to launch."
                )
            log.info("build request from API caller %s", caller)
            return
        if self.auth_enabled and request.user is None:
            raise Forbidden(
                f"Log in first: open {self.base_url} in a browser, or send a JupyterHub "
                "token in the Authorization header."
            )


def is_authenticated_caller(handler: RequestHandler, request: BuildRequest, tokens: ApiTokens) -> bool:
    """For the rate limit: hub users and API callers are not counted."""
    return request.user is not None or api_caller(handler, tokens) is not None


def hub_login_url(handler: RequestHandler, hub_auth: HubOAuth) -> str:
    """Where to send a browser to log in (for pages that require a user):
    the hub's authorize URL with an OAuth state cookie that brings the
    browser back to the current page."""
    params: dict[str, str] = {}
    code_verifier = None
    if getattr(hub_auth, "pkce_enabled", False):
        code_verifier, challenge, method = hub_auth.generate_pkce_code_challenge()
        params.update(code_challenge=challenge, code_challenge_method=method)
    params["state"] = hub_auth.set_state_cookie(
        handler, next_url=handler.request.uri, code_verifier=code_verifier
    )
    return url_concat(hub_auth.login_url, params)


def oauth_callback_path(hub_auth: HubOAuth) -> str:
    path: str = urlsplit(hub_auth.oauth_redirect_uri).path
    return path


def oauth_callback_handler(hub_auth: HubOAuth) -> tuple[str, type[RequestHandler], dict[str, Any]]:
    """Route finishing the OAuth login (sets the login cookie)."""
    from jupyterhub.services.auth import HubOAuthCallbackHandler

    # jupyterhub ships no type information, so its handler is Any to mypy.
    class OAuthCallbackHandler(HubOAuthCallbackHandler):  # type: ignore[misc]
        def initialize(self, hub_auth: HubOAuth) -> None:
            self.hub_auth = hub_auth

    return (re.escape(oauth_callback_path(hub_auth)), OAuthCallbackHandler, {"hub_auth": hub_auth})


def api_only(handlers: Sequence[Any], base_url: str) -> list[Any]:
    """Keep only the API endpoints (``enable_api_only_mode``)."""
    kept = []
    for spec in handlers:
        pattern = spec[0] if isinstance(spec, tuple | list) else getattr(spec, "regex", None)
        if pattern is not None and not isinstance(pattern, str):
            pattern = pattern.pattern
        if isinstance(pattern, str):
            path = pattern.replace("\\", "")
            if any(path.startswith(base_url + p) for p in API_PATHS):
                kept.append(spec)
    return kept
