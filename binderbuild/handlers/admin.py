"""The admin API (issue 16): images by last use, and a cleanup on request.

    GET  /api/admin/images                    images, least recently used first
    POST /api/admin/cleanup?dry_run=&force=   run the cleaners and sweeps now
    GET  /api/admin/maintenance               is a registry maintenance window open?
    POST /api/admin/maintenance?action=start|end[&drain_timeout=&limit=]
                                              open (no build starts; running ones
                                              drain first) or close it

Only holders of ``BinderBuild.api_tokens`` may call them (the same bearer
tokens as cancelling a build in the builds API): 401 without credentials,
403 with others. The work is ``binderbuild.lifecycle.Lifecycle``'s.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from binderbuild.errors import Conflict, NotFound, SpecError
from binderbuild.handlers.api import ApiHandler
from binderbuild.handlers.base import BaseHandler
from binderbuild.lifecycle import Lifecycle, Maintenance, MaintenanceRefused


def admin_handlers(base_url: str) -> list[tuple[str, type[BaseHandler]]]:
    b = base_url
    return [
        (rf"{b}api/admin/images", AdminImagesHandler),
        (rf"{b}api/admin/cleanup", AdminCleanupHandler),
        (rf"{b}api/admin/maintenance", AdminMaintenanceHandler),
    ]


def _iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _flag(handler: BaseHandler, name: str) -> bool:
    value = handler.get_query_argument(name, "false")
    if value not in ("true", "false"):
        raise SpecError(f"'{name}' must be true or false.")
    return value == "true"


class AdminHandler(ApiHandler):
    @property
    def lifecycle(self) -> Lifecycle:
        lifecycle = self.ctx.lifecycle
        if lifecycle is None:
            raise NotFound("This deployment has no image lifecycle.")
        return lifecycle


class AdminImagesHandler(AdminHandler):
    async def get(self) -> None:
        if not self.require_authorized("list images"):
            return
        rows = await self.lifecycle.images()
        self.write_json(
            {
                "images": [
                    {
                        "image": row["image"],
                        "last_used": _iso(row["last_used"]),
                        "created": _iso(row["created"]),
                        "in_engine": row["in_engine"],
                        "in_use": row["in_use"],
                        "size_bytes": row["size_bytes"],
                    }
                    for row in rows
                ]
            }
        )


class AdminCleanupHandler(AdminHandler):
    async def post(self) -> None:
        if not self.require_authorized("run a cleanup"):
            return
        dry_run = _flag(self, "dry_run")
        force = _flag(self, "force")
        result: dict[str, Any] = await self.lifecycle.cleanup(dry_run=dry_run, force=force)
        self.write_json(result)


def _seconds(handler: BaseHandler, name: str, default: float) -> float:
    text = handler.get_query_argument(name, None)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise SpecError(f"'{name}' must be a number of seconds from 0 to 86400.")
    return value


class AdminMaintenanceHandler(AdminHandler):
    @property
    def window(self) -> Maintenance:
        maintenance = self.lifecycle.maintenance
        if maintenance is None:
            raise NotFound("This deployment has no build queue to pause.")
        return maintenance

    async def get(self) -> None:
        if not self.require_authorized("see maintenance windows"):
            return
        self.write_json(self.window.state())

    async def post(self) -> None:
        if not self.require_authorized("open or close maintenance windows"):
            return
        action = self.get_query_argument("action", "")
        if action not in ("start", "end"):
            raise SpecError("'action' must be start or end.")
        if action == "end":
            self.write_json(self.window.end())
            return
        drain = _seconds(self, "drain_timeout", 600.0)
        limit = _seconds(self, "limit", 3600.0)
        try:
            state = await self.window.begin(drain_timeout=drain, limit=limit)
        except MaintenanceRefused as exc:
            raise Conflict(str(exc)) from None
        self.write_json(state)
