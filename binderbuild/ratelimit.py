"""Per-client-IP rate limit of unauthenticated ``/build`` requests.

IPv6 clients are counted per /64 (``ipv6_prefix_length``): a subscriber's
whole network, from which they could otherwise take a new address per request.

A sliding window: a request is admitted when fewer than ``limit`` requests
from the same IP were admitted in the last ``period_seconds``. Unlike a fixed
window (BinderHub's), a client cannot spend the whole limit at the end of one
window and again at the start of the next. Refused requests are not
recorded, so a client that stops hammering gets service again as soon as its
oldest admitted request leaves the window.

Who is not counted: callers the hub authenticated, callers with an API token
(``BinderBuild.api_tokens``) and the launch page's own event stream, which
carries a short-lived signed ``build_token`` bound to the repository and the
page's origin (``binderbuild.tokens``). An invalid token is not an error:
the request is just counted like any other.

Responses of counted requests carry ``x-ratelimit-limit``,
``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (Unix time at which one
more request becomes possible); over the limit the answer is 429.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from traitlets import Integer
from traitlets.config import LoggingConfigurable

from binderbuild.clientip import parse_ip
from binderbuild.errors import Forbidden, RateLimited
from binderbuild.models import BuildRequest
from binderbuild.tokens import BuildTokens

if TYPE_CHECKING:
    from tornado.httputil import HTTPServerRequest
    from tornado.web import RequestHandler

log = logging.getLogger("binderbuild.ratelimit")


@dataclass(frozen=True, slots=True)
class RateLimitState:
    allowed: bool
    limit: int
    remaining: int
    reset: int  # Unix time when one more request will be admitted
    retry_after: float  # seconds until then

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-reset": str(self.reset),
        }


class RateLimiter(LoggingConfigurable):
    """Sliding-window counter per key (client IP). BinderHub's option names."""

    limit = Integer(
        0,
        config=True,
        help="""Unauthenticated /build requests admitted per client IP within
        period_seconds. 0 (the default) turns the rate limit off. Requests with
        a valid build token, an API token or a hub login are not counted.""",
    )
    period_seconds = Integer(
        3600, config=True, help="Length of the sliding window of the rate limit, in seconds."
    )
    clean_seconds = Integer(
        600,
        config=True,
        help="How often (seconds) counters of clients not seen for a whole period are dropped.",
    )
    ipv6_prefix_length = Integer(
        64,
        config=True,
        help="""IPv6 clients are counted per network of this prefix length, not per
        address: one subscriber usually holds a whole /64 (2**64 addresses), so
        per-address counting would let them pick a fresh address per request.""",
    )

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        **kwargs: object,
    ) -> None:
        super().__init__(**kwargs)
        self._clock = clock
        self._wall = wall_clock
        self._hits: dict[str, deque[float]] = {}
        self._last_clean = clock()

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def key_for(self, client_ip: str) -> str:
        """The counter a client's requests go to: its IPv4 address, or its IPv6 network."""
        addr = parse_ip(client_ip)
        if addr is None or addr.version == 4:
            return str(addr) if addr is not None else client_ip
        network = ipaddress.ip_network(f"{addr}/{self.ipv6_prefix_length}", strict=False)
        return str(network)

    def _clean(self, now: float) -> None:
        self._last_clean = now
        horizon = now - self.period_seconds
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] <= horizon]:
            del self._hits[key]

    def hit(self, key: str) -> RateLimitState:
        """Count one request for ``key`` if the limit allows it."""
        now = self._clock()
        if now - self._last_clean > self.clean_seconds:
            self._clean(now)
        hits = self._hits.setdefault(key, deque())
        horizon = now - self.period_seconds
        while hits and hits[0] <= horizon:
            hits.popleft()
        allowed = len(hits) < self.limit
        if allowed:
            hits.append(now)
        remaining = max(0, self.limit - len(hits))
        # The next slot frees when the oldest admitted request leaves the window.
        reset_in = max(0.0, hits[0] + self.period_seconds - now) if hits else 0.0
        return RateLimitState(
            allowed=allowed,
            limit=self.limit,
            remaining=remaining,
            reset=int(self._wall() + reset_in + 0.999),
            retry_after=0.0 if allowed else reset_in,
        )


def token_origin(request: HTTPServerRequest) -> str:
    """The origin a build token is bound to: ``scheme://host[:port]`` of the page.

    Browsers send ``Origin`` on cross-origin requests; a same-origin
    EventSource may send none, and then the request's own scheme and Host are
    the page's (the launch page issues tokens for ``{protocol}://{host}``).
    """
    origin = request.headers.get("Origin", "")
    if origin and origin != "null":
        return origin.rstrip("/")
    return f"{request.protocol}://{request.host}"


Exemption = Callable[["RequestHandler", BuildRequest], bool]


class RateLimitCheck:
    """Admission check (``Services.admission_checks``) applying the limiter."""

    def __init__(
        self,
        limiter: RateLimiter,
        tokens: BuildTokens | None = None,
        exempt: Exemption | None = None,
    ) -> None:
        self.limiter = limiter
        self.tokens = tokens
        self.exempt = exempt

    def _has_valid_token(self, handler: RequestHandler, request: BuildRequest) -> bool:
        token = handler.get_query_argument("build_token", "")
        if not token or self.tokens is None:
            return False
        try:
            self.tokens.verify(token, request.provider_id, request.spec, token_origin(handler.request))
        except Forbidden as exc:
            log.info("build token not accepted (%s); counting the request", exc.message)
            return False
        return True

    async def __call__(self, handler: RequestHandler, request: BuildRequest) -> None:
        if not self.limiter.enabled:
            return
        if request.user is not None:
            return
        if self.exempt is not None and self.exempt(handler, request):
            return
        if self._has_valid_token(handler, request):
            return
        state = self.limiter.hit(self.limiter.key_for(request.client_ip))
        for name, value in state.headers().items():
            handler.set_header(name, value)
        if not state.allowed:
            minutes = max(1, round(state.retry_after / 60))
            log.warning("rate limit exceeded for %s", request.client_ip)
            raise RateLimited(
                f"Rate limit exceeded: at most {state.limit} builds or launches per "
                f"{_period(self.limiter.period_seconds)} from one address. Try again in about "
                f"{minutes} minute{'s' if minutes != 1 else ''}, or use the launch page.",
                retry_after=state.retry_after,
                # The answer is written after Tornado clears the handler's
                # headers, so the error carries them.
                headers=state.headers(),
            )


def _period(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        minutes = seconds // 60
        return "minute" if minutes == 1 else f"{minutes} minutes"
    return f"{seconds} seconds"
