"""One shared async HTTP client for every outbound call (providers, registry, hub).

A thin layer over Tornado's client so that:
- HTTP error statuses are returned, not raised: callers decide what a 404 means;
- network failures become ``TransportError`` with a message safe to show;
- tests can replace the transport (recordings of hosted APIs) by subclassing
  ``HttpClient`` and overriding ``send``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.simple_httpclient import HTTPStreamClosedError

# Raised here, declared with the rest of the error tree; importable from
# this module as before.
from binderbuild.errors import TransportError


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""
    elapsed: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return default


@dataclass(frozen=True, slots=True)
class HttpRequestSpec:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | None = None
    timeout: float = 10.0
    auth: tuple[str, str] | None = None
    follow_redirects: bool = True


def redact_url(url: str) -> str:
    """Drop user:password from a URL before it is logged or shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


# Largest answer body kept in memory. Provider APIs are asked about hosts a
# stranger names (CKAN sites, Dataverse installations, GitLab hosts), and
# Tornado's default (100 MiB, per request, max_clients at a time) would let
# such a host make the service buffer gigabytes. The APIs we call answer in
# kilobytes; paginated hub and registry answers stay far below this too.
DEFAULT_MAX_BODY_SIZE = 16 * 1024 * 1024


class HttpClient:
    """Shared client; create once at startup, ``close()`` at shutdown."""

    def __init__(
        self,
        user_agent: str = "binderbuild",
        max_clients: int = 64,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    ) -> None:
        self.user_agent = user_agent
        self.max_body_size = max_body_size
        # force_instance: our own client, not Tornado's per-loop singleton that
        # other code (pytest-tornado's http_client) may close under us.
        # max_buffer_size bounds bodies without Content-Length or chunking
        # (read until close), max_body_size the others.
        self._client = AsyncHTTPClient(
            force_instance=True,
            max_clients=max_clients,
            max_body_size=max_body_size,
            max_buffer_size=max_body_size,
        )
        self.observers: list[Callable[[HttpRequestSpec, HttpResponse], None]] = []

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        json_body: Any = None,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
        follow_redirects: bool = True,
    ) -> HttpResponse:
        hdrs = {"User-Agent": self.user_agent}
        hdrs.update(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        spec = HttpRequestSpec(method, url, hdrs, body, timeout, auth, follow_redirects)
        response = await self.send(spec)
        for observe in self.observers:
            observe(spec, response)
        return response

    async def send(self, spec: HttpRequestSpec) -> HttpResponse:
        body = spec.body
        if body is None and spec.method in ("POST", "PUT", "PATCH"):
            body = b""
        req = HTTPRequest(
            spec.url,
            method=spec.method,
            headers=dict(spec.headers),
            body=body,
            connect_timeout=min(spec.timeout, 10.0),
            request_timeout=spec.timeout,
            auth_username=spec.auth[0] if spec.auth else None,
            auth_password=spec.auth[1] if spec.auth else None,
            follow_redirects=spec.follow_redirects,
            allow_nonstandard_methods=True,
        )
        try:
            # Shielded: a caller that gives up (a health probe's timeout, a
            # client that left) must not cancel Tornado's future, which then
            # logs "Exception after Future was cancelled" with a traceback
            # when the request fails later. The request ends by its timeout.
            resp = await asyncio.shield(self._client.fetch(req, raise_error=False))
        except HTTPClientError as exc:  # raise_error=False: only transport failures
            if exc.response is None:
                raise TransportError(
                    f"{redact_url(spec.url)}: {exc}{self._cut_hint(exc)}"
                ) from None
            resp = exc.response
        except Exception as exc:
            # Tornado raises OSError/TimeoutError/ssl errors for transport failures.
            raise TransportError(
                f"{redact_url(spec.url)}: {type(exc).__name__}: {exc}{self._cut_hint(exc)}"
            ) from None
        if resp.code == 599:
            raise TransportError(
                f"{redact_url(spec.url)}: {resp.error}{self._cut_hint(resp.error)}"
            )
        return HttpResponse(
            status=resp.code,
            headers=dict(resp.headers.get_all()),
            body=resp.body or b"",
            url=resp.effective_url,
            elapsed=resp.request_time or 0.0,
        )

    def _cut_hint(self, exc: BaseException | None) -> str:
        # Tornado drops a connection whose answer is over max_body_size and
        # reports only "Connection closed"; say what may have happened.
        if isinstance(exc, HTTPStreamClosedError):
            return f" (answers over {self.max_body_size // (1024 * 1024)} MiB are not accepted)"
        return ""

    async def stream(
        self,
        url: str,
        on_chunk: Callable[[bytes], None],
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 3600.0,
        connect_timeout: float = 10.0,
    ) -> HttpResponse:
        """GET ``url`` and pass each body chunk to ``on_chunk`` as it arrives
        (event streams such as JupyterHub's spawn progress).

        Returns once the server ends the response; the returned body is empty
        (the chunks went to ``on_chunk``). As with ``request``, HTTP statuses
        are returned and transport failures raise ``TransportError``. An
        exception raised by ``on_chunk`` aborts the request (Tornado closes
        the connection) and is re-raised here: that is how a caller stops
        following a stream early.
        """
        hdrs = {"User-Agent": self.user_agent}
        hdrs.update(headers or {})
        raised: list[BaseException] = []

        def callback(chunk: bytes) -> None:
            try:
                on_chunk(chunk)
            except BaseException as exc:
                raised.append(exc)
                raise

        req = HTTPRequest(
            url,
            method="GET",
            headers=hdrs,
            connect_timeout=min(connect_timeout, timeout),
            request_timeout=timeout,
            streaming_callback=callback,
        )
        try:
            resp = await self._client.fetch(req, raise_error=False)
        except Exception as exc:
            if raised and exc is raised[0]:
                raise
            raise TransportError(f"{redact_url(url)}: {type(exc).__name__}: {exc}") from None
        if resp.code == 599:
            raise TransportError(f"{redact_url(url)}: {resp.error}")
        return HttpResponse(
            status=resp.code,
            headers=dict(resp.headers.get_all()),
            body=b"",
            url=resp.effective_url,
            elapsed=resp.request_time or 0.0,
        )

    def close(self) -> None:
        self._client.close()
