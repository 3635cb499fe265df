"""Benchmark of the build path, against a real binderbuild process.

Starts a registry and a git server on loopback, a binderbuild service
pushing to that registry, builds one fixture repository, then measures:

1. cached path: request -> final event for an image that exists, with the
   ref resolution cache warm (p50/p99 over --requests requests);
2. the same with the resolution cache cold (a second service with
   resolve_cache_ttl = 0, so every request runs ``git ls-remote``);
3. N concurrent identical requests for an unbuilt ref: how many builds start;
4. cold builds: request -> ready for new fixture repositories (fetch, build
   and push of an image that does not exist yet), median of --cold builds.

Goals on the 2-core reference machine: cached p50 < 20 ms, p99 < 100 ms;
exactly one build for N identical requests. Prints figures; asserts nothing
about time (CI runs it in a short form: --short = 50 requests, 5 clients).

    python -m benchmarks.build_benchmark [--requests 200] [--concurrent 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import service_config
from tests.realservices import (
    GitServer,
    RegistryServer,
    docker_available,
    dockerfile_repo_files,
    make_repo,
)
from tests.service import BinderBuildService
from tests.sse import read_events


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def timed_requests(url: str, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        result = read_events(url)
        elapsed = time.perf_counter() - started
        if result.final["phase"] != "ready":
            raise SystemExit(f"unexpected answer: {result.final}")
        samples.append(elapsed * 1000)
    return samples


def report(name: str, samples: list[float]) -> dict[str, float]:
    figures = {
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
        "max_ms": max(samples),
    }
    shown = "  ".join(f"{k}={v:.2f}" for k, v in figures.items())
    print(f"{name:<32} n={len(samples):<4} {shown}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=10)
    parser.add_argument("--cold", type=int, default=5, help="cold builds to time")
    parser.add_argument(
        "--short", action="store_true", help="CI form: 50 requests, 5 concurrent clients"
    )
    args = parser.parse_args(argv)
    if args.short:
        args.requests, args.concurrent, args.cold = 50, 5, 3
    docker_available()

    with tempfile.TemporaryDirectory(prefix="bb-bench-") as tmp:
        root = Path(tmp)
        registry = RegistryServer(root / "registry")
        git = GitServer(root / "git")
        registry.start()
        git.start()
        services: list[BinderBuildService] = []
        try:
            warm = BinderBuildService(root / "warm", service_config(registry)).start()
            services.append(warm)
            cold = BinderBuildService(
                root / "cold", service_config(registry, "c.BinderBuild.resolve_cache_ttl = 0")
            ).start()
            services.append(cold)

            marker = f"bench{int(time.time())}"
            make_repo(git.root, "bench", dockerfile_repo_files(marker))
            spec = git.git_url("bench").replace(":", "%3A").replace("/", "%2F") + "/main"
            path = f"/build/git/{spec}?build_only=true"

            started = time.perf_counter()
            first = read_events(warm.url + path)
            print(f"initial build: {time.perf_counter() - started:.1f} s -> {first.final['phase']}")

            print(f"\ncached path ({args.requests} sequential requests, new connection each):")
            warm_figures = report("resolution cache warm", timed_requests(warm.url + path, args.requests))
            cold_figures = report("resolution cache cold", timed_requests(cold.url + path, args.requests))

            files = dockerfile_repo_files(marker + "c")
            files["Dockerfile"] = files["Dockerfile"].replace("USER 1000", "RUN sleep 2\nUSER 1000")
            make_repo(git.root, "bench-concurrent", files)
            spec2 = git.git_url("bench-concurrent").replace(":", "%3A").replace("/", "%2F") + "/main"
            url2 = warm.url + f"/build/git/{spec2}?build_only=true"
            started = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                results = list(pool.map(lambda _: read_events(url2), range(args.concurrent)))
            took = time.perf_counter() - started
            ok = sum(r.final["phase"] == "ready" for r in results)
            builds = sum("build started:" in line and "bench-concurrent" in line for line in warm.log().splitlines())
            print(
                f"\n{args.concurrent} concurrent identical requests: {ok} ready, "
                f"builds started = {builds}, wall {took:.1f} s"
            )
            cold_builds = []
            for i in range(args.cold):
                # A new repository each time: nothing is cached for it but
                # the base image's layers, as for a stranger's first launch.
                name = f"bench-cold-{i}"
                make_repo(git.root, name, dockerfile_repo_files(f"{marker}cold{i}"))
                spec3 = git.git_url(name).replace(":", "%3A").replace("/", "%2F") + "/main"
                started = time.perf_counter()
                answer = read_events(warm.url + f"/build/git/{spec3}?build_only=true")
                cold_builds.append(time.perf_counter() - started)
                if answer.final["phase"] != "ready":
                    raise SystemExit(f"cold build failed: {answer.final}")
            shown = " ".join(f"{t:.2f}" for t in cold_builds)
            print(f"\ncold build (new repository, fetch + build + push): "
                  f"median {statistics.median(cold_builds):.2f} s ({shown})")
            print(
                "\nsummary: cached p50 {:.2f} ms (goal < 20), p99 {:.2f} ms (goal < 100); "
                "cold-resolution p50 {:.2f} ms; builds for {} identical requests: {} (goal 1); "
                "cold build median {:.2f} s".format(
                    warm_figures["p50_ms"],
                    warm_figures["p99_ms"],
                    cold_figures["p50_ms"],
                    args.concurrent,
                    builds,
                    statistics.median(cold_builds),
                )
            )
            return 0 if ok == args.concurrent and builds == 1 else 1
        finally:
            for service in services:
                service.stop()
            git.stop()
            registry.stop()


if __name__ == "__main__":
    sys.exit(main())
