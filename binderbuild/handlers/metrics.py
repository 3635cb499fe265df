"""``GET /metrics``: Prometheus text exposition of ``binderbuild.metrics``."""

from __future__ import annotations

from binderbuild.handlers.base import BaseHandler


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        metrics = self.ctx.services.get("metrics")
        if metrics is None:
            self.write_json({"message": "Metrics are not enabled.", "status_code": 404}, 404)
            return
        body, content_type = metrics.exposition()
        self.set_header("Content-Type", content_type)
        # Scrapers must see fresh values, never a cached page.
        self.set_header("Cache-Control", "no-store")
        self.finish(body)
