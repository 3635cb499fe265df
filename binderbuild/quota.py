"""Launch quotas: how many servers may run in total and per repository.

``LaunchQuota`` answers one question before a launch creates anything on the
hub: would this launch go over a limit? It asks a *server counter* how many
servers run now and adds the launches of this process that are still in
flight (checked, not yet visible to the counter).

The counter is pluggable. Its contract is one method::

    count(repo_url: str | None = None) -> int        # may be async

``repo_url=None`` means all servers; otherwise the servers started from that
repository (the ``repo_url`` that binderbuild put into ``user_options``).
Optional extras a counter may offer:

- ``count(repo_url, exclude=names)`` with ``supports_exclude = True``: do not
  count the servers named in ``exclude`` ("user/server" full names), so a
  launch that is already visible to the counter is not counted twice.
- ``note_started(repo_url, full_name)``: a launch of this process finished,
  count it until the counter's next refresh sees it.

``HubServerCounter`` (the default) counts from JupyterHub's REST API with a
short-lived cache: one paginated ``GET /users?state=active`` per
``cache_ttl`` seconds at most, however many launches ask, and never two at
once. A Kubernetes deployment can plug in a pod-watch cache instead.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlencode

from traitlets import Float, Integer
from traitlets.config import LoggingConfigurable

from binderbuild.errors import BinderBuildError, HubError, QuotaExceeded


@runtime_checkable
class ServerCounter(Protocol):
    def count(self, repo_url: str | None = None) -> int | Awaitable[int]:
        """Servers running now, all of them or those of ``repo_url``."""


@dataclass(frozen=True, slots=True)
class QuotaCheck:
    """What a successful check saw (for logs, metrics and /health)."""

    total: int
    matching: int
    repo_quota: int
    total_quota: int | None


@dataclass
class Reservation:
    """A launch that passed the quota check and has not finished yet."""

    quota: LaunchQuota
    repo_url: str
    full_name: str
    check: QuotaCheck
    released: bool = False

    def succeeded(self) -> None:
        """The server is running: hand it over to the counter's bookkeeping."""
        if self.released:
            return
        self.released = True
        self.quota._release(self)
        note = getattr(self.quota.counter, "note_started", None)
        if callable(note):
            note(self.repo_url, self.full_name)

    def failed(self) -> None:
        """Nothing is left running for this launch."""
        if not self.released:
            self.released = True
            self.quota._release(self)


