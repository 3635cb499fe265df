"""Shared plumbing of providers that resolve through an HTTP API (all but plain git).

- Every request goes through the service's one ``HttpClient``, with a timeout.
- Redirects are followed here, never by the client, so that each hop is
  checked: only http(s); credentials are dropped when the origin changes; and
  a hop to a host the user named (or any other origin than the one asked)
  must not resolve to an internal address (``netsafety``) unless the
  operator allowed that network.
- Answers that mean "upstream trouble" become ``ProviderError``, rate
  limiting becomes ``ProviderRateLimited`` with ``retry_after``. Everything
  else (200, 304, 404, ...) is returned for the provider to interpret,
  because only the provider knows whether a 404 means "no such ref".
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from traitlets import Float, Integer

from binderbuild.errors import (
    ConfigError,
    ProviderError,
    ProviderRateLimited,
    SpecError,
    TransportError,
    UnsafeURL,
)
from binderbuild.http import HttpClient, HttpResponse, redact_url
from binderbuild.netsafety import IPAddress, address_allowed, resolve_host
from binderbuild.providers.base import RepoProvider

Resolver = Callable[[str, int | None], Awaitable[list[IPAddress]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Never forwarded to another origin on a redirect.
_CREDENTIAL_HEADERS = frozenset({"authorization", "private-token", "cookie"})
# Retry-After / reset values above this are Unix timestamps, below it deltas
# (GitHub and GitLab send epoch seconds, the IETF RateLimit draft a delta).
_EPOCH_THRESHOLD = 1_000_000_000
_DEFAULT_RETRY_AFTER = 60.0


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise SpecError(f"URL has an invalid port: {redact_url(url)!r}") from None
    return scheme, (parts.hostname or "").lower(), port or (443 if scheme == "https" else 80)


def retry_after_seconds(resp: HttpResponse, now: float | None = None) -> float:
    """How long an upstream asks us to wait, from Retry-After or the reset headers."""
    now = time.time() if now is None else now
    value = resp.header("retry-after")
    if value:
        try:
            return max(float(value), 1.0)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value).timestamp()
                return max(when - now, 1.0)
            except (TypeError, ValueError):
                pass
    for name in ("x-ratelimit-reset", "ratelimit-reset"):
        value = resp.header(name)
        if not value:
            continue
        try:
            reset = float(value)
        except ValueError:
            continue
        delta = reset - now if reset > _EPOCH_THRESHOLD else reset
        return max(delta, 1.0)
    return _DEFAULT_RETRY_AFTER


def is_rate_limited(resp: HttpResponse) -> bool:
    """429 always; 403 when the rate-limit headers say so (GitHub's primary
    limit: ``x-ratelimit-remaining: 0``; its secondary limit: ``retry-after``)."""
    if resp.status == 429:
        return True
    if resp.status != 403:
        return False
    remaining = resp.header("x-ratelimit-remaining") or resp.header("ratelimit-remaining")
    return remaining.strip() == "0" or bool(resp.header("retry-after"))


def rate_limit_error(service: str, resp: HttpResponse) -> ProviderRateLimited:
    seconds = retry_after_seconds(resp)
    minutes = max(1, math.ceil(seconds / 60))
    unit = "minute" if minutes == 1 else "minutes"
    return ProviderRateLimited(
        f"{service} rate limit exceeded. Try again in {minutes} {unit}.", retry_after=seconds
    )


def json_object(resp: HttpResponse, service: str) -> dict[str, Any]:
    """The response body as a JSON object; anything else is an upstream fault."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProviderError(
            f"{service} sent an unexpected answer (HTTP {resp.status}, not a JSON object)."
        )
    return data


