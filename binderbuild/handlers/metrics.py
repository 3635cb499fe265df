"""``GET /metrics``: Prometheus text exposition of ``binderbuild.metrics``."""

from __future__ import annotations

from binderbuild.handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        body, content_type = self.ctx.metrics.exposition()
        self.set_header("Content-Type", content_type)
        # Scrapers must see fresh values, never a cached page.
        self.set_header("Cache-Control", "no-store")
        self.finish(body)
