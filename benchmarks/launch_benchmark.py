"""Benchmark of cached launches: binderbuild + a real JupyterHub + DockerSpawner.

Starts a git server, a JupyterHub (configurable-http-proxy, binderbuild's
BinderDockerSpawner, servers on loopback) and a binderbuild service that
launches on it, builds one fixture repository once (warm-up), then launches
that image --launches times, one after the other, through ``/build`` with
the commit SHA as the ref (so resolution is a cache hit), and measures:

1. request -> first ``launching`` event (binderbuild's own service time:
   resolution, image check, quota check);
2. ``built`` -> first ``launching`` (the launcher's share alone);
3. request -> ``ready`` (end to end: hub API calls, container start, the
   Jupyter server starting, the proxy route).

Goals on the 2-core reference machine: (1) p50 < 20 ms beyond resolution,
(3) p50 < 4 s. Each server is deleted again before the next launch. Prints
figures; asserts nothing about time (a launch that does not end in ``ready``
is an error). CI runs the short form (--short: 5 launches).

    python -m benchmarks.launch_benchmark [--launches 20]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from tests.conftest import service_config
from tests.hubservice import HubService, HubUnavailable
from tests.realservices import GitServer, docker_available, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService
from tests.sse import read_events

IMAGE_PREFIX = "bbtest-local-"


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def report(name: str, samples: list[float], unit: str = "ms") -> None:
    figures = {
        f"p50_{unit}": statistics.median(samples),
        f"p90_{unit}": percentile(samples, 90),
        f"min_{unit}": min(samples),
        f"max_{unit}": max(samples),
    }
    shown = "  ".join(f"{k}={v:.2f}" for k, v in figures.items())
    print(f"{name:<36} n={len(samples):<3} {shown}")


def user_of(url: str, hub: HubService) -> str:
    return url[len(hub.url) + len("user/") :].strip("/").split("/")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20)
    parser.add_argument("--short", action="store_true", help="CI form: 5 launches")
    args = parser.parse_args(argv)
    if args.short:
        args.launches = 5
    docker_available()

    with tempfile.TemporaryDirectory(prefix="binderbuild-launch-bench-") as tmp:
        work = Path(tmp)
        git = GitServer(work / "git")
        git.start()
        hub: HubService | None = None
        service: BinderBuildService | None = None
        image = ""
        try:
            try:
                hub = HubService(work / "hub", [IMAGE_PREFIX]).start()
            except HubUnavailable as exc:
                print(f"launch benchmark: {exc}", file=sys.stderr)
                return 1
            service = BinderBuildService(
                work / "binderbuild", service_config(None, hub.binderbuild_config())
            ).start()
            marker = secrets.token_hex(6)
            name = f"bench-{marker}"
            sha = make_repo(git.root, name, dockerfile_repo_files(marker))
            url = f"{service.url}/build/git/{quote(git.git_url(name), safe='')}/{sha}"

            print(f"warm-up: building and launching {name} once")
            warm = read_events(url, timeout=900)
            if warm.final["phase"] != "ready":
                print(f"warm-up failed: {warm.final}", file=sys.stderr)
                return 1
            image = warm.final["image"]
            hub.delete_user(user_of(warm.final["url"], hub))

            first_launching: list[float] = []
            launcher_share: list[float] = []
            to_ready: list[float] = []
            for _ in range(args.launches):
                started = time.perf_counter()
                result = read_events(url, timeout=300)
                total = time.perf_counter() - started
                if result.final["phase"] != "ready":
                    print(f"launch failed: {result.final}", file=sys.stderr)
                    return 1
                first = result.elapsed_first
                first_launching.append(first["launching"] * 1000)
                launcher_share.append((first["launching"] - first["built"]) * 1000)
                to_ready.append(total)
                # One server at a time: the next launch starts from the same state.
                hub.delete_user(user_of(result.final["url"], hub))
                time.sleep(0.5)

            print(f"cached launches of one image, {args.launches} in a row:")
            report("request -> first launching event", first_launching)
            report("built -> first launching event", launcher_share)
            report("request -> ready (end to end)", to_ready, "s")
            return 0
        finally:
            if service is not None:
                service.stop()
            stop_hub(hub, image)
            git.stop()


def stop_hub(hub: HubService | None, image: str | None) -> None:
    """Stop the benchmark's hub and remove its servers and the image it
    launched (best effort: a benchmark must not fail while tidying up)."""
    if hub is None:
        return
    hub.stop()
    try:
        import docker

        client = docker.from_env()
        hub.remove_containers(client)
        if image:
            client.images.remove(image, force=True)
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
