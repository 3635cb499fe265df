"""Keeping one disk from filling up (issue 16): usage tracking, the engine's
image cleaner and the registry's byte budget.

- ``UsageTracker`` notes when each image was last used: every pipeline run
  that ended ready (a launch, or a build-only request for an image that
  existed or was built) and every successful build. It is a pipeline
  ``RunObserver`` and a ``BuildManager`` on_finished hook; it only puts the
  name in a dict, and one task writes the batch to the history store (on its
  own thread), so the request path never waits for the disk.
- ``EngineImageCleaner``: when the disk holding the Docker engine's data root
  is fuller than ``high_water_percent`` (or the engine holds more than
  ``budget`` bytes), it prunes dangling images and the build cache, then
  removes built images least recently used first (``last_used``, else the
  image's creation time) until usage is at ``low_water_percent``. Only images
  whose every tag is under the service's ``image_prefix`` are candidates:
  never base images, never an image a container runs, never one a build is
  making, never one used within ``grace_period``.
- ``RegistryLifecycle``: past ``budget`` bytes (the registry's blobs, each
  counted once, from manifests), it deletes manifests of the least recently
  used images under the prefix, keeping the newest image of every repository
  and anything used within ``keep_days``. Deleted images are rebuilt when
  next asked for. The registry frees the space only in its garbage
  collection (``scripts/services.sh gc`` on the single machine).

The selection rules are pure functions (``engine_candidates``,
``registry_deletions``); the engine is behind a small protocol so tests can
simulate "the disk is 90 % full" with an injected reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from traitlets import Bool, Float, Unicode
from traitlets.config import LoggingConfigurable

from binderbuild.builds import Build, BuildState
from binderbuild.errors import RegistryError
from binderbuild.pipeline import RunOutcome, RunReport
from binderbuild.registry import RegistryClient, repository_path
from binderbuild.units import parse_bytes

log = logging.getLogger("binderbuild.lifecycle")


def _noop(_name: str) -> None:
    pass


# --- usage tracking -------------------------------------------------------------------


class UsageStore(Protocol):
    async def record_usage(self, used: Mapping[str, float]) -> None: ...

    async def last_used(self) -> dict[str, float]: ...


class UsageTracker:
    """Batched ``last_used`` writes: callers only touch a dict."""

    def __init__(self, store: UsageStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._batch: dict[str, float] = {}
        self._flushing: asyncio.Task[None] | None = None

    def observe_run(self, report: RunReport) -> None:
        """Pipeline observer: a run that ended ready used its image."""
        if report.outcome is RunOutcome.SUCCESS and report.image is not None:
            self.touch(report.image.name)

    def remember_built(self, build: Build) -> None:
        """BuildManager on_finished hook: a new image counts as used now."""
        if build.state is BuildState.SUCCEEDED:
            self.touch(build.image_name)

    def touch(self, image_name: str) -> None:
        now = self.clock()
        self._batch[image_name] = max(now, self._batch.get(image_name, now))
        if self._flushing is None:
            try:
                self._flushing = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:  # no loop (a synchronous caller): the next flush writes it
                pass

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, {}
                try:
                    await self.store.record_usage(batch)
                except Exception as exc:
                    # Losing a few last-used times only makes cleanup less precise.
                    log.error("could not record image use (%d images): %s", len(batch), exc)
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Wait until everything touched so far is written."""
        while self._flushing is not None or self._batch:
            if self._flushing is None:
                self._flushing = asyncio.get_running_loop().create_task(self._flush())
            await asyncio.shield(self._flushing)

    async def last_used(self) -> dict[str, float]:
        await self.flush()
        return await self.store.last_used()

    async def close(self) -> None:
        await self.flush()


# --- the engine -----------------------------------------------------------------------


@dataclass(frozen=True)
class DiskUsage:
    total: int
    used: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class EngineImage:
    id: str
    tags: tuple[str, ...]
    created: float  # unix time
    size: int


class ImageInUse(Exception):
    """The engine refused to remove an image (a container uses it)."""


class Engine(Protocol):
    async def images(self) -> list[EngineImage]: ...

    async def running_image_ids(self) -> set[str]: ...

    async def remove(self, image: EngineImage) -> None: ...

    async def prune(self, build_cache: bool) -> int: ...

    async def usage(self) -> DiskUsage: ...

    async def engine_bytes(self) -> int: ...


