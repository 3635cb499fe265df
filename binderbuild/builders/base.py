"""The contract of a build backend.

A backend turns a ``BuildJob`` into an image: on the local Docker engine
(``DockerBuilder``) or in a Kubernetes build pod (``KubernetesBuilder``).
Deduplication, queueing, timeouts and fan-out to clients are *not* the
backend's job: ``binderbuild.builds.BuildManager`` does them once for all.

Lifecycle, driven by the composition root (``binderbuild.services``):

    construct -> start() -> build()* / check()* -> begin_shutdown() -> close()

Every step but ``build`` has a default here, so a backend implements only
what it needs. A backend is configured from two sources and no others: its
own traits (``c.DockerBuilder.*``, ``c.KubernetesBuilder.*``) and the shared
parts the application hands it explicitly as ``BuildResources``. It never
reads settings off its traitlets parent.

Backends are found by name through the entry-point group
``binderbuild.builders`` (``docker``, ``kubernetes``); an import string works
for backends that are not installed as a package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from traitlets.config import LoggingConfigurable

from binderbuild.events import ProgressEvent
from binderbuild.models import BuildJob, ResolvedRef
from binderbuild.netsafety import AllowRule
from binderbuild.secrets import Scrubber


@dataclass(frozen=True)
class ExternalBuild:
    """A build that ended without this process's ``BuildManager`` running it:
    e.g. a build pod left by a replica that died, which ``KubernetesBuilder``
    adopted and followed to its end. Reported once, when it has an outcome,
    to ``BuildResources.on_external_build``.

    ``id`` is stable for the build (from the pod's uid), so two replicas
    reporting the same build make one record. ``ref.spec`` is "" when the
    build did not carry its spec (pods made by older versions).
    ``failure``/``failure_type`` are the message and stable error code, as
    ``BuildRecord`` has them; both None when it succeeded. ``events`` is its
    log (scrubbed), ending with the final ``built`` or ``failed`` event.
    """

    id: str
    ref: ResolvedRef
    image: str
    build_name: str
    succeeded: bool
    failure: str | None
    failure_type: str | None
    created: float  # unix time
    started: float | None
    finished: float
    events: tuple[ProgressEvent, ...] = ()


@dataclass(frozen=True)
class BuildResources:
    """What the application shares with whichever backend it starts.

    ``docker_host``/``memory_limit`` are BinderHub's application-level
    options (``build_docker_host``, ``build_memory_limit``); a backend may
    give them its own meaning (a socket on the node for build pods).
    ``docker_client`` is set only for backends that build on this machine.
    """

    scrubber: Scrubber = field(default_factory=Scrubber)
    docker_host: str = ""
    memory_limit: int = 0
    # {"registry": url, "username": ..., "password": ...}; empty without a registry.
    registry_credentials: Mapping[str, str] = field(default_factory=dict)
    # Networks repositories may be fetched from although internal
    # (BinderBuild.allowed_internal_networks): the same for providers and builds.
    allowed_internal_networks: Sequence[AllowRule] = ()
    docker_client: Any = None
    # Called with every build the backend saw end that the BuildManager did
    # not run (ExternalBuild), e.g. adopted build pods; the composition root
    # passes the build history's recorder. Hooks must not block or raise
    # (a raising hook is logged and skipped).
    on_external_build: Sequence[Callable[[ExternalBuild], None]] = ()


class Builder(LoggingConfigurable):
    """Base of every backend. traitlets' metaclass cannot be combined with
    ABCMeta, so "abstract" is enforced by ``NotImplementedError``."""

    # Whether build_resources.docker_client must be a client of the local
    # engine (builds run here). Backends that build elsewhere set False, and
    # the application then needs no Docker engine at all.
    needs_local_engine: bool = True

    def __init__(self, *, resources: BuildResources | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.resources = resources or BuildResources()

    async def start(self) -> None:
        """Connect to the engine or cluster; called once before the first build.
        Builds must also work without it (``build`` may start lazily)."""

    def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        """Build ``job.image`` (and push it when ``job.push``).

        Yields ``fetching``/``building``/``pushing``/``unknown`` events as the
        build produces them, and returns normally once the image exists.
        Raises ``BuildFailed`` (with a reason a user can act on) or
        ``BuildBackendError`` (the engine or cluster is broken). When the
        consuming task is cancelled the build must be stopped and its
        resources released before the generator finishes.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement build()")

    async def check(self) -> dict[str, Any]:
        """Health probe of the backend; raises BuildBackendError when down."""
        return {}

    async def begin_shutdown(self) -> None:
        """The service is stopping. A backend whose builds outlive this process
        (build pods) stops owning them here, before the build manager cancels
        its tasks, so they keep running for a restarted replica to re-attach."""

    async def close(self) -> None:
        """Release long-lived clients at shutdown."""
