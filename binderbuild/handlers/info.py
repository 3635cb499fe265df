"""Small JSON endpoints: /versions, /api/repoproviders, /health, and the JSON 404.

``/health`` answers ``{"ok": bool, "checks": [...]}``: one entry per
dependency (registry or local image store, build backend, hub when launches
are on, build queue). A *required* check that fails makes the answer 503,
so load balancers and Kubernetes probes take the replica out; the queue
check only informs. Every check is cached for ``ttl`` seconds and concurrent
probes share one in-flight check, so a probe storm costs the dependencies at
most one request per check per ``ttl``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from binderbuild.errors import BinderBuildError
from binderbuild.handlers.base import BaseHandler

Check = Callable[[], Awaitable[dict[str, Any]]]


class VersionsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(dict(self.ctx.settings.version_info))


class RepoProvidersHandler(BaseHandler):
    def get(self) -> None:
        self.write_json([p.describe() for p in self.ctx.providers.values()])


class HealthChecker:
    """Runs dependency checks concurrently, caching each result for ``ttl`` seconds."""

    def __init__(
        self,
        checks: dict[str, tuple[Check, bool]],
        ttl: float = 5.0,
        timeout: float = 5.0,
        scrub: Callable[[str], str] | None = None,
    ):
        # name -> (async callable returning a dict of details, required?)
        self.checks = checks
        self.ttl = ttl
        self.timeout = timeout
        self.scrub = scrub or (lambda text: text)
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def _run_one(self, name: str) -> dict[str, Any]:
        check, required = self.checks[name]
        result: dict[str, Any] = {"service": name, "required": required}
        started = time.monotonic()
        try:
            details = await asyncio.wait_for(check(), self.timeout)
            result.update(details or {})
            result["ok"] = True
        except TimeoutError:
            result.update(ok=False, message=f"no answer within {self.timeout:g}s")
        except BinderBuildError as exc:
            result.update(ok=False, message=exc.message)
        except Exception as exc:
            result.update(ok=False, message=f"{type(exc).__name__}: {exc}")
        if "message" in result:
            # Messages may quote URLs or engine errors; never echo credentials.
            result["message"] = self.scrub(str(result["message"]))
        result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        self._cache[name] = (time.monotonic(), result)
        return result

    async def one(self, name: str) -> dict[str, Any]:
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.ensure_future(self._run_one(name))
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        # shield: a probe that disconnects must not cancel the check other
        # probes are waiting for.
        return await asyncio.shield(task)

    async def run(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self.one(n) for n in self.checks))
        ok = all(r["ok"] for r in results if r["required"])
        return {"ok": ok, "checks": list(results)}


class HealthHandler(BaseHandler):
    async def _result(self) -> dict[str, Any]:
        self.set_header("Cache-Control", "no-store")
        return await self.ctx.health.run()

    async def get(self) -> None:
        result = await self._result()
        self.write_json(result, 200 if result["ok"] else 503)

    async def head(self) -> None:
        result = await self._result()
        self.set_status(200 if result["ok"] else 503)
        self.finish()


class NotFoundHandler(BaseHandler):
    """JSON 404 for API clients (catch-all of the API-only mode)."""

    def prepare(self) -> None:
        self.write_json(
            {"message": f"No such endpoint: {self.request.path}", "status_code": 404}, 404
        )