class DockerEngine:
    """``Engine`` over docker-py (blocking calls run on worker threads)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def images(self) -> list[EngineImage]:
        rows = await asyncio.to_thread(self.client.api.images)
        return [
            EngineImage(
                id=str(row["Id"]),
                tags=tuple(t for t in row.get("RepoTags") or () if t != "<none>:<none>"),
                created=float(row.get("Created") or 0),
                size=int(row.get("Size") or 0),
            )
            for row in rows
        ]

    async def running_image_ids(self) -> set[str]:
        rows = await asyncio.to_thread(self.client.api.containers)
        return {str(row.get("ImageID")) for row in rows}

    async def remove(self, image: EngineImage) -> None:
        import docker.errors

        for tag in image.tags:
            try:
                await asyncio.to_thread(self.client.api.remove_image, tag)
            except docker.errors.ImageNotFound:
                continue
            except docker.errors.APIError as exc:
                if exc.status_code == 409:
                    raise ImageInUse(str(exc.explanation or exc)) from None
                raise

    async def prune(self, build_cache: bool) -> int:
        result = await asyncio.to_thread(
            self.client.api.prune_images, filters={"dangling": True}
        )
        freed = int((result or {}).get("SpaceReclaimed") or 0)
        if build_cache:
            result = await asyncio.to_thread(self.client.api.prune_builds)
            freed += int((result or {}).get("SpaceReclaimed") or 0)
        return freed

    async def usage(self) -> DiskUsage:
        info = await asyncio.to_thread(self.client.info)
        root = info.get("DockerRootDir") or "/var/lib/docker"
        disk = await asyncio.to_thread(shutil.disk_usage, root)
        return DiskUsage(total=disk.total, used=disk.total - disk.free)

    async def engine_bytes(self) -> int:
        df = await asyncio.to_thread(self.client.api.df)
        cache = sum(int(c.get("Size") or 0) for c in df.get("BuildCache") or ())
        return int(df.get("LayersSize") or 0) + cache


def engine_candidates(
    images: Iterable[EngineImage],
    *,
    prefix: str,
    last_used: Mapping[str, float],
    in_use_ids: set[str],
    in_use_names: set[str],
    now: float,
    grace_seconds: float,
) -> list[EngineImage]:
    """Images the cleaner may remove, least recently used first.

    A candidate has tags, every one of them under ``prefix`` (an image also
    tagged as something else, e.g. a base image, stays), runs in no
    container, is made by no running build, and was neither used nor created
    within ``grace_seconds``.
    """
    chosen: list[tuple[float, EngineImage]] = []
    for image in images:
        if not prefix or not image.tags or not all(t.startswith(prefix) for t in image.tags):
            continue
        if image.id in in_use_ids or in_use_names.intersection(image.tags):
            continue
        used = max((last_used[t] for t in image.tags if t in last_used), default=image.created)
        if used > now - grace_seconds:
            continue
        chosen.append((used, image))
    chosen.sort(key=lambda pair: (pair[0], pair[1].tags))
    return [image for _, image in chosen]


@dataclass
class CleanupReport:
    triggered: bool
    before: DiskUsage
    after: DiskUsage
    high_water: int = 0
    low_water: int = 0
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    pruned_bytes: int = 0
    dry_run: bool = False

    @property
    def freed_bytes(self) -> int:
        return max(0, self.before.used - self.after.used)


class EngineImageCleaner(LoggingConfigurable):
    """Removes built images from the local Docker engine when its disk fills."""

    enabled = Bool(
        True,
        config=True,
        help="Run the engine image cleaner (single machine: the engine that builds and "
        "runs servers). It only ever removes images under BinderBuild.image_prefix that no "
        "container and no build uses; they are rebuilt when next asked for.",
    )
    interval = Float(
        300.0,
        config=True,
        help="Seconds between two checks of the engine's disk use (the first one "
        "runs one interval after start).",
    )
    high_water_percent = Float(
        80.0,
        config=True,
        help="Clean when the filesystem holding Docker's data root is fuller than this "
        "(percent), or, with budget, when the engine holds more than budget bytes.",
    )
    low_water_percent = Float(
        60.0,
        config=True,
        help="Clean down to this (percent of the filesystem). With budget: down to "
        "budget x low_water_percent / high_water_percent (75 % of it with the defaults).",
    )
    budget = Unicode(
        "",
        config=True,
        help="Byte budget of the engine's images and build cache (e.g. '50G'), measured "
        "with the engine's own accounting (docker system df), instead of the filesystem's "
        "percentages. Empty: use the filesystem.",
    )
    grace_period = Float(
        3600.0,
        config=True,
        help="Seconds after an image was built or last used during which it is never "
        "removed (covers launches in flight).",
    )
    prune_build_cache = Bool(
        True,
        config=True,
        help="Also prune the engine's build cache (with dangling images) when cleaning.",
    )

    def __init__(
        self,
        engine: Engine,
        *,
        image_prefix: str,
        usage: Any,
        in_use_names: Callable[[], Iterable[str]],
        on_removed: Callable[[str], None] = _noop,
        disk_usage: Callable[[], Awaitable[DiskUsage]] | None = None,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.engine = engine
        self.image_prefix = image_prefix
        self.usage = usage  # anything with ``async last_used() -> {name: time}``
        self.in_use_names = in_use_names
        self.on_removed = on_removed
        self._disk_usage = disk_usage
        self.clock = clock
        self._lock = asyncio.Lock()
        if not image_prefix:
            log.warning("engine image cleaner off: BinderBuild.image_prefix is empty")

    async def measure(self) -> DiskUsage:
        if self._disk_usage is not None:
            return await self._disk_usage()
        if self.budget:
            return DiskUsage(total=parse_bytes(self.budget), used=await self.engine.engine_bytes())
        return await self.engine.usage()

    def watermarks(self, total: int) -> tuple[int, int]:
        """(clean above, clean down to), in bytes."""
        if self.budget and self._disk_usage is None:
            high = parse_bytes(self.budget)
            return high, int(high * self.low_water_percent / max(self.high_water_percent, 1e-9))
        return int(total * self.high_water_percent / 100), int(total * self.low_water_percent / 100)

    async def run_once(self, dry_run: bool = False) -> CleanupReport:
        async with self._lock:
            return await self._run_once(dry_run)

    async def _run_once(self, dry_run: bool) -> CleanupReport:
        before = await self.measure()
        high, low = self.watermarks(before.total)
        report = CleanupReport(False, before, before, high, low, dry_run=dry_run)
        if not self.image_prefix or before.used <= high:
            return report
        report.triggered = True
        log.info(
            "engine disk use %s of %s (%.0f %%) is past the high-water mark %s: cleaning "
            "down to %s%s",
            before.used, before.total, before.percent, high, low, " (dry run)" if dry_run else "",
        )
        current = before
        if not dry_run:
            report.pruned_bytes = await self.engine.prune(self.prune_build_cache)
            current = await self.measure()
            log.info("pruned dangling images and build cache: %s bytes", report.pruned_bytes)
        if current.used > low:
            candidates = engine_candidates(
                await self.engine.images(),
                prefix=self.image_prefix,
                last_used=await self.usage.last_used(),
                in_use_ids=await self.engine.running_image_ids(),
                in_use_names=set(self.in_use_names()),
                now=self.clock(),
                grace_seconds=self.grace_period,
            )
            estimate = current.used
            for image in candidates:
                if (estimate if dry_run else current.used) <= low:
                    break
                name = image.tags[0]
                if dry_run:
                    estimate -= image.size
                    report.removed.append(name)
                    continue
                # Re-read right before removing: a server may have started on it.
                if image.id in await self.engine.running_image_ids() or set(
                    self.in_use_names()
                ).intersection(image.tags):
                    report.skipped.append(name)
                    continue
                try:
                    await self.engine.remove(image)
                except ImageInUse as exc:
                    log.info("kept %s: %s", name, exc)
                    report.skipped.append(name)
                    continue
                for tag in image.tags:
                    self.on_removed(tag)
                report.removed.append(name)
                current = await self.measure()
                log.info(
                    "removed image %s (%s bytes); engine disk use now %.0f %%",
                    name, image.size, current.percent,
                )
        report.after = current
        if not dry_run and current.used > low:
            log.warning(
                "engine disk use still %s bytes (%.0f %%) after cleaning: nothing else may "
                "be removed (images in use, recent, or not built by this service)",
                current.used, current.percent,
            )
        log.info(
            "engine cleanup%s: %d images removed, %s bytes freed",
            " (dry run)" if dry_run else "", len(report.removed), report.freed_bytes,
        )
        return report


# --- the registry ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryImage:
    """One manifest in the registry (all the tags that point at it)."""

    repository: str  # path in the registry, e.g. binder-org-repo-4f2a
    digest: str
    tags: tuple[str, ...]
    names: tuple[str, ...]  # full image names (registry host included), one per tag
    blobs: Mapping[str, int]  # blob digest -> size: layers and config
    created: float  # unix time (the image config's "created"), 0 when unknown


def registry_bytes(images: Iterable[RegistryImage]) -> int:
    """Bytes of the blobs the images reference, each blob once."""
    blobs: dict[str, int] = {}
    for image in images:
        blobs.update(image.blobs)
    return sum(blobs.values())


def registry_deletions(
    images: Sequence[RegistryImage],
    *,
    budget: int,
    last_used: Mapping[str, float],
    keep_seconds: float,
    now: float,
) -> list[RegistryImage]:
    """Manifests to delete so the images' blobs fit in ``budget``, least
    recently used first (``last_used`` of any tag, else the creation time).
    Never the newest image of a repository, never one used within
    ``keep_seconds``. Stops as soon as the budget is met; may not meet it."""
    refs: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for image in images:
        for blob, size in image.blobs.items():
            refs[blob] = refs.get(blob, 0) + 1
            sizes[blob] = size
    total = sum(sizes.values())
    if total <= budget:
        return []
    newest: dict[str, RegistryImage] = {}
    for image in images:
        best = newest.get(image.repository)
        if best is None or (image.created, image.digest) > (best.created, best.digest):
            newest[image.repository] = image

    def last_use(image: RegistryImage) -> float:
        return max((last_used[n] for n in image.names if n in last_used), default=image.created)

    candidates = sorted(
        (
            i
            for i in images
            if newest[i.repository] is not i and last_use(i) <= now - keep_seconds
        ),
        key=lambda i: (last_use(i), i.repository, i.digest),
    )
    doomed: list[RegistryImage] = []
    for image in candidates:
        if total <= budget:
            break
        doomed.append(image)
        for blob in image.blobs:
            refs[blob] -= 1
            if refs[blob] == 0:
                total -= sizes[blob]
    return doomed


def parse_created(value: Any) -> float:
    """An image config's ``created`` (RFC 3339, maybe nanoseconds) as unix time."""
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.strip().replace("Z", "+00:00")
    main, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{main}.{digits[:6]}{zone}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


