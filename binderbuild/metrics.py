"""Every Prometheus metric binderbuild exports, in one place.

Names follow ``binderbuild_<noun>_<verb>_<unit>``; counters get Prometheus'
``_total`` suffix. Label *names* are fixed here and label *values* come from
the closed sets below (enums, configured provider ids), so the number of
series is known up front. The one exception, a per-repository label, is off
unless the operator turns it on (``BinderBuild.metrics_repo_labels``):
thousands of repositories would mean thousands of series per metric.

Each ``Metrics`` owns its own ``CollectorRegistry`` (never the process-global
one), so several applications can live in one process (tests) without
"Duplicated timeseries" errors, and ``/metrics`` shows only binderbuild's
series.

Hook points (wired by the composition root, ``binderbuild.services``):
``BuildManager.on_started`` /
``on_finished`` for builds, a ``Launcher`` wrapper for launches (the only place
that sees a launch start *and* end), ``HttpClient.observers`` for every
outbound request, and a collector that reads the build queue at scrape time.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.errors import BinderBuildError
from binderbuild.http import HttpRequestSpec, HttpResponse, redact_url
from binderbuild.launcher import Launcher
from binderbuild.logging_setup import scrub
from binderbuild.models import LaunchRequest, LaunchResult
from binderbuild.quota import LaunchQuota
from binderbuild.secrets import Scrubber

if TYPE_CHECKING:
    from binderbuild.events import ProgressEvent

PREFIX = "binderbuild"


class BuildStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    CANCELLED = "cancelled"


class LaunchStatus(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    # The client went away (or the service stopped) before the server was ready.
    ABANDONED = "abandoned"


class Upstream(enum.StrEnum):
    REGISTRY = "registry"
    HUB = "hub"
    PROVIDER = "provider"
    OTHER = "other"


class Refusal(enum.StrEnum):
    RATE_LIMIT = "rate_limit"
    BANNED = "banned"
    FORBIDDEN = "forbidden"


_BUILD_STATUS = {
    BuildState.SUCCEEDED: BuildStatus.SUCCESS,
    BuildState.FAILED: BuildStatus.FAILURE,
    BuildState.CANCELLED: BuildStatus.CANCELLED,
}

# Seconds. Builds take from seconds (cached layers) to an hour; launches from
# about a second to the hub's spawn timeout; upstream calls are sub-second.
BUILD_BUCKETS = (5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, float("inf"))
LAUNCH_BUCKETS = (0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600, float("inf"))
QUEUE_BUCKETS = (0.1, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf"))

# Public API hosts of the hosted providers, used to attribute outbound
# requests; providers configured with other hosts are found from their traits.
KNOWN_PROVIDER_HOSTS: Mapping[str, str] = {
    "api.github.com": "gh",
    "github.com": "gh",
    "gitlab.com": "gl",
    "zenodo.org": "zenodo",
    "api.figshare.com": "figshare",
    "figshare.com": "figshare",
    "www.hydroshare.org": "hydroshare",
    "hydroshare.org": "hydroshare",
}

# Response headers carrying the remaining API quota (GitHub; GitLab).
_RATELIMIT_HEADERS = ("X-RateLimit-Remaining", "RateLimit-Remaining")


def _netloc(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return ""


class UpstreamClassifier:
    """Says which dependency an outbound URL belongs to, from its host.

    Registry and hub are matched on host *and* port (on one machine they
    differ only by port); providers on host.
    """

    def __init__(
        self,
        registry_urls: Iterable[str] = (),
        hub_urls: Iterable[str] = (),
        provider_hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = {n for n in map(_netloc, registry_urls) if n}
        self.hub = {n for n in map(_netloc, hub_urls) if n}
        self.provider_hosts = {h.lower(): p for h, p in (provider_hosts or {}).items()}

    def classify(self, url: str) -> tuple[Upstream, str]:
        """(service, provider id or "")."""
        netloc = _netloc(url)
        if netloc in self.registry:
            return Upstream.REGISTRY, ""
        if netloc in self.hub:
            return Upstream.HUB, ""
        host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
        for key in (netloc, host):
            if key in self.provider_hosts:
                return Upstream.PROVIDER, self.provider_hosts[key]
        return Upstream.OTHER, ""

    @classmethod
    def from_providers(
        cls,
        providers: Mapping[str, Any],
        registry_urls: Iterable[str] = (),
        hub_urls: Iterable[str] = (),
    ) -> UpstreamClassifier:
        """Find provider hosts in the providers' URL-valued traits (API base
        URLs of self-hosted GitLab, Dataverse installations ...)."""
        hosts = {h: p for h, p in KNOWN_PROVIDER_HOSTS.items() if p in providers}
        for prefix, provider in providers.items():
            traits = getattr(provider, "traits", None)
            if traits is None:
                continue
            for name in provider.trait_names(config=True):
                value = getattr(provider, name, None)
                values = value if isinstance(value, list | tuple) else [value]
                for item in values:
                    if not isinstance(item, str) or not item:
                        continue
                    if item.startswith(("http://", "https://")):
                        netloc = _netloc(item)
                    elif "host" in name and "/" not in item:
                        netloc = item.lower()  # a bare host name (hostname, hosts)
                    else:
                        continue
                    if not netloc or "{" in netloc:
                        continue  # templates like "api.{hostname}"
                    if hosts.setdefault(netloc, prefix) != prefix:
                        # Claimed by several providers (the DOI resolver):
                        # a provider request, but whose is unknown.
                        hosts[netloc] = ""
        return cls(registry_urls, hub_urls, hosts)


class _QueueCollector:
    """Reads the build manager at scrape time: always current, no bookkeeping."""

    def __init__(self, builds: BuildManager) -> None:
        self.builds = builds

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_build_queued_builds",
            "Builds waiting for a build slot.",
            value=self.builds.queue_length,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_build_running_builds",
            "Builds in progress.",
            value=self.builds.running,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_build_joined",
            "Requests that attached to a build another request had started "
            "(deduplicated builds).",
            value=self.builds.joins,
        )


class LifecycleStatsLike(Protocol):
    """``binderbuild.lifecycle.LifecycleStats``: what the cleaners measured and did."""

    engine_used: int | None
    engine_limit: int | None
    registry_bytes: int | None
    registry_budget: int | None
    freed: dict[str, int]
    removed: dict[str, int]
    swept: dict[str, int]
    disk_full_cleanups: int


class _LifecycleCollector:
    """Reads the lifecycle's figures at scrape time (issue 16). Disk use is the
    last reading (cleaner pass or /health); absent until there is one."""

    def __init__(self, stats: LifecycleStatsLike) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        used = GaugeMetricFamily(
            f"{PREFIX}_disk_used_bytes",
            "Bytes used, by store: engine (the filesystem of Docker's data root, or the "
            "engine's images and build cache with a budget), registry (the images under "
            "the prefix, from their manifests).",
            labels=["store"],
        )
        limit = GaugeMetricFamily(
            f"{PREFIX}_disk_limit_bytes",
            "What used_bytes is measured against, by store: the filesystem's size or the "
            "configured budget.",
            labels=["store"],
        )
        for store, value, cap in (
            ("engine", s.engine_used, s.engine_limit),
            ("registry", s.registry_bytes, s.registry_budget),
        ):
            if value is not None:
                used.add_metric([store], value)
            if cap:
                limit.add_metric([store], cap)
        freed = CounterMetricFamily(
            f"{PREFIX}_cleanup_freed_bytes",
            "Bytes freed by the image cleaners, by store (registry: bytes of the deleted "
            "images' blobs; the disk is freed by the registry's garbage collection).",
            labels=["store"],
        )
        removed = CounterMetricFamily(
            f"{PREFIX}_cleanup_removed_images",
            "Images removed by the image cleaners, by store.",
            labels=["store"],
        )
        for store in sorted(s.freed):
            freed.add_metric([store], s.freed[store])
            removed.add_metric([store], s.removed.get(store, 0))
        swept = CounterMetricFamily(
            f"{PREFIX}_cleanup_swept",
            "Leftovers removed by the sweeps: stopped server containers, work directories.",
            labels=["kind"],
        )
        for kind in sorted(s.swept):
            swept.add_metric([kind], s.swept[kind])
        yield used
        yield limit
        yield freed
        yield removed
        yield swept
        yield CounterMetricFamily(
            f"{PREFIX}_cleanup_disk_full",
            "Cleanups started because a build or push ran out of disk space (or /health "
            "found too little free).",
            value=s.disk_full_cleanups,
        )


class PoolMiss(enum.StrEnum):
    """Why a launch of an image with a warm pool was not served from it."""

    EMPTY = "empty"  # no pooled server was ready
    HANDOUT_FAILED = "handout_failed"  # the hub refused the launch token (server removed)


class PoolStatsLike(Protocol):
    @property
    def image(self) -> str: ...

    @property
    def ready(self) -> int: ...

    @property
    def starting(self) -> int: ...

    @property
    def backing_off(self) -> bool: ...


class PoolLike(Protocol):
    def stats(self) -> Sequence[PoolStatsLike]: ...


class _PoolCollector:
    """Reads the warm pools at scrape time: only images pooled now have series."""

    def __init__(self, pool: PoolLike) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Metric]:
        servers = GaugeMetricFamily(
            f"{PREFIX}_warm_pool_servers",
            "Servers of a warm pool, by image and state (ready: waiting for a launch; "
            "starting).",
            labels=["image", "state"],
        )
        backoff = GaugeMetricFamily(
            f"{PREFIX}_warm_pool_backing_off",
            "1 while a warm pool waits after failing to start servers (image broken, "
            "hub down); launches of its image are cold meanwhile.",
            labels=["image"],
        )
        for stats in self.pool.stats():
            servers.add_metric([stats.image, "ready"], stats.ready)
            servers.add_metric([stats.image, "starting"], stats.starting)
            backoff.add_metric([stats.image], 1 if stats.backing_off else 0)
        yield servers
        yield backoff


class Metrics:
    """binderbuild's metrics on a private registry."""

    def __init__(
        self,
        *,
        repo_labels: bool = False,
        scrubber: Scrubber | None = None,
        classifier: UpstreamClassifier | None = None,
        provider_ids: Iterable[str] = (),
    ) -> None:
        """``classifier`` names the dependency of each outbound request;
        ``provider_ids`` get their counters pre-created at 0."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.repo_labels = repo_labels
        self.scrubber = scrubber or Scrubber()
        self.classifier = classifier or UpstreamClassifier()
        extra = ("repo",) if repo_labels else ()
        r = self.registry
        self.build_duration = Histogram(
            f"{PREFIX}_build_duration_seconds",
            "Time from the start of a build to its end, by outcome.",
            ["status"],
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.build_finished = Counter(
            f"{PREFIX}_build_finished",
            "Builds that ended, by outcome and provider.",
            ["status", "provider", *extra],
            registry=r,
        )
        self.build_queue_wait = Histogram(
            f"{PREFIX}_build_queue_wait_seconds",
            "Time a build waited in the queue for a build slot.",
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.launch_duration = Histogram(
            f"{PREFIX}_launch_duration_seconds",
            "Time from asking the hub for a server to the server being ready, by outcome.",
            ["status"],
            buckets=LAUNCH_BUCKETS,
            registry=r,
        )
        self.launch_finished = Counter(
            f"{PREFIX}_launch_finished",
            "Launches that ended, by outcome and provider.",
            ["status", "provider", *extra],
            registry=r,
        )
        self.launch_running = Gauge(
            f"{PREFIX}_launch_running_launches",
            "Launches in progress.",
            registry=r,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Latency of outbound HTTP requests, by dependency "
            "(registry, hub, provider, other), provider id and status class.",
            ["service", "provider", "code"],
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.provider_ratelimit_remaining = Gauge(
            f"{PREFIX}_provider_ratelimit_remaining_requests",
            "API requests left in the provider's current rate-limit window, "
            "as its last response said.",
            ["provider"],
            registry=r,
        )
        self.request_refused = Counter(
            f"{PREFIX}_request_refused",
            "/build requests refused before any work, by reason.",
            ["reason"],
            registry=r,
        )
        self.warm_pool_handouts = Counter(
            f"{PREFIX}_warm_pool_handouts",
            "Launches served from a warm pool (hits).",
            registry=r,
        )
        self.warm_pool_misses = Counter(
            f"{PREFIX}_warm_pool_misses",
            "Launches of an image with a warm pool that were started cold, by reason.",
            ["reason"],
            registry=r,
        )
        self.warm_pool_handout_duration = Histogram(
            f"{PREFIX}_warm_pool_handout_duration_seconds",
            "Time to hand out a pooled server (quota check and launch token).",
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self.warm_pool_start_failures = Counter(
            f"{PREFIX}_warm_pool_start_failures",
            "Pooled servers that failed to start (the pool then backs off).",
            registry=r,
        )
        for miss in PoolMiss:
            self.warm_pool_misses.labels(miss.value)
        # Pre-create the label combinations whose values are known, so a
        # dashboard shows 0 rather than "no data" before the first event.
        for status in BuildStatus:
            self.build_duration.labels(status.value)
        for launch_status in LaunchStatus:
            self.launch_duration.labels(launch_status.value)
        for reason in Refusal:
            self.request_refused.labels(reason.value)

        # With repo labels the repository is part of every series: nothing
        # sensible to pre-create.
        for provider_id in [] if self.repo_labels else provider_ids:
            for build_status in BuildStatus:
                self._labels(self.build_finished, build_status, provider_id, None)
            for launch_status in LaunchStatus:
                self._labels(self.launch_finished, launch_status, provider_id, None)

    def watch_queue(self, builds: BuildManager) -> None:
        """Export the build manager's queue and slot gauges (read at scrape time)."""
        self.registry.register(_QueueCollector(builds))

    def watch_lifecycle(self, stats: LifecycleStatsLike) -> None:
        """Export disk use, bytes freed and images removed (read at scrape time)."""
        self.registry.register(_LifecycleCollector(stats))

    def watch_pool(self, pool: PoolLike) -> None:
        """Export the warm pools' sizes and backoff state (read at scrape time)."""
        self.registry.register(_PoolCollector(pool))

    def pool_handed_out(self, seconds: float) -> None:
        self.warm_pool_handouts.inc()
        self.warm_pool_handout_duration.observe(max(0.0, seconds))

    def pool_missed(self, reason: PoolMiss) -> None:
        self.warm_pool_misses.labels(reason.value).inc()

    def pool_start_failed(self) -> None:
        self.warm_pool_start_failures.inc()

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of the text exposition format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- hooks ----------------------------------------------------------------

    def _labels(self, metric: Counter, status: str, provider: str, repo: str | None) -> Any:
        if self.repo_labels:
            return metric.labels(status, provider, self._repo_value(repo))
        return metric.labels(status, provider)

    def _repo_value(self, repo: str | None) -> str:
        # Repository URLs may carry credentials (git provider specs): never
        # let them become a label.
        return scrub(self.scrubber, redact_url(repo)) if repo else ""

    def build_started(self, build: Build) -> None:
        if build.started is not None:
            self.build_queue_wait.observe(max(0.0, build.started - build.created))

    def build_finished_hook(self, build: Build) -> None:
        status = _BUILD_STATUS.get(build.state, BuildStatus.FAILURE)
        ref = build.job.ref
        self._labels(self.build_finished, status, ref.provider_id, ref.repo_url).inc()
        if build.started is not None:
            end = build.finished or time.time()
            self.build_duration.labels(status.value).observe(max(0.0, end - build.started))

    def launch_started(self) -> None:
        self.launch_running.inc()

    def launch_ended(
        self, status: LaunchStatus, provider: str, repo: str | None, seconds: float
    ) -> None:
        self.launch_running.dec()
        self.launch_duration.labels(status.value).observe(max(0.0, seconds))
        self._labels(self.launch_finished, status, provider, repo).inc()

    def observe_http(self, spec: HttpRequestSpec, response: HttpResponse) -> None:
        service, provider = self.classifier.classify(spec.url)
        code = f"{response.status // 100}xx" if 100 <= response.status < 600 else "other"
        self.upstream_duration.labels(service.value, provider, code).observe(response.elapsed)
        if service is Upstream.PROVIDER:
            for header in _RATELIMIT_HEADERS:
                raw = response.header(header)
                if raw:
                    try:
                        remaining = float(raw)
                    except ValueError:
                        continue
                    self.provider_ratelimit_remaining.labels(provider).set(remaining)
                    break

    def refused(self, reason: Refusal) -> None:
        self.request_refused.labels(reason.value).inc()