class LaunchQuota:
    """Checks per-repository and total limits, with in-flight bookkeeping.

    ``check_and_reserve`` is the only entry point. Between the counter's
    answer and the reservation there is no ``await``, so two concurrent
    launches can never both take the last free place.
    """

    def __init__(self, counter: ServerCounter, total_quota: int | None = None) -> None:
        self.counter = counter
        self.total_quota = total_quota
        self._inflight: dict[int, Reservation] = {}
        self._starting: asyncio.Future[Any] | None = None

    def start(self) -> None:
        """Begin the counter's own start-up (e.g. a first pod listing) now,
        so the first launch does not wait for it. Call inside the loop."""
        start = getattr(self.counter, "start", None)
        if callable(start) and self._starting is None:
            self._starting = asyncio.ensure_future(start())

    async def _ready(self) -> None:
        if not callable(getattr(self.counter, "start", None)):
            return
        self.start()
        assert self._starting is not None
        try:
            await asyncio.shield(self._starting)
        except BinderBuildError:
            self._starting = None  # try again on the next launch
            raise
        except Exception as exc:
            self._starting = None
            raise HubError(f"Cannot count the running servers for launch quotas: {exc}") from exc

    async def close(self) -> None:
        close = getattr(self.counter, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    async def servers(self) -> int:
        """Servers running now, this process's launches in flight included:
        the number the next launch is checked against (for /health)."""
        exclude = frozenset(r.full_name for r in self._inflight.values())
        running = await self._count(None, exclude)
        return running + len(self._inflight)

    def inflight(self, repo_url: str | None = None) -> list[Reservation]:
        return [r for r in self._inflight.values() if repo_url is None or r.repo_url == repo_url]

    async def _count(self, repo_url: str | None, exclude: frozenset[str]) -> int:
        await self._ready()
        counter = self.counter
        try:
            if getattr(counter, "supports_exclude", False):
                # The ServerCounter protocol has no `exclude`; counters that
                # set supports_exclude take it (see the module docstring).
                result: Any = counter.count(repo_url, exclude=exclude)  # type: ignore[call-arg]  # optional extra, see above
            else:
                result = counter.count(repo_url)
            if inspect.isawaitable(result):
                result = await result
        except BinderBuildError:
            raise
        except Exception as exc:
            raise HubError(f"Cannot count the running servers for launch quotas: {exc}") from exc
        return int(result)

    async def check_and_reserve(
        self,
        repo_url: str,
        repo_quota: int,
        full_name: str,
        *,
        count_total: bool = True,
        not_in_repo: frozenset[str] = frozenset(),
    ) -> Reservation:
        """Raise QuotaExceeded when one more server would be over a limit;
        otherwise reserve a place until the launch ends.

        ``repo_quota`` 0 means no per-repository limit; ``total_quota`` None
        means no total limit (0: nothing may launch, e.g. maintenance).
        ``count_total`` False: the server already holds a place of the total
        (a pooled server being handed out). ``not_in_repo``: "user/server"
        names not counted against their repository (pooled servers; only
        counters with ``supports_exclude`` can leave them out).
        """
        total_quota = self.total_quota if count_total else None
        exclude = frozenset(r.full_name for r in self._inflight.values())
        total = matching = 0
        if total_quota is not None:
            total = await self._count(None, exclude)
        if repo_quota:
            matching = await self._count(repo_url, exclude | not_in_repo)
        # No await from here on: the in-flight list cannot change under us.
        total += len(self._inflight)
        matching += len(self.inflight(repo_url))
        if total_quota is not None and total >= total_quota:
            raise QuotaExceeded(
                f"This Binder is full: {total} of {total_quota} servers are running. "
                "Please try again in a few minutes."
            )
        if repo_quota and matching >= repo_quota:
            raise QuotaExceeded(
                f"Too many users are running {repo_url} right now "
                f"({matching} of at most {repo_quota}). Please try again in a few minutes."
            )
        reservation = Reservation(
            self, repo_url, full_name, QuotaCheck(total, matching, repo_quota, total_quota)
        )
        self._inflight[id(reservation)] = reservation
        return reservation

    def _release(self, reservation: Reservation) -> None:
        self._inflight.pop(id(reservation), None)


# --- the default counter: JupyterHub's REST API -------------------------------


@dataclass
class _Snapshot:
    taken: float
    servers: dict[str, str] = field(default_factory=dict)  # full name -> repo_url

    def add(self, full_name: str, repo_url: str) -> None:
        self.servers.setdefault(full_name, repo_url)


# API path (relative to .../hub/api/) -> parsed JSON; raises HubError
HubGetter = Callable[[str], Awaitable[Any]]


class HubServerCounter(LoggingConfigurable):
    """Counts active servers from JupyterHub's ``GET /users?state=active``.

    A server's repository is the ``repo_url`` of its ``user_options`` (set
    by binderbuild's launcher); servers started otherwise count towards the
    total only.
    """

    supports_exclude = True

    cache_ttl = Float(
        5.0,
        config=True,
        help="Seconds one listing of the hub's active servers is reused for quota checks.",
    )
    page_size = Integer(
        200, config=True, help="Users per page when listing the hub's active servers."
    )

    def __init__(self, get_json: HubGetter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._get_json = get_json
        self._snapshot: _Snapshot | None = None
        self._refreshing: asyncio.Task[_Snapshot] | None = None
        self.refreshes = 0  # how many listings were fetched (tests, metrics)

    async def count(
        self, repo_url: str | None = None, exclude: frozenset[str] = frozenset()
    ) -> int:
        snap = await self._current()
        if repo_url is None:
            return sum(1 for name in snap.servers if name not in exclude)
        return sum(
            1 for name, repo in snap.servers.items() if repo == repo_url and name not in exclude
        )

    def note_started(self, repo_url: str, full_name: str) -> None:
        if self._snapshot is not None:
            self._snapshot.add(full_name, repo_url)

    def invalidate(self) -> None:
        self._snapshot = None

    async def _current(self) -> _Snapshot:
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken < self.cache_ttl:
            return snap
        # Single flight: concurrent checks share one listing.
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._fetch())
        return await asyncio.shield(self._refreshing)

    async def _fetch(self) -> _Snapshot:
        started = time.monotonic()
        snap = _Snapshot(taken=started)
        offset = 0
        while True:
            query = urlencode({"state": "active", "offset": offset, "limit": self.page_size})
            page = await self._get_json(f"users?{query}")
            # With the pagination Accept header the hub answers
            # {"items": [...], "_pagination": {...}}; older hubs a plain list.
            items = page.get("items", []) if isinstance(page, dict) else page
            if not isinstance(items, list):
                raise HubError("JupyterHub answered the user list with something unexpected.")
            for user in items:
                for server in (user.get("servers") or {}).values():
                    options = server.get("user_options") or {}
                    snap.add(
                        f"{user.get('name', '')}/{server.get('name', '')}",
                        str(options.get("repo_url", "")),
                    )
            nxt = page.get("_pagination", {}).get("next") if isinstance(page, dict) else None
            if not nxt or not items:
                break
            offset = int(nxt.get("offset", offset + len(items)))
        self._snapshot = snap
        self.refreshes += 1
        return snap
