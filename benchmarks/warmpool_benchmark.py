"""Benchmark of warm pools (issue 15): hub alone, cold and warm launches, a burst.

Starts a git server, a JupyterHub (configurable-http-proxy, binderbuild's
BinderDockerSpawner) and two binderbuild services on it: one without a pool
(cold launches) and one whose ``WarmPoolLauncher`` pools the benchmark
image. The image of one fixture repository's commit is made directly on the
engine from the notebook base image, under the name binderbuild gives it
(no repo2docker build: launches are measured, not builds), then, one launch
at a time, each server deleted before the next:

1. the hub alone: ``POST /users/{name}``, ``POST /users/{name}/server``,
   poll the user model until the server is ready (what any Binder pays);
2. a cold launch through binderbuild: ``/build`` request -> ``ready``;
3. a warm launch through binderbuild (the pool refilled before each one):
   request -> ``ready``, and the hand-out alone (the service's
   ``binderbuild_warm_pool_handout_duration_seconds``);
4. a burst: --burst concurrent launches of the pooled image with a full pool
   of --pool servers; request -> ``ready`` of each. The launches beyond the
   pool wait for the servers the pool starts for them (``wait_for_refill``,
   at most --concurrent-starts at once); how long each waited is printed;
5. the floor of that burst: the hub alone spawning the servers the pool
   does not have (--burst minus --pool), all at once, and one at a time
   (the launches of 1.), which no pool policy can beat on this machine.

Goals on the 2-core reference machine: warm p50 <= 0.5 s (the hub alone is
about 2.3 s), hand-out p50 <= 50 ms, burst of 20 with a pool of 5 p90 <= 3 s.
Prints figures; asserts nothing about time (a launch that does not end in
``ready`` is an error). CI runs the short form (--short: 3 launches each,
a burst of 6 with a pool of 3).

    python -m benchmarks.warmpool_benchmark [--launches 15] [--burst 20] [--pool 5]
        [--concurrent-starts 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import re
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from benchmarks.launch_benchmark import report, stop_hub, user_of
from binderbuild.models import ResolvedRef
from binderbuild.naming import image_spec
from tests.conftest import service_config
from tests.hubservice import _OPENER, HubService, HubUnavailable
from tests.realservices import GitServer, docker_available, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService
from tests.sse import read_events

IMAGE_PREFIX = "bbtest-local-"
NOTEBOOK_BASE_IMAGE = "binderbuild/notebook-base:bookworm"


def make_image(repo_url: str, sha: str) -> str:
    """The image binderbuild names for (repo_url, sha), made on the engine
    from the notebook base image (a server that starts like a built one)."""
    import io
    import tarfile

    import docker

    ref = ResolvedRef(
        provider_id="git",
        spec=f"{quote(repo_url, safe='')}/{sha}",
        unresolved_ref=sha,
        resolved_ref=sha,
        resolved_spec=f"{quote(repo_url, safe='')}/{sha}",
        repo_url=repo_url,
        ref_url=repo_url,
        slug_source=repo_url,
    )
    name = image_spec(ref, IMAGE_PREFIX).name
    dockerfile = f"FROM {NOTEBOOK_BASE_IMAGE}\nLABEL binderbuild.bench=warmpool\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client = docker.from_env()
    for chunk in client.api.build(
        fileobj=buf, custom_context=True, tag=name, network_mode="none", rm=True, decode=True
    ):
        if "error" in chunk:
            raise RuntimeError(f"making {name}: {chunk['error']}")
    return name


def metric(service: BinderBuildService, name: str, **labels: str) -> float:
    with _OPENER.open(f"{service.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if m and (m.group(1) or "") == want:
            return float(m.group(2))
    return 0.0


def pooled_ready(service: BinderBuildService, image: str) -> int:
    return int(metric(service, "binderbuild_warm_pool_servers", image=image, state="ready"))


def wait_pool(service: BinderBuildService, image: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while pooled_ready(service, image) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool of {image} did not reach {count} servers in {timeout}s")
        time.sleep(0.1)


def hub_alone(hub: HubService, image: str) -> float:
    """POST user + server, poll until ready (no binderbuild); seconds."""
    name = f"bench-{secrets.token_hex(4)}"
    started = time.perf_counter()
    status, body = hub.api("POST", f"users/{name}")
    assert status == 201, (status, body)
    status, body = hub.api("POST", f"users/{name}/server", {"image": image})
    assert status in (201, 202), (status, body)
    while True:
        model = hub.user(name) or {}
        server = (model.get("servers") or {}).get("", {})
        if server.get("ready"):
            break
        if not server:
            raise RuntimeError(f"hub-alone spawn of {image} failed: {hub.log_tail(5)}")
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    hub.delete_user(name)
    return elapsed


def hub_alone_burst(
    hub: HubService, image: str, count: int
) -> tuple[list[float], float, list[str]]:
    """``count`` hub-alone spawns at once: the seconds of each that was
    ready, the total, and why the others failed (the hub gives a server
    ``http_timeout`` to answer: on a loaded machine some do not)."""

    def one(_: int) -> float | str:
        try:
            return hub_alone(hub, image)
        except (RuntimeError, OSError) as exc:  # OSError: the hub API timed out
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        outcomes = list(pool.map(one, range(count)))
    total = time.perf_counter() - started
    return (
        [o for o in outcomes if isinstance(o, float)],
        total,
        [o for o in outcomes if isinstance(o, str)],
    )


def launch(url: str) -> tuple[float, dict[str, str]]:
    started = time.perf_counter()
    result = read_events(url, timeout=300)
    elapsed = time.perf_counter() - started
    if result.final.get("phase") != "ready":
        raise RuntimeError(f"launch failed: {result.final}")
    return elapsed, result.final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=15)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--pool", type=int, default=5)
    parser.add_argument(
        "--concurrent-starts", type=int, default=2, help="WarmPoolLauncher.concurrent_starts"
    )
    parser.add_argument("--short", action="store_true", help="CI form: 3 launches, burst 6, pool 3")
    args = parser.parse_args(argv)
    if args.short:
        args.launches, args.burst, args.pool = 3, 6, 3
    docker_available()

    with tempfile.TemporaryDirectory(prefix="binderbuild-warmpool-bench-") as tmp:
        work = Path(tmp)
        git = GitServer(work / "git")
        git.start()
        hub: HubService | None = None
        services: list[BinderBuildService] = []
        image = ""
        try:
            try:
                hub = HubService(work / "hub", [IMAGE_PREFIX]).start()
            except HubUnavailable as exc:
                print(f"warm pool benchmark: {exc}", file=sys.stderr)
                return 1
            cold_service = BinderBuildService(
                work / "cold", service_config(None, hub.binderbuild_config())
            ).start()
            services.append(cold_service)
            marker = secrets.token_hex(6)
            name = f"warm-{marker}"
            sha = make_repo(git.root, name, dockerfile_repo_files(marker))
            spec = f"{quote(git.git_url(name), safe='')}/{sha}"
            image = make_image(git.git_url(name), sha)
            print(f"warm-up: launching {image} once")
            _, final = launch(f"{cold_service.url}/build/git/{spec}")
            assert final["image"] == image, final
            hub.delete_user(user_of(final["url"], hub))

            warm_service = BinderBuildService(
                work / "warm",
                service_config(
                    None,
                    hub.binderbuild_config()
                    + f"c.WarmPoolLauncher.images = [{('git/' + spec)!r}]\n"
                    f"c.WarmPoolLauncher.pool_size = {args.pool}\n"
                    f"c.WarmPoolLauncher.total_cap = {args.pool}\n"
                    f"c.WarmPoolLauncher.concurrent_starts = {args.concurrent_starts}\n"
                    "c.WarmPoolLauncher.refresh_interval = 5\n",
                ),
            ).start()
            services.append(warm_service)

            alone = [hub_alone(hub, image) for _ in range(args.launches)]

            cold: list[float] = []
            for _ in range(args.launches):
                elapsed, final = launch(f"{cold_service.url}/build/git/{spec}")
                cold.append(elapsed)
                hub.delete_user(user_of(final["url"], hub))
                time.sleep(0.3)

            warm: list[float] = []
            wait_pool(warm_service, image, args.pool)
            for _ in range(args.launches):
                wait_pool(warm_service, image, args.pool)
                elapsed, final = launch(f"{warm_service.url}/build/git/{spec}")
                warm.append(elapsed)
                hub.delete_user(user_of(final["url"], hub))
            handouts = [
                float(m) * 1000
                for m in re.findall(
                    r"handed out pooled server \S+ of \S+ in ([0-9.]+)s", warm_service.log()
                )
            ]

            hits = int(metric(warm_service, "binderbuild_warm_pool_handouts_total"))
            wait_pool(warm_service, image, args.pool)
            url = f"{warm_service.url}/build/git/{spec}"
            burst_started = time.perf_counter()

            def burst_launch(url: str) -> tuple[float, dict[str, str]] | str:
                try:
                    return launch(url)
                except (RuntimeError, OSError) as exc:
                    return str(exc)[:200]

            with concurrent.futures.ThreadPoolExecutor(args.burst) as pool:
                outcomes = list(pool.map(burst_launch, [url] * args.burst))
            burst_total = time.perf_counter() - burst_started
            results = [o for o in outcomes if not isinstance(o, str)]
            burst_failed = [o for o in outcomes if isinstance(o, str)]
            for _, final in results:
                hub.delete_user(user_of(final["url"], hub))
            waited = [
                float(m)
                for m in re.findall(
                    r"launch of \S+ waited ([0-9.]+)s for a pooled server", warm_service.log()
                )
            ]

            print(f"launches of one built image, {args.launches} of each, one at a time:")
            report("hub alone (POST user+server, poll)", alone, "s")
            report("cold launch through binderbuild", cold, "s")
            report("warm launch through binderbuild", warm, "s")
            if handouts:
                report("hand-out (token minted)", handouts)
            print(f"{'warm launches served from the pool':<36} {hits} of {args.launches}")
            report(f"burst of {args.burst}, pool of {args.pool}", [r[0] for r in results], "s")
            burst_hits = int(metric(warm_service, "binderbuild_warm_pool_handouts_total")) - hits
            print(
                f"{'burst: all ready after':<36} total_s={burst_total:.2f} "
                f"(from the pool: {burst_hits} of {args.burst})"
            )
            if waited:
                report(f"burst: {len(waited)} waited for a refill", waited, "s")
            for reason in burst_failed:
                print(f"  burst launch failed: {reason}")
            sys.stdout.flush()

            # The floor: the servers the pool did not have, by the hub alone,
            # all at once (the pool refilled and idle meanwhile).
            wait_pool(warm_service, image, args.pool)
            spawned = max(1, args.burst - args.pool)
            floor, floor_total, failed = hub_alone_burst(hub, image, spawned)
            if floor:
                report(f"hub alone, {spawned} spawns at once", floor, "s")
            print(
                f"{'hub alone: all ended after':<36} total_s={floor_total:.2f} "
                f"(one at a time: {spawned} x p50 = {spawned * statistics.median(alone):.2f}s)"
                f"; failed: {len(failed)}"
            )
            for reason in sorted(set(failed)):
                print(f"  failed: {reason}")
            users = hub.api("GET", "users")[1]
            for user in users if isinstance(users, list) else []:
                if str(user.get("name", "")).startswith("bench-"):
                    hub.delete_user(user["name"])
            return 1 if burst_failed else 0
        finally:
            for service in services:
                service.stop()
            stop_hub(hub, image)
            git.stop()


if __name__ == "__main__":
    sys.exit(main())
