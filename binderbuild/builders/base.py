"""The contract of a build backend.

A backend turns a ``BuildJob`` into an image: on the local Docker engine
(``DockerBuilder``) or in a Kubernetes build pod (``KubernetesBuilder``).
Deduplication, queueing, timeouts and fan-out to clients are *not* the
backend's job: ``binderbuild.builds.BuildManager`` does them once for all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from traitlets.config import LoggingConfigurable

from binderbuild.events import ProgressEvent
from binderbuild.models import BuildJob


class Builder(LoggingConfigurable):
    # traitlets' metaclass cannot be combined with ABCMeta, so "abstract" is
    # enforced by NotImplementedError rather than at instantiation.
    def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        """Build ``job.image`` (and push it when ``job.push``).

        Yields ``fetching``/``building``/``pushing``/``unknown`` events as the
        build produces them, and returns normally once the image exists.
        Raises ``BuildFailed`` (with a reason a user can act on) or
        ``BuildBackendError`` (the engine or cluster is broken). When the
        consuming task is cancelled the build must be stopped and its
        resources released before the generator finishes.
        """

    async def check(self) -> dict[str, Any]:
        """Health probe of the backend; raises BuildBackendError when down."""
        return {}

    async def close(self) -> None:
        """Release long-lived clients at shutdown."""
