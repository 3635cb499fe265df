"""Small JSON endpoints: /versions, /api/repoproviders, /health."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from binderbuild.errors import BinderBuildError
from binderbuild.handlers.base import BaseHandler


class VersionsHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(dict(self.ctx.settings.version_info))


class RepoProvidersHandler(BaseHandler):
    def get(self) -> None:
        self.write_json([p.describe() for p in self.ctx.providers.values()])


class HealthChecker:
    """Runs dependency checks concurrently, caching each result for ``ttl`` seconds
    so a storm of probes does not hammer the registry, hub or engine."""

    def __init__(self, checks: dict[str, tuple[Any, bool]], ttl: float = 5.0, timeout: float = 5.0):
        # name -> (async callable returning a dict, required?)
        self.checks = checks
        self.ttl = ttl
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._inflight: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def _run_one(self, name: str) -> dict[str, Any]:
        check, required = self.checks[name]
        result: dict[str, Any] = {"service": name, "required": required}
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
        return await asyncio.shield(task)

    async def run(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self.one(n) for n in self.checks))
        ok = all(r["ok"] for r in results if r["required"])
        return {"ok": ok, "checks": list(results)}


class HealthHandler(BaseHandler):
    async def get(self) -> None:
        checker: HealthChecker = self.ctx.services["health"]
        result = await checker.run()
        self.write_json(result, 200 if result["ok"] else 503)

    async def head(self) -> None:
        checker: HealthChecker = self.ctx.services["health"]
        result = await checker.run()
        self.set_status(200 if result["ok"] else 503)
        self.finish()
