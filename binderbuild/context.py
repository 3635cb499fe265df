"""One typed container of the long-lived services handed to every handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from binderbuild.builders.base import Builder
from binderbuild.builds import BuildManager
from binderbuild.http import HttpClient
from binderbuild.launcher import Launcher
from binderbuild.models import BuildRequest
from binderbuild.pipeline import Pipeline
from binderbuild.providers.base import RepoProvider
from binderbuild.registry import ImageStore
from binderbuild.secrets import Scrubber

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.web import RequestHandler


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
    extra: Mapping[str, Any] = field(default_factory=dict)


# Admission checks run before a stream starts (rate limit, bans, auth).
# They raise RequestError subclasses; they may set response headers.
AdmissionCheck = Callable[["RequestHandler", BuildRequest], Awaitable[None]]


@dataclass
class Context:
    settings: Settings
    http: HttpClient
    providers: Mapping[str, RepoProvider]
    image_store: ImageStore
    builder: Builder
    builds: BuildManager
    pipeline: Pipeline
    launcher: Launcher | None
    scrubber: Scrubber
    admission_checks: list[AdmissionCheck] = field(default_factory=list)
    # Maps a request to its client IP (trusted-proxy aware when configured).
    client_ip_resolver: Callable[[HTTPServerRequest], str] | None = None
    # Async: identifying a hub user may ask the hub (cached by HubAuth).
    user_resolver: Callable[[RequestHandler], Awaitable[str | None]] | None = None
    services: dict[str, Any] = field(default_factory=dict)

    def client_ip(self, request: HTTPServerRequest) -> str:
        if self.client_ip_resolver is not None:
            return self.client_ip_resolver(request)
        return request.remote_ip or ""

    async def current_user_name(self, handler: RequestHandler) -> str | None:
        return await self.user_resolver(handler) if self.user_resolver else None

    async def admit(self, handler: RequestHandler, request: BuildRequest) -> None:
        for check in self.admission_checks:
            await check(handler, request)