class InstrumentedLauncher(Launcher):
    """Wraps the real launcher to time each launch and count those in progress.

    The outcome is recorded the moment it is known: when the result arrives
    (the pipeline stops iterating right after it, so a ``finally`` here would
    only run when the generator is garbage collected) or when the inner
    launcher raises.
    """

    def __init__(self, inner: Launcher, metrics: Metrics) -> None:
        self.inner = inner
        self.metrics = metrics

    async def launch(
        self, request: LaunchRequest
    ) -> AsyncGenerator[ProgressEvent | LaunchResult, None]:
        started = time.monotonic()
        provider, repo = request.ref.provider_id, request.ref.repo_url
        self.metrics.launch_started()
        done = False

        def end(status: LaunchStatus) -> None:
            nonlocal done
            if not done:
                done = True
                self.metrics.launch_ended(status, provider, repo, time.monotonic() - started)

        try:
            # aclosing: when our consumer goes away, the inner launcher is
            # closed now (and cleans up its half-started server), not at some
            # later garbage collection.
            async with contextlib.aclosing(self.inner.launch(request)) as items:
                async for item in items:
                    if isinstance(item, LaunchResult):
                        end(LaunchStatus.SUCCESS)
                    yield item
        except BinderBuildError:
            end(LaunchStatus.FAILURE)
            raise
        except BaseException:
            # GeneratorExit / CancelledError: nobody is waiting any more.
            end(LaunchStatus.ABANDONED)
            raise
        finally:
            end(LaunchStatus.FAILURE)

    async def check(self) -> dict[str, Any]:
        return await self.inner.check()

    def launch_quota(self) -> LaunchQuota | None:
        return self.inner.launch_quota()

    async def close(self) -> None:
        await self.inner.close()
