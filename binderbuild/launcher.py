"""Start a Jupyter server from a built image (the contract; HubLauncher implements it)."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from typing import Any

from binderbuild.events import ProgressEvent
from binderbuild.models import LaunchRequest, LaunchResult
from binderbuild.quota import LaunchQuota


class Launcher(abc.ABC):
    @abc.abstractmethod
    def launch(self, request: LaunchRequest) -> AsyncGenerator[ProgressEvent | LaunchResult, None]:
        """Yield ``launching`` events while the server starts, then exactly one
        ``LaunchResult``. Raises LaunchFailed (with the hub's real reason),
        QuotaExceeded, HubError. When cancelled, leaves nothing half-started."""

    async def check(self) -> dict[str, Any]:
        return {}

    def launch_quota(self) -> LaunchQuota | None:
        """The quota this launcher enforces (for /health's ``Pod quota``);
        None: it enforces none."""
        return None

    async def close(self) -> None:
        pass
