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

import argparse
import asyncio
import contextlib
import enum
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from traitlets import Bool, Float, List, Unicode
from traitlets.config import LoggingConfigurable

from binderbuild.builds import Build, BuildState
from binderbuild.errors import BinderBuildError, BuildFailed, RegistryError
from binderbuild.pipeline import RunOutcome, RunReport
from binderbuild.registry import RegistryClient, push_server_error, repository_path
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

    async def prune(self, build_cache: bool, dangling: bool = True) -> int: ...

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

    async def prune(self, build_cache: bool, dangling: bool = True) -> int:
        freed = 0
        if dangling:
            result = await asyncio.to_thread(
                self.client.api.prune_images, filters={"dangling": True}
            )
            freed += int((result or {}).get("SpaceReclaimed") or 0)
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
    prune_dangling = Bool(
        True,
        config=True,
        help="Prune the engine's dangling (untagged, unused) images when cleaning. They "
        "are the engine's, not only binderbuild's: turn off on an engine shared with "
        "other users.",
    )
    min_free = Unicode(
        "2G",
        config=True,
        help="Free space (e.g. '2G') a build needs on the filesystem of Docker's data "
        "root: with less, /health fails its 'disk' check (a build would not fit) and "
        "the cleaner runs at once. Empty or '0': no such check.",
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

    async def filesystem(self) -> DiskUsage:
        """The filesystem holding the engine's data (what a build writes to)."""
        if self._disk_usage is not None:
            return await self._disk_usage()
        return await self.engine.usage()

    async def health(self) -> dict[str, Any]:
        """The ``disk`` check's engine part: ok unless less than ``min_free`` is
        free (a build would not fit); a warning above the high-water mark."""
        usage = await self.measure()
        high, _ = self.watermarks(usage.total)
        fs = usage if self._disk_usage is not None or not self.budget else await self.filesystem()
        free = fs.total - fs.used
        result: dict[str, Any] = {
            "used_bytes": usage.used,
            "limit_bytes": usage.total,
            "high_water_bytes": high,
            "free_bytes": free,
            "ok": True,
        }
        if usage.used > high:
            result["warning"] = (
                f"the engine's disk use ({usage.used} bytes) is past the high-water mark "
                f"({high} bytes): the image cleaner removes the least recently used images"
            )
        need = parse_bytes(self.min_free) if self.min_free else 0
        if need and free < need:
            result["ok"] = False
            result["message"] = (
                f"the build host is out of disk space: {free} bytes free where a build needs "
                f"{need} (EngineImageCleaner.min_free)"
            )
        return result

    async def run_once(self, dry_run: bool = False, force: bool = False) -> CleanupReport:
        """One pass: above the high-water mark (or always, with ``force``:
        after a disk-full failure, or an operator's request) clean down to
        the low-water mark."""
        async with self._lock:
            return await self._run_once(dry_run, force)

    async def _run_once(self, dry_run: bool, force: bool = False) -> CleanupReport:
        before = await self.measure()
        high, low = self.watermarks(before.total)
        report = CleanupReport(False, before, before, high, low, dry_run=dry_run)
        if not self.image_prefix or (before.used <= high and not (force and before.used > low)):
            return report
        report.triggered = True
        log.info(
            "engine disk use %s of %s (%.0f %%)%s: cleaning down to %s%s",
            before.used,
            before.total,
            before.percent,
            f" is past the high-water mark {high}" if before.used > high else " (cleanup forced)",
            low,
            " (dry run)" if dry_run else "",
        )
        current = before
        if not dry_run:
            if self.prune_dangling or self.prune_build_cache:
                report.pruned_bytes = await self.engine.prune(
                    self.prune_build_cache, dangling=self.prune_dangling
                )
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
                    name,
                    image.size,
                    current.percent,
                )
        report.after = current
        if not dry_run and current.used > low:
            log.warning(
                "engine disk use still %s bytes (%.0f %%) after cleaning: nothing else may "
                "be removed (images in use, recent, or not built by this service)",
                current.used,
                current.percent,
            )
        log.info(
            "engine cleanup%s: %d images removed, %s bytes freed",
            " (dry run)" if dry_run else "",
            len(report.removed),
            report.freed_bytes,
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
        (i for i in images if newest[i.repository] is not i and last_use(i) <= now - keep_seconds),
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
    storage_path = Unicode(
        "",
        config=True,
        help="Directory of the registry's storage when it is on this machine (run.sh: "
        "var/registry/data): /health fails its 'disk' check when less than min_free is "
        "free there (a push would not fit). Empty: not checked.",
    )
    min_free = Unicode(
        "1G",
        config=True,
        help="Free space (e.g. '1G') a push needs in storage_path; see storage_path. A "
        "push the registry answers with a 5xx while less is free there is reported as the "
        "registry being out of disk space and starts a forced cleanup.",
    )
    gc_command = List(
        Unicode(),
        default_value=[],
        config=True,
        help="Command (argument list) that runs the registry's garbage collection, e.g. "
        "['bash', 'scripts/services.sh', 'gc'] on the single machine. After a push failed "
        "for lack of disk space and the forced cleanup deleted images, binderbuild runs it "
        "in a maintenance window (builds queue meanwhile). Empty: never run (deleted "
        "images' space comes back at the operator's next gc).",
    )
    gc_timeout = Float(
        600.0,
        config=True,
        help="Seconds gc_command may run before it is killed (the maintenance window "
        "closes either way).",
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
        self.last_report: RegistryReport | None = None

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
                        repository,
                        digest,
                        (*old.tags, tag),
                        (*old.names, self.image_name(repository, tag)),
                        old.blobs,
                        old.created,
                    )
                    continue
                blobs, created = await self._blobs(repository, manifest)
                found[key] = RegistryImage(
                    repository, digest, (tag,), (self.image_name(repository, tag),), blobs, created
                )
        return list(found.values())

    async def _blobs(
        self, repository: str, manifest: dict[str, Any]
    ) -> tuple[dict[str, int], float]:
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

    def free_bytes(self) -> int | None:
        """Free space in ``storage_path`` (None when it is not set)."""
        if not self.storage_path:
            return None
        return shutil.disk_usage(self.storage_path).free

    def push_failure(self, message: str) -> str | None:
        """A failed build's message, read as a push the registry could not
        store: a 5xx answer to the push (the distribution registry says only
        "500 Internal Server Error" when its disk is full) while its storage,
        on this machine, has less than ``min_free`` free. Returns the message
        to report instead, None when that is not the case."""
        status = push_server_error(message)
        need = parse_bytes(self.min_free) if self.min_free else 0
        if status is None or not need:
            return None
        try:
            free = self.free_bytes()
        except OSError as exc:
            log.warning("cannot read the registry storage's free space: %s", exc)
            return None
        if free is None or free >= need:
            return None
        return (
            f"The registry is out of disk space: it refused the push ({status}) with "
            f"{free} bytes free in its storage, where a push needs {need} "
            "(RegistryLifecycle.min_free). A cleanup has started; ask again in a few minutes."
        )

    def forced_target(self, before: int, budget: int) -> int:
        """What a forced cleanup (after a push ran out of disk space) deletes
        down to: the budget, and low enough that twice ``min_free`` is free
        once the garbage collection ran."""
        target = budget or before
        need = parse_bytes(self.min_free) if self.min_free else 0
        with contextlib.suppress(OSError):
            free = self.free_bytes()
            if free is not None and need:
                target = min(target, before - max(0, 2 * need - free))
        return max(0, target)

    async def run_once(self, dry_run: bool = False, force: bool = False) -> RegistryReport:
        """One pass: over the budget, delete the least recently used images.
        ``force`` (a push ran out of disk space): also delete until twice
        ``min_free`` would be free in ``storage_path``."""
        async with self._lock:
            budget = parse_bytes(self.budget) if self.budget else 0
            images = await self.inventory()
            before = registry_bytes(images)
            report = RegistryReport(before, before, budget, dry_run=dry_run)
            if not dry_run:
                self.last_report = report
            if not budget and not force:
                return report
            target = self.forced_target(before, budget) if force else budget
            if not self.path_prefix or before <= target:
                return report
            log.info(
                "registry holds %s bytes of images, budget %s%s: deleting the least recently "
                "used%s",
                before,
                budget,
                f" (forced: down to {target})" if target != budget else "",
                " (dry run)" if dry_run else "",
            )
            doomed = registry_deletions(
                images,
                budget=target,
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
            if not dry_run:
                self.last_report = report
            if report.after > target:
                log.warning(
                    "registry still over its budget (%s > %s bytes): the newest image of each "
                    "repository and recently used images are kept",
                    report.after,
                    budget,
                )
            return report

    async def health(self) -> dict[str, Any]:
        """The ``disk`` check's registry part: not ok when a push would not fit
        (``storage_path`` has less than ``min_free`` free); a warning while the
        images are over the budget (from the last pass: listing is not cheap)."""
        result: dict[str, Any] = {"ok": True}
        last = self.last_report
        if last is not None:
            result.update(bytes=last.after, budget_bytes=last.budget)
            if last.budget and last.after > last.budget:
                result["warning"] = (
                    f"the registry holds {last.after} bytes of images, over its budget of "
                    f"{last.budget} bytes (recently used images and the newest per repository "
                    "are kept)"
                )
        if self.storage_path:
            disk = await asyncio.to_thread(shutil.disk_usage, self.storage_path)
            result["free_bytes"] = disk.free
            need = parse_bytes(self.min_free) if self.min_free else 0
            if need and disk.free < need:
                result["ok"] = False
                result["message"] = (
                    f"a push would not fit: {disk.free} bytes free in the registry's storage "
                    f"where a push needs {need} (RegistryLifecycle.min_free)"
                )
        return result


# --- sweeps ---------------------------------------------------------------------------------


@dataclass
class SweepReport:
    containers: list[str] = field(default_factory=list)
    workdirs: list[str] = field(default_factory=list)
    dry_run: bool = False


class Sweeper(LoggingConfigurable):
    """Removes what builds and servers leave behind on this machine: stopped
    server containers (with their anonymous volumes) and stale build work
    directories."""

    enabled = Bool(
        True,
        config=True,
        help="Sweep stopped server containers and stale build work directories every "
        "interval (single machine).",
    )
    interval = Float(
        3600.0,
        config=True,
        help="Seconds between two sweeps (the first one runs one interval after start).",
    )
    stopped_server_age = Float(
        3600.0,
        config=True,
        help="Seconds a stopped container of an image under BinderBuild.image_prefix (a "
        "server that exited, kept so the hub can say why) is left before the sweep "
        "removes it, with its anonymous volumes.",
    )
    stale_workdir_age = Float(
        86400.0,
        config=True,
        help="Seconds after which a build work directory (binderbuild-* under the "
        "builder's work root) that names no owner is removed. Directories of dead owners "
        "go at once; those of live builds never.",
    )

    def __init__(
        self,
        client: Any,
        *,
        image_prefix: str,
        work_root: str | None,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.client = client
        self.image_prefix = image_prefix
        self.work_root = work_root
        self.clock = clock
        self._lock = asyncio.Lock()

    async def run_once(self, dry_run: bool = False) -> SweepReport:
        async with self._lock:
            report = SweepReport(dry_run=dry_run)
            if self.client is not None and self.image_prefix:
                report.containers = await asyncio.to_thread(self._containers, dry_run)
            if self.work_root is not None:
                report.workdirs = await asyncio.to_thread(self._workdirs, dry_run)
            if report.containers or report.workdirs:
                log.info(
                    "sweep%s: %d stopped server containers, %d stale work directories removed",
                    " (dry run)" if dry_run else "",
                    len(report.containers),
                    len(report.workdirs),
                )
            return report

    def _containers(self, dry_run: bool) -> list[str]:
        import docker.errors

        from binderbuild.builders.leftovers import ROLE_LABEL

        gone: list[str] = []
        rows = self.client.api.containers(
            all=True, filters={"status": ["exited", "dead", "created"]}
        )
        now = self.clock()
        for row in rows:
            image = str(row.get("Image") or "")
            if not image.startswith(self.image_prefix) or ROLE_LABEL in (row.get("Labels") or {}):
                continue
            try:
                state = self.client.api.inspect_container(row["Id"]).get("State") or {}
            except docker.errors.NotFound:
                continue
            ended = parse_created(state.get("FinishedAt")) or float(row.get("Created") or 0)
            if state.get("Running") or now - ended < self.stopped_server_age:
                continue
            name = (row.get("Names") or [row["Id"][:12]])[0].lstrip("/")
            if not dry_run:
                try:
                    self.client.api.remove_container(row["Id"], v=True)
                except docker.errors.NotFound:
                    continue
                except docker.errors.APIError as exc:  # started again meanwhile
                    log.info("kept container %s: %s", name, exc)
                    continue
                log.info("removed stopped server container %s (%s)", name, image)
            gone.append(name)
        return gone

    def _workdirs(self, dry_run: bool) -> list[str]:
        from pathlib import Path

        from binderbuild.builders import leftovers

        gone: list[str] = []
        if not dry_run:
            gone += [item.name for item in leftovers.sweep_workdirs(self.work_root or "")]
        base = Path(self.work_root or tempfile.gettempdir())
        now = self.clock()
        try:
            paths = sorted(base.glob(leftovers.WORKDIR_PREFIX + "*"))
        except OSError:
            return gone
        for path in paths:
            try:
                if not path.is_dir() or (path / leftovers.OWNER_FILE).exists():
                    continue
                if now - path.stat().st_mtime < self.stale_workdir_age:
                    continue
            except OSError:
                continue
            if not dry_run:
                leftovers.remove_workdir(path)
                log.info("removed stale work directory %s", path)
            gone.append(str(path))
        return gone


# --- running them -------------------------------------------------------------------------

# Seconds between two cleanups started by a full disk.
DISK_FULL_PAUSE = 60.0
_NO_SPACE = re.compile(r"out of disk space|no space left on device|ENOSPC", re.IGNORECASE)


class Store(enum.StrEnum):
    ENGINE = "engine"
    REGISTRY = "registry"


@dataclass
class LifecycleStats:
    """What /metrics shows (read at scrape time)."""

    engine_used: int | None = None
    engine_limit: int | None = None
    registry_bytes: int | None = None
    registry_budget: int | None = None
    freed: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Store})
    removed: dict[str, int] = field(default_factory=lambda: {s.value: 0 for s in Store})
    swept: dict[str, int] = field(default_factory=lambda: {"container": 0, "workdir": 0})
    disk_full_cleanups: int = 0
    registry_gc_runs: int = 0


class BuildsLike(Protocol):
    """The part of ``BuildManager`` maintenance needs: its counts, pause and resume."""

    @property
    def running(self) -> int: ...

    @property
    def queue_length(self) -> int: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


class MaintenanceRefused(Exception):
    """Builds were still running when the drain deadline passed."""


class Maintenance:
    """A registry maintenance window (garbage collection, backups) seen from
    the service: no build starts meanwhile, so none pushes to a read-only or
    stopped registry; requests queue (their clients see their queue position)
    and their builds start when the window ends. Lookups and launches of
    existing images go on. The window closes by itself after ``limit``
    seconds, so a maintenance script that died never stops builds for good."""

    def __init__(self, builds: BuildsLike) -> None:
        self.builds = builds
        self._open = False
        self._timer: asyncio.TimerHandle | None = None
        self.since: float | None = None
        self._finished: asyncio.Event | None = None  # made by begin, in its loop

    def build_finished(self) -> None:
        if self._finished is not None:
            self._finished.set()

    @property
    def active(self) -> bool:
        return self._open

    def state(self) -> dict[str, Any]:
        return {
            "maintenance": self.active,
            "since": self.since,
            "running": self.builds.running,
            "queued": self.builds.queue_length,
        }

    async def begin(self, drain_timeout: float, limit: float) -> dict[str, Any]:
        """Stop starting builds and wait (up to ``drain_timeout``) for the
        running ones to finish; if they do not, the window does not open."""
        if not self._open:
            self._open = True
            self.builds.pause()
            self.since = time.time()
            log.info("maintenance: no build starts until it ends; draining running builds")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        finished = self._finished = asyncio.Event()
        while self.builds.running and loop.time() < deadline:
            # Woken by a finished build (build_finished); the manager counts it
            # out just after its hooks, hence the short re-check.
            finished.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(0.5, max(0.0, deadline - loop.time())))
        self._finished = None
        if self.builds.running:
            count = self.builds.running
            self.end()
            raise MaintenanceRefused(
                f"{count} builds still running after {drain_timeout:g}s: maintenance not started"
            )
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(limit, self._expired)
        log.info("maintenance window open (%d builds queued meanwhile)", self.builds.queue_length)
        return self.state()

    def _expired(self) -> None:
        log.warning("maintenance window not closed after its limit: builds start again")
        self.end()

    def end(self) -> dict[str, Any]:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._open:
            self._open = False
            self.since = None
            log.info("maintenance window closed: %d queued builds start", self.builds.queue_length)
            self.builds.resume()
        return self.state()


