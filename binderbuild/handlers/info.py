"""Small JSON endpoints: /versions, /api/repoproviders, /health, and the JSON 404.

``/health`` answers ``{"ok": bool, "checks": [...]}``: one entry per
dependency (registry or local image store, build backend, hub when launches
are on, build queue). A *required* check that fails makes the answer 503,
so load balancers and Kubernetes probes take the replica out; the queue
check only informs. Every check is cached for ``ttl`` seconds and concurrent
probes share one in-flight check, so a probe storm costs the dependencies at
most one request per check per ``ttl``.

BinderHub's readers look for its own check names, so the answer starts with
BinderHub's three checks, in BinderHub's order (mybinder.org's federation
status page reads them by position): ``Docker registry`` (the registry, or
the local image store), ``JupyterHub API`` (the hub; ok when launches are
off) and ``Pod quota`` (``total_pods``, ``build_pods``, ``user_pods``,
``quota``; see :func:`pod_quota_usage`). The first two repeat binderbuild's
own results; the pod quota is soft, as in BinderHub: it never makes the
answer 503, but its ``ok`` is false when the deployment is full, which is
what the federation's redirector reads to stop sending users.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from binderbuild.errors import BinderBuildError
from binderbuild.handlers.base import BaseHandler

if TYPE_CHECKING:
    from binderbuild.services import Services

Check = Callable[[], Awaitable[dict[str, Any]]]

# BinderHub's check names (binderhub/health.py), in its order.
REGISTRY_CHECK = "Docker registry"
HUB_CHECK = "JupyterHub API"
POD_QUOTA_CHECK = "Pod quota"


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

    async def _run_one(self, name: str, check: Check, required: bool) -> dict[str, Any]:
        result: dict[str, Any] = {"service": name, "required": required}
        started = time.monotonic()
        try:
            details = dict(await asyncio.wait_for(check(), self.timeout) or {})
            # A check that answered may still report itself not ok (the pod quota).
            ok = bool(details.pop("ok", True))
            result.update(details)
            result["ok"] = ok
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

    async def one(self, name: str, check: Check | None = None) -> dict[str, Any]:
        """The cached result of check ``name``: one of ``checks``, or, given
        ``check``, an informational one (never required) cached the same way."""
        cached = self._cache.get(name)
        if cached and time.monotonic() - cached[0] < self.ttl:
            return cached[1]
        task = self._inflight.get(name)
        if task is None:
            if check is None:
                check, required = self.checks[name]
            else:
                required = False
            task = asyncio.ensure_future(self._run_one(name, check, required))
            self._inflight[name] = task
            task.add_done_callback(lambda _t: self._inflight.pop(name, None))
        # shield: a probe that disconnects must not cancel the check other
        # probes are waiting for.
        return await asyncio.shield(task)

    async def run(self) -> dict[str, Any]:
        results = await asyncio.gather(*(self.one(n) for n in self.checks))
        ok = all(r["ok"] for r in results if r["required"])
        return {"ok": ok, "checks": list(results)}


async def pod_quota_usage(ctx: Services) -> dict[str, Any]:
    """BinderHub's ``Pod quota`` check, from the launch quota.

    ``user_pods``: servers running now as the launch quota counts them (the
    hub's active servers, or the pod watch on Kubernetes), launches in
    flight included; ``build_pods``: builds running now; ``quota``: the
    total quota (``pod_quota``), null when there is none.

    ``ok`` is BinderHub's ``total_pods <= quota``, and also false when no
    launch can start (``user_pods >= quota``): a full deployment reads as
    full even with no build running, where BinderHub would still say ok.
    """
    builds = ctx.builds.running
    quota = ctx.launcher.launch_quota() if ctx.launcher is not None else None
    if quota is None:  # no launches, or a launcher without quotas
        return {"total_pods": builds, "build_pods": builds, "user_pods": 0, "quota": None}
    limit = quota.total_quota
    try:
        users = await quota.servers()
    except BinderBuildError as exc:
        # Keep BinderHub's keys for readers that print them.
        return {
            "ok": False,
            "message": exc.message,
            "total_pods": None,
            "build_pods": builds,
            "user_pods": None,
            "quota": limit,
        }
    total = users + builds
    return {
        "ok": limit is None or (total <= limit and users < limit),
        "total_pods": total,
        "build_pods": builds,
        "user_pods": users,
        "quota": limit,
    }


def _alias(service: str, source: dict[str, Any] | None, absent: str) -> dict[str, Any]:
    """A BinderHub-named entry that repeats one of binderbuild's own checks."""
    if source is None:
        return {"service": service, "ok": True, "message": absent}
    entry = {"service": service, "ok": source["ok"], "source": source["service"]}
    if "message" in source:
        entry["message"] = source["message"]
    return entry


class HealthHandler(BaseHandler):
    async def _result(self) -> dict[str, Any]:
        self.set_header("Cache-Control", "no-store")
        checker = self.ctx.health
        result = await checker.run()
        own = {c["service"]: c for c in result["checks"]}
        quota = await checker.one(POD_QUOTA_CHECK, lambda: pod_quota_usage(self.ctx))
        binderhub = [
            _alias(REGISTRY_CHECK, own.get("registry") or own.get("image-store"), "no image store"),
            _alias(HUB_CHECK, own.get("hub"), "not used: this deployment only builds"),
            quota,
        ]
        result["checks"] = binderhub + result["checks"]
        return result

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
