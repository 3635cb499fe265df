"""Benchmark of the image lifecycle (issue 16): how long the engine image
cleaner takes to remove fixture images and how many bytes that frees, and
what usage tracking costs the cached path.

1. Cleanup: builds --images small fixture images (``FROM scratch`` plus
   --size random bytes each, under a prefix of their own) on the real Docker
   engine, records a last use for each, then runs ``EngineImageCleaner`` with
   a disk reading of these images only, 100 % full, down to a low-water mark
   of 0: every image goes, least recently used first. Prints the seconds the
   pass took, images removed, bytes freed (the engine's own sizes) and the
   time per image. Nothing global is pruned (other users of the engine).
2. Cached path: a launch of an existing image calls ``UsageTracker.touch``
   once. Times --touches calls against a store whose every write takes
   --write-ms milliseconds, and prints the cost per call next to a bare dict
   assignment, and how many writes the store saw (batched: a handful, not one
   per touch). The request path never waits for the store.

    python -m benchmarks.lifecycle_benchmark [--images 50] [--short]

--short (CI): 10 images, 20,000 touches.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import secrets
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from binderbuild.history import BuildHistory
from binderbuild.lifecycle import DiskUsage, DockerEngine, EngineImageCleaner, UsageTracker


def build_image(client: Any, tag: str, size: int) -> None:
    files = {
        "Dockerfile": b"FROM scratch\nCOPY payload /payload\n",
        "payload": secrets.token_bytes(size),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    for chunk in client.api.build(
        fileobj=buf, custom_context=True, tag=tag, network_mode="none", rm=True, decode=True
    ):
        if "error" in chunk:
            raise RuntimeError(f"building {tag}: {chunk['error']}")


class OwnImagesOnly(DockerEngine):
    """The real engine; no prune (the engine is shared)."""

    async def prune(self, build_cache: bool, dangling: bool = True) -> int:
        return 0


def cleanup(client: Any, count: int, size: int) -> None:
    prefix = f"bblifebench-{secrets.token_hex(4)}-"
    names = [f"{prefix}img{i:03d}:1" for i in range(count)]
    started = time.monotonic()
    for name in names:
        build_image(client, name, size)
    built = time.monotonic() - started
    print(f"built {count} fixture images of {size} random bytes in {built:.1f}s")

    def ours() -> dict[str, int]:
        return {
            tag: int(image.attrs.get("Size") or 0)
            for image in client.images.list()
            for tag in image.tags
            if tag.startswith(prefix)
        }

    before = ours()
    total = sum(before.values())

    gone: set[str] = set()

    async def disk() -> DiskUsage:
        # These images' bytes, less the removed ones (the engine confirmed each
        # removal); listing the whole shared engine after each would dominate.
        used = sum(size for name, size in before.items() if name not in gone)
        return DiskUsage(total=max(total, 1), used=used)

    async def run() -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            history = BuildHistory(Path(tmp))
            usage = UsageTracker(history)
            now = time.time()
            await history.record_usage({n: now - 86400 * (count - i) for i, n in enumerate(names)})
            cleaner = EngineImageCleaner(
                OwnImagesOnly(client),
                image_prefix=prefix,
                usage=usage,
                in_use_names=lambda: (),
                on_removed=gone.add,
                disk_usage=disk,
                high_water_percent=50,
                low_water_percent=0,
                grace_period=0,
            )
            t0 = time.monotonic()
            report = await cleaner.run_once()
            seconds = time.monotonic() - t0
            await usage.close()
            await history.close()
            return report, seconds

    try:
        report, seconds = asyncio.run(run())
    finally:
        for name in ours():
            try:
                client.images.remove(name, force=True)
            except Exception:
                pass
    freed = sum(before.get(n, 0) for n in report.removed)
    in_order = report.removed == names[: len(report.removed)]
    print(
        f"cleanup: {len(report.removed)}/{count} images removed in {seconds:.2f}s "
        f"({1000 * seconds / max(len(report.removed), 1):.0f} ms per image: in-use check "
        f"and removal), {freed} bytes freed; least recently used first: {in_order}"
    )


class SlowStore:
    """A history store whose every write takes ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.writes = 0
        self.names = 0

    async def record_usage(self, used: Mapping[str, float]) -> None:
        self.writes += 1
        self.names += len(used)
        await asyncio.sleep(self.delay)

    async def last_used(self) -> dict[str, float]:
        return {}


def cached_path(touches: int, write_ms: float, distinct: int = 500) -> None:
    async def run() -> tuple[float, float, SlowStore]:
        store = SlowStore(write_ms / 1000)
        tracker = UsageTracker(store)
        images = [f"binder-bench-{i}:1" for i in range(distinct)]
        baseline: dict[str, float] = {}
        t0 = time.perf_counter()
        for i in range(touches):
            baseline[images[i % distinct]] = time.time()
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(touches):
            tracker.touch(images[i % distinct])
            if i % 1000 == 999:
                await asyncio.sleep(0)  # requests interleave with the writer
        tracked = time.perf_counter() - t0
        await tracker.close()
        return bare, tracked, store

    bare, tracked, store = asyncio.run(run())
    print(
        f"cached path: {touches} launches touching {distinct} images, store writes of "
        f"{write_ms:g} ms: touch {1e6 * tracked / touches:.2f} us per launch "
        f"(a bare dict assignment: {1e6 * bare / touches:.2f} us); "
        f"{store.writes} batched writes of {store.names} names in all"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=256 * 1024, help="random bytes per image")
    parser.add_argument("--touches", type=int, default=200_000)
    parser.add_argument("--write-ms", type=float, default=20.0)
    parser.add_argument("--short", action="store_true", help="CI: 10 images, 20,000 touches")
    args = parser.parse_args(argv)
    if args.short:
        args.images, args.touches = 10, 20_000
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        print(f"lifecycle benchmark needs the Docker engine: {exc}", file=sys.stderr)
        return 1
    cleanup(client, args.images, args.size)
    cached_path(args.touches, args.write_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