class Lifecycle:
    """The usage tracker, the periodic cleaners and sweeps of one service,
    what they did (``stats``), the ``disk`` health check and the admin API's
    operations."""

    def __init__(
        self,
        usage: UsageTracker,
        engine_cleaner: EngineImageCleaner | None = None,
        registry: RegistryLifecycle | None = None,
        sweeper: Sweeper | None = None,
        builds: BuildsLike | None = None,
    ) -> None:
        self.usage = usage
        self.maintenance = Maintenance(builds) if builds is not None else None
        self.engine_cleaner = engine_cleaner
        # Present for the health check whenever images go to a registry; it
        # deletes only when enabled.
        self.registry = registry
        self.sweeper = sweeper
        self.stats = LifecycleStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._disk_full: asyncio.Task[None] | None = None
        self._disk_full_at = 0.0

    @property
    def registry_enabled(self) -> bool:
        return self.registry is not None and self.registry.enabled

    def start(self) -> None:
        jobs: list[tuple[float, Callable[[], Awaitable[Any]], str]] = []
        if self.engine_cleaner is not None:
            jobs.append((self.engine_cleaner.interval, self.clean_engine, "engine image cleanup"))
        if self.registry is not None and self.registry.enabled:
            jobs.append((self.registry.interval, self.clean_registry, "registry cleanup"))
        if self.sweeper is not None:
            jobs.append((self.sweeper.interval, self.sweep, "sweep"))
        for interval, job, what in jobs:
            self._tasks.append(asyncio.ensure_future(_every(interval, job, what)))

    async def clean_engine(
        self, dry_run: bool = False, force: bool = False
    ) -> CleanupReport | None:
        if self.engine_cleaner is None:
            return None
        report = await self.engine_cleaner.run_once(dry_run=dry_run, force=force)
        self.stats.engine_used = report.after.used
        self.stats.engine_limit = report.after.total
        if not dry_run:
            self.stats.freed[Store.ENGINE] += report.freed_bytes
            self.stats.removed[Store.ENGINE] += len(report.removed)
        return report

    async def clean_registry(
        self, dry_run: bool = False, force: bool = False
    ) -> RegistryReport | None:
        if self.registry is None or not self.registry.enabled:
            return None
        report = await self.registry.run_once(dry_run=dry_run, force=force)
        self.stats.registry_bytes = report.before if dry_run else report.after
        self.stats.registry_budget = report.budget
        if not dry_run:
            self.stats.freed[Store.REGISTRY] += max(0, report.before - report.after)
            self.stats.removed[Store.REGISTRY] += len(report.deleted)
        return report

    async def sweep(self, dry_run: bool = False) -> SweepReport | None:
        if self.sweeper is None:
            return None
        report = await self.sweeper.run_once(dry_run=dry_run)
        if not dry_run:
            self.stats.swept["container"] += len(report.containers)
            self.stats.swept["workdir"] += len(report.workdirs)
        return report

    async def cleanup(self, dry_run: bool = False, force: bool = False) -> dict[str, Any]:
        """Everything at once (the admin API's ``POST /api/admin/cleanup``)."""
        engine = await self.clean_engine(dry_run=dry_run, force=force)
        registry = await self.clean_registry(dry_run=dry_run, force=force)
        swept = await self.sweep(dry_run=dry_run)
        return {
            "dry_run": dry_run,
            "engine": None
            if engine is None
            else {
                "triggered": engine.triggered,
                "used_bytes_before": engine.before.used,
                "used_bytes_after": engine.after.used,
                "high_water_bytes": engine.high_water,
                "low_water_bytes": engine.low_water,
                "removed": engine.removed,
                "kept_in_use": engine.skipped,
                "freed_bytes": engine.freed_bytes,
            },
            "registry": None
            if registry is None
            else {
                "bytes_before": registry.before,
                "bytes_after": registry.after,
                "budget_bytes": registry.budget,
                "deleted": registry.deleted,
            },
            "sweep": None
            if swept is None
            else {"containers": swept.containers, "workdirs": swept.workdirs},
        }

    async def images(self) -> list[dict[str, Any]]:
        """Images by last use, least recently used first (the order the
        cleaners remove them in): every image with a recorded use, and every
        engine image under the prefix."""
        last_used = await self.usage.last_used()
        rows: dict[str, dict[str, Any]] = {
            name: {"image": name, "last_used": when, "in_engine": False, "size_bytes": None}
            for name, when in last_used.items()
        }
        cleaner = self.engine_cleaner
        if cleaner is not None and cleaner.image_prefix:
            running = await cleaner.engine.running_image_ids()
            in_builds = set(cleaner.in_use_names())
            for image in await cleaner.engine.images():
                for tag in image.tags:
                    if not tag.startswith(cleaner.image_prefix):
                        continue
                    row = rows.setdefault(
                        tag, {"image": tag, "last_used": None, "in_engine": False}
                    )
                    row.update(
                        in_engine=True,
                        size_bytes=image.size,
                        created=image.created,
                        in_use=image.id in running or tag in in_builds,
                    )
        for row in rows.values():
            row.setdefault("in_use", False)
            row.setdefault("created", None)
        return sorted(
            rows.values(),
            key=lambda r: (r["last_used"] or r["created"] or 0.0, r["image"]),
        )

    async def health(self) -> dict[str, Any]:
        """The ``disk`` check of /health: not ok when a build or a push would
        not fit; ``warning`` (still ok) above a high-water mark or budget."""
        result: dict[str, Any] = {"ok": True}
        warnings: list[str] = []
        problems: list[str] = []
        parts: list[tuple[str, Any]] = [
            ("engine", self.engine_cleaner),
            ("registry", self.registry),
        ]
        for name, part in parts:
            if part is None:
                continue
            details = dict(await part.health())
            ok = details.pop("ok", True)
            if not ok:
                problems.append(str(details.get("message")))
            if "warning" in details:
                warnings.append(str(details["warning"]))
            if name == "engine":
                self.stats.engine_used = details.get("used_bytes")
                self.stats.engine_limit = details.get("limit_bytes")
            result[name] = details
        if warnings:
            result["warning"] = "; ".join(warnings)
        if problems:
            result["ok"] = False
            result["message"] = "; ".join(problems)
            self.disk_full()
        return result

    def build_finished(self, build: Build) -> None:
        """BuildManager on_finished hook: a build that failed for lack of disk
        space starts a cleanup at once (down to the low-water mark), so the
        next request finds room if anything could be freed."""
        if self.maintenance is not None:
            self.maintenance.build_finished()
        reason = build.error.message if build.error is not None else ""
        if build.state is BuildState.FAILED and _NO_SPACE.search(reason):
            log.warning("build %s ran out of disk space: cleaning up now", build.id)
            self.disk_full()

    def classify_failure(self, build: Build, error: BinderBuildError) -> BinderBuildError:
        """BuildManager hook, before a failure is reported: a push the
        registry answered with a 5xx while its storage (``storage_path``) has
        less than ``min_free`` free is the registry being out of disk space;
        say so (``build_finished`` then starts the cleanup)."""
        if self.registry is None:
            return error
        message = self.registry.push_failure(error.message)
        if message is None:
            return error
        log.warning("build %s: %s (was: %s)", build.id, message, error.message)
        return BuildFailed(message)

    async def collect_registry_garbage(self) -> bool:
        """Run ``RegistryLifecycle.gc_command`` in a maintenance window (no
        build starts meanwhile; requests queue). False when there is no
        command, the window could not open, or the command failed."""
        registry = self.registry
        if registry is None or not registry.gc_command:
            return False
        window = self.maintenance
        opened = False
        if window is not None and not window.active:
            try:
                await window.begin(
                    drain_timeout=registry.gc_timeout, limit=registry.gc_timeout + 60
                )
                opened = True
            except MaintenanceRefused as exc:
                log.warning("registry garbage collection not run: %s", exc)
                return False
        try:
            log.info("registry garbage collection: %s", " ".join(registry.gc_command))
            proc = await asyncio.create_subprocess_exec(
                *registry.gc_command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), registry.gc_timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                log.error("registry garbage collection killed after %gs", registry.gc_timeout)
                return False
            text = out.decode("utf-8", "replace").strip()[-2000:]
            if proc.returncode:
                log.error("registry garbage collection failed (%s): %s", proc.returncode, text)
                return False
            self.stats.registry_gc_runs += 1
            log.info("registry garbage collection done: %s", text)
            return True
        except OSError as exc:
            log.error("registry garbage collection could not start: %s", exc)
            return False
        finally:
            if opened and window is not None:
                window.end()

    def disk_full(self) -> None:
        """Start one forced cleanup (engine, registry, sweeps) unless one runs
        or ran in the last ``DISK_FULL_PAUSE`` seconds (health probes ask often)."""
        if self._disk_full is not None and not self._disk_full.done():
            return
        now = time.monotonic()
        if self._disk_full is not None and now - self._disk_full_at < DISK_FULL_PAUSE:
            return
        self._disk_full_at = now
        try:
            self._disk_full = asyncio.get_running_loop().create_task(self._clean_after_disk_full())
        except RuntimeError:
            pass

    async def _clean_after_disk_full(self) -> None:
        self.stats.disk_full_cleanups += 1
        try:
            result = await self.cleanup(force=True)
            if (result.get("registry") or {}).get("deleted"):
                # Deleting manifests frees nothing until the garbage collection.
                await self.collect_registry_garbage()
        except Exception as exc:
            log.error("cleanup after a full disk failed: %s", exc)

    async def wait_idle(self) -> None:
        """Wait for a running disk-full cleanup (tests, shutdown)."""
        if self._disk_full is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._disk_full)

    async def close(self) -> None:
        if self.maintenance is not None:
            self.maintenance.end()
        for task in [*self._tasks, *([self._disk_full] if self._disk_full else [])]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._disk_full is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._disk_full
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