@dataclass
class RegistryReport:
    before: int
    after: int
    budget: int
    deleted: list[str] = field(default_factory=list)
    dry_run: bool = False


class RegistryLifecycle(LoggingConfigurable):
    """Keeps the registry's images under a byte budget by deleting manifests."""

    enabled = Bool(
        False,
        config=True,
        help="Delete the least recently used images from the registry when it holds more "
        "than budget. Off by default: the registry must allow deletes (scripts/services.sh: "
        "BINDERBUILD_REGISTRY_DELETES=1) and should be binderbuild's own. Space comes back "
        "in the registry's garbage collection (scripts/services.sh gc).",
    )
    budget = Unicode(
        "",
        config=True,
        help="Byte budget of the images under BinderBuild.image_prefix in the registry "
        "(e.g. '100G'): the sizes of their layers and configs from the manifests, each "
        "blob counted once. Required when enabled.",
    )
    keep_days = Float(
        7.0,
        config=True,
        help="Images used (launched, found, built) in the last keep_days days are never "
        "deleted, nor the newest image of each repository.",
    )
    interval = Float(
        3600.0,
        config=True,
        help="Seconds between two checks of the registry (the first one runs one interval "
        "after start).",
    )

    def __init__(
        self,
        client: RegistryClient,
        *,
        image_prefix: str,
        usage: Any,
        on_removed: Callable[[str], None] = _noop,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.usage = usage
        self.on_removed = on_removed
        self.clock = clock
        # "reg.example:5000/binder-" -> host "reg.example:5000", path prefix "binder-".
        path = repository_path(image_prefix)
        self.path_prefix = path
        self.host = image_prefix[: len(image_prefix) - len(path)].rstrip("/")
        self._lock = asyncio.Lock()

    def image_name(self, repository: str, tag: str) -> str:
        return f"{self.host}/{repository}:{tag}" if self.host else f"{repository}:{tag}"

    async def inventory(self) -> list[RegistryImage]:
        """Every manifest under the prefix, with its blobs and creation time."""
        found: dict[tuple[str, str], RegistryImage] = {}
        for repository in await self.client.repositories():
            if not self.path_prefix or not repository.startswith(self.path_prefix):
                continue
            for tag in await self.client.tags(repository):
                got = await self.client.manifest(repository, tag)
                if got is None:
                    continue
                digest, manifest = got
                key = (repository, digest)
                if key in found:
                    old = found[key]
                    found[key] = RegistryImage(
                        repository, digest, (*old.tags, tag),
                        (*old.names, self.image_name(repository, tag)), old.blobs, old.created,
                    )
                    continue
                blobs, created = await self._blobs(repository, manifest)
                found[key] = RegistryImage(
                    repository, digest, (tag,), (self.image_name(repository, tag),), blobs, created
                )
        return list(found.values())

    async def _blobs(self, repository: str, manifest: dict[str, Any]) -> tuple[dict[str, int], float]:
        blobs: dict[str, int] = {}
        created = 0.0
        children = manifest.get("manifests")
        if isinstance(children, list):  # an index: the union of its platforms' images
            for child in children:
                got = await self.client.manifest(repository, str(child.get("digest")))
                if got is not None:
                    child_blobs, child_created = await self._blobs(repository, got[1])
                    blobs.update(child_blobs)
                    created = max(created, child_created)
            return blobs, created
        config = manifest.get("config") or {}
        for item in [config, *(manifest.get("layers") or [])]:
            if isinstance(item, dict) and item.get("digest"):
                blobs[str(item["digest"])] = int(item.get("size") or 0)
        if config.get("digest"):
            with contextlib.suppress(RegistryError):
                body = await self.client.blob_json(repository, str(config["digest"]))
                created = parse_created((body or {}).get("created"))
        return blobs, created

    async def run_once(self, dry_run: bool = False) -> RegistryReport:
        async with self._lock:
            budget = parse_bytes(self.budget) if self.budget else 0
            images = await self.inventory()
            before = registry_bytes(images)
            report = RegistryReport(before, before, budget, dry_run=dry_run)
            if not budget or not self.path_prefix or before <= budget:
                return report
            log.info(
                "registry holds %s bytes of images, budget %s: deleting the least recently "
                "used%s", before, budget, " (dry run)" if dry_run else "",
            )
            doomed = registry_deletions(
                images,
                budget=budget,
                last_used=await self.usage.last_used(),
                keep_seconds=self.keep_days * 86400,
                now=self.clock(),
            )
            gone: list[RegistryImage] = []
            for image in doomed:
                label = image.names[0]
                if not dry_run:
                    await self.client.delete_manifest(image.repository, image.digest)
                    for name in image.names:
                        self.on_removed(name)
                    log.info("deleted %s (%s) from the registry", label, image.digest)
                gone.append(image)
                report.deleted.append(label)
            report.after = registry_bytes(i for i in images if i not in gone)
            if report.after > budget:
                log.warning(
                    "registry still over its budget (%s > %s bytes): the newest image of each "
                    "repository and recently used images are kept", report.after, budget,
                )
            return report


# --- running them -------------------------------------------------------------------------


class Lifecycle:
    """The usage tracker and the periodic cleaners of one service."""

    def __init__(
        self,
        usage: UsageTracker,
        engine_cleaner: EngineImageCleaner | None = None,
        registry: RegistryLifecycle | None = None,
    ) -> None:
        self.usage = usage
        self.engine_cleaner = engine_cleaner
        self.registry = registry
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self.engine_cleaner is not None:
            self._tasks.append(
                asyncio.ensure_future(
                    _every(self.engine_cleaner.interval, self.engine_cleaner.run_once, "engine image cleanup")
                )
            )
        if self.registry is not None:
            self._tasks.append(
                asyncio.ensure_future(
                    _every(self.registry.interval, self.registry.run_once, "registry cleanup")
                )
            )

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.usage.close()


async def _every(interval: float, job: Callable[[], Awaitable[Any]], what: str) -> None:
    while True:
        await asyncio.sleep(max(interval, 1.0))
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A registry or engine hiccup skips one pass, never the loop.
            log.error("%s failed: %s", what, exc)