class HttpRepoProvider(RepoProvider):
    """A provider that resolves specs with HTTP API calls."""

    request_timeout = Float(
        10.0, config=True, help="Seconds before an API request of this provider is abandoned."
    )
    max_redirects = Integer(
        5, config=True, help="Redirects followed per API request before giving up."
    )

    def __init__(self, *, resolver: Resolver | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # DNS lookup used by the network-safety check; tests pass a fake one
        # because hosted API names do not resolve in the sandbox.
        self.resolver: Resolver = resolver or resolve_host
        # Last rate-limit headers seen (remaining, limit, reset epoch), for
        # logs and metrics. Never used to answer a request.
        self.rate_limit: tuple[int, int, float] | None = None

    @property
    def client(self) -> HttpClient:
        if self.http is None:
            raise ConfigError(f"{type(self).__name__} was created without an HTTP client.")
        return self.http

    async def check_url(self, url: str) -> None:
        """Raise UnsafeURL unless every address of the URL's host is allowed."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise SpecError(f"URL has no host: {redact_url(url)!r}")
        _, _, port = origin(url)
        for addr in await self.resolver(host, port):
            if not address_allowed(addr, self.allowed_internal_networks, port):
                raise UnsafeURL(
                    f"Refusing to fetch from {host}: it resolves to an internal address ({addr})."
                    " Operators can allow it with BinderBuild.allowed_internal_networks."
                )

    async def api_request(
        self,
        url: str,
        *,
        service: str = "",
        headers: Mapping[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        check_network: bool = False,
        method: str = "GET",
    ) -> HttpResponse:
        """One API call with redirects followed safely.

        ``check_network``: the host came from the user (CKAN, Dataverse,
        GitLab hosts named in a spec), so its addresses are checked before
        the first request too. Returns the final response with ``url`` set to
        the URL that answered.
        """
        service = service or self.display_name
        hdrs = dict(headers or {})
        first_origin = origin(url)
        for _hop in range(self.max_redirects + 1):
            scheme, _, _ = origin(url)
            if scheme not in ("http", "https"):
                raise UnsafeURL(f"Refusing to follow {service} to a {scheme or 'relative'} URL.")
            if check_network or origin(url) != first_origin:
                await self.check_url(url)
            try:
                resp = await self.client.request(
                    method,
                    url,
                    headers=hdrs,
                    auth=auth,
                    timeout=self.request_timeout,
                    follow_redirects=False,
                )
            except TransportError as exc:
                raise ProviderError(f"{service} could not be reached: {exc.message}") from None
            resp = dataclasses.replace(resp, url=url)
            self._observe_rate_limit(service, resp)
            location = resp.header("location")
            if resp.status in REDIRECT_STATUSES and location:
                next_url = urljoin(url, location)
                if origin(next_url) != origin(url):
                    # Tokens are for the host they were configured for only.
                    hdrs = {k: v for k, v in hdrs.items() if k.lower() not in _CREDENTIAL_HEADERS}
                    auth = None
                if resp.status == 303:
                    method = "GET"
                url = next_url
                continue
            if is_rate_limited(resp):
                raise rate_limit_error(service, resp)
            if resp.status >= 500:
                raise ProviderError(
                    f"{service} is having trouble (HTTP {resp.status}); try again later."
                )
            return resp
        raise ProviderError(f"{service} redirected more than {self.max_redirects} times.")

    def _observe_rate_limit(self, service: str, resp: HttpResponse) -> None:
        remaining = resp.header("x-ratelimit-remaining") or resp.header("ratelimit-remaining")
        limit = resp.header("x-ratelimit-limit") or resp.header("ratelimit-limit")
        if not remaining or not limit:
            return
        try:
            left, total = int(remaining), int(limit)
        except ValueError:
            return
        has_reset = resp.header("x-ratelimit-reset") or resp.header("ratelimit-reset")
        reset = time.time() + retry_after_seconds(resp) if has_reset else 0.0
        self.rate_limit = (left, total, reset)
        fraction = left / total if total else 1.0
        # Loud only when it matters: running out means failed launches soon.
        if fraction < 0.2:
            level = logging.WARNING
        elif fraction < 0.5:
            level = logging.INFO
        else:
            level = logging.DEBUG
        self.log.log(level, "%s rate limit remaining %d/%d", service, left, total)