# --- the node cleaner (Kubernetes: next to each builder daemon) ---------------------------


class _NoUsage:
    """A build node knows no launches: images go oldest built first."""

    async def last_used(self) -> dict[str, float]:
        return {}


async def run_node_cleaner(cleaner: EngineImageCleaner, once: bool) -> None:
    """Check now, then every ``interval`` (unless ``once``)."""
    while True:
        try:
            await cleaner.run_once()
        except Exception as exc:
            log.error("engine image cleanup failed: %s", exc)
        if once:
            return
        await asyncio.sleep(max(cleaner.interval, 1.0))


def node_cleaner_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m binderbuild.lifecycle``."""
    parser = argparse.ArgumentParser(
        prog="python -m binderbuild.lifecycle",
        description="Remove built images from a Docker engine whose disk fills up "
        "(least recently built first, never an image a container uses).",
    )
    parser.add_argument("--docker-host", required=True, help="the engine, e.g. unix:///...sock")
    parser.add_argument("--image-prefix", required=True, help="only images under it go")
    parser.add_argument("--high-water-percent", type=float, default=80.0)
    parser.add_argument("--low-water-percent", type=float, default=60.0)
    parser.add_argument("--budget", default="", help="byte budget instead of the filesystem")
    parser.add_argument("--interval", type=float, default=300.0)
    parser.add_argument("--grace-period", type=float, default=3600.0)
    parser.add_argument("--once", action="store_true", help="one check, then exit")
    parser.add_argument(
        "--no-prune", action="store_true", help="never prune dangling images nor the build cache"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m binderbuild.lifecycle --docker-host unix:///... --image-prefix ...``:
    the engine image cleaner on its own, for a build node's Docker engine
    (the chart runs it in the builder DaemonSet)."""
    import docker

    from binderbuild.logging_setup import configure_logging

    parser = node_cleaner_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.INFO, "text")
    if args.budget:
        parse_bytes(args.budget)  # a bad size stops here, not at the first check
    client = docker.DockerClient(base_url=args.docker_host)
    cleaner = EngineImageCleaner(
        DockerEngine(client),
        image_prefix=args.image_prefix,
        usage=_NoUsage(),
        in_use_names=lambda: (),
        high_water_percent=args.high_water_percent,
        low_water_percent=args.low_water_percent,
        budget=args.budget,
        interval=args.interval,
        grace_period=args.grace_period,
        prune_dangling=not args.no_prune,
        prune_build_cache=not args.no_prune,
    )
    asyncio.run(run_node_cleaner(cleaner, args.once))


if __name__ == "__main__":
    main()
