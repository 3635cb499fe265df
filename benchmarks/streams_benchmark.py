"""Benchmark of many clients following one build: memory per event stream.

Starts a git server and a binderbuild service whose builder sleeps
(``SleepingBuilder``, below: a build that emits one event per second and
never touches Docker, so only the streams are measured). Opens --streams
``/build`` event streams on one spec from one client process (non-blocking
sockets, read and counted), then prints the service's resident memory
before and with the streams open, per stream, its open file descriptors,
and checks that every stream received every event, keepalives included.

Goal on the 2-core reference machine (issue 15): 10,000 streams within
+150 MB (about 15 KiB per stream; a bare idle Tornado stream is about
14 KiB), one descriptor each. CI runs the short form (--short: 1,000).

    python -m benchmarks.streams_benchmark [--streams 10000] [--tracemalloc]

--floor also measures Tornado's floor the same way: a bare Tornado server
whose one handler writes an event and waits for the next (the smallest
idle stream Tornado holds), N streams from the same client.

--tracemalloc starts the service with tracemalloc on (a ``sitecustomize``
in a temporary directory first on its PYTHONPATH; SIGUSR1 dumps a snapshot)
and prints where the bytes of the open streams went: the allocation sites
grown most between the snapshot before and the one with the streams open,
per stream. (tracemalloc slows the service and counts Python allocations
only; the RSS figures of such a run are not the benchmark's.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from binderbuild.builders.base import Builder
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.models import BuildJob

ROOT = Path(__file__).resolve().parent.parent


class SleepingBuilder(Builder):
    """A build that builds nothing: one ``building`` event every
    BINDERBUILD_BENCH_TICK seconds until the file BINDERBUILD_BENCH_STOP
    exists (the benchmark has measured), at most
    BINDERBUILD_BENCH_BUILD_SECONDS seconds."""

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        seconds = float(os.environ.get("BINDERBUILD_BENCH_BUILD_SECONDS", "60"))
        tick = float(os.environ.get("BINDERBUILD_BENCH_TICK", "1"))
        stop = os.environ.get("BINDERBUILD_BENCH_STOP")
        yield event(Phase.BUILDING, f"sleeping for at most {seconds:g}s\n")
        for i in range(int(seconds / tick)):
            await asyncio.sleep(tick)
            yield event(Phase.BUILDING, f"tick {i + 1}\n")
            if stop and os.path.exists(stop):
                break


# Loaded by the service (first on its PYTHONPATH) under --tracemalloc.
_TRACE_HOOK = """
import os, signal, tracemalloc
_dir = os.environ.get("BINDERBUILD_BENCH_TRACE_DIR")
if _dir:
    tracemalloc.start(int(os.environ.get("BINDERBUILD_BENCH_TRACE_FRAMES", "1")))
    _n = [0]

    def _dump(*_args):
        _n[0] += 1
        tracemalloc.take_snapshot().dump(os.path.join(_dir, "snap-%d.tmp" % _n[0]))
        os.rename(os.path.join(_dir, "snap-%d.tmp" % _n[0]), os.path.join(_dir, "snap-%d" % _n[0]))

    signal.signal(signal.SIGUSR1, _dump)
"""


def trace_snapshot(pid: int, directory: Path, number: int) -> Any:
    import signal
    import tracemalloc

    os.kill(pid, signal.SIGUSR1)
    path = directory / f"snap-{number}"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the service wrote no tracemalloc snapshot")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def print_trace(before: Any, after: Any, streams: int, frames: int) -> None:
    stats = after.compare_to(before, "traceback" if frames > 1 else "lineno")
    grown = sum(s.size_diff for s in stats)
    print(
        f"tracemalloc: +{grown / 1024 / 1024:.1f} MiB in Python objects, "
        f"{grown / streams / 1024:.2f} KiB per stream; largest sites per stream:"
    )
    for stat in stats[:25]:
        if stat.size_diff <= 0:
            continue
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback[:frames])
        print(
            f"  {stat.size_diff / streams:8.0f} B  {stat.count_diff / streams:6.2f} objs  {where}"
        )


async def serve_floor(port: int) -> None:
    """The bare Tornado stream of --floor (run in a process of its own)."""
    import tornado.httpserver
    import tornado.web

    changed = asyncio.Event()

    class Stream(tornado.web.RequestHandler):
        async def get(self) -> None:
            self.set_header("Content-Type", "text/event-stream")
            self.write(b"data: {}\n\n")
            await self.flush()
            await changed.wait()

    server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/.*", Stream)]))
    server.listen(port, "127.0.0.1", backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


def measure_floor(streams: int) -> float:
    """RSS per idle bare Tornado stream, KiB."""
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.streams_benchmark", "--serve-floor", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(1.0)
        base_rss, base_fds = rss_kib(proc.pid), open_fds(proc.pid)
        clients = Clients(port, "/events", streams)
        started = time.monotonic()
        while open_fds(proc.pid) - base_fds < streams and time.monotonic() - started < 300:
            clients.pump(0.5)
        clients.pump(3.0)
        return (rss_kib(proc.pid) - base_rss) / streams
    finally:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Clients:
    """N streams read by one selector: bytes, events and keepalives per stream."""

    def __init__(self, port: int, path: str, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.data: dict[socket.socket, bytearray] = {}
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(request)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.data[sock] = bytearray()
            if i % 200 == 199:
                self.pump(0.05)  # let the service accept in batches

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.05):
                sock: Any = key.fileobj
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                if chunk:
                    self.data[sock] += chunk
                else:
                    self.selector.unregister(sock)
                    sock.close()

    @property
    def open(self) -> int:
        return len(self.selector.get_map())

    def counts(self, needle: bytes) -> list[int]:
        return [bytes(d).count(needle) for d in self.data.values()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--short", action="store_true", help="CI form: 1,000 streams")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="print where the streams' bytes go"
    )
    parser.add_argument("--frames", type=int, default=1, help="traceback depth (--tracemalloc)")
    parser.add_argument("--keep", metavar="DIR", help="copy the snapshots to DIR (--tracemalloc)")
    parser.add_argument("--floor", action="store_true", help="also measure a bare Tornado stream")
    parser.add_argument("--serve-floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor:
        asyncio.run(serve_floor(args.serve_floor))
        return 0
    if args.short:
        args.streams = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.streams + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    from tests.conftest import service_config
    from tests.realservices import GitServer, dockerfile_repo_files, make_repo
    from tests.service import BinderBuildService
    from tests.sse import read_events

    # The build lasts until every stream is open and measured (a stop file),
    # at most this long.
    build_seconds = 600 + args.streams // 10
    with tempfile.TemporaryDirectory(prefix="binderbuild-streams-bench-") as tmp:
        work = Path(tmp)
        git = GitServer(work / "git")
        git.start()
        service: BinderBuildService | None = None
        env = {
            "PYTHONPATH": str(ROOT),
            "BINDERBUILD_BENCH_BUILD_SECONDS": str(build_seconds),
            "BINDERBUILD_BENCH_TICK": "3",
            "BINDERBUILD_BENCH_STOP": str(work / "stop"),
        }
        trace_dir = work / "trace"
        if args.tracemalloc:
            trace_dir.mkdir()
            (trace_dir / "sitecustomize.py").write_text(_TRACE_HOOK)
            env["PYTHONPATH"] = f"{trace_dir}:{ROOT}"
            env["BINDERBUILD_BENCH_TRACE_DIR"] = str(trace_dir)
            env["BINDERBUILD_BENCH_TRACE_FRAMES"] = str(args.frames)
        try:
            service = BinderBuildService(
                work / "svc",
                service_config(
                    None,
                    "c.BinderBuild.build_class = 'benchmarks.streams_benchmark.SleepingBuilder'\n"
                    # Idle gaps between events: keepalives are written too.
                    "c.BinderBuild.keepalive_interval = 1\n",
                ),
                env=env,
            ).start(timeout=180 if args.tracemalloc else 30)
            assert service.proc is not None
            pid = service.proc.pid
            name = f"streams-{secrets.token_hex(4)}"
            sha = make_repo(git.root, name, dockerfile_repo_files(name))
            path = f"/build/git/{quote(git.git_url(name), safe='')}/{sha}?build_only=true"
            # One request first: resolution cached, the build started.
            read_events(service.url + path, stop_after=1, timeout=30)
            time.sleep(0.5)
            base_rss, base_fds = rss_kib(pid), open_fds(pid)
            before = trace_snapshot(pid, trace_dir, 1) if args.tracemalloc else None

            started = time.monotonic()
            clients = Clients(service.port, path, args.streams)
            clients.pump(3.0)
            while open_fds(pid) - base_fds < args.streams and time.monotonic() - started < 600:
                clients.pump(0.5)
            opened = time.monotonic() - started
            # Every stream has its first events and a keepalive or two.
            clients.pump(6.0)
            open_rss, open_fds_now = rss_kib(pid), open_fds(pid)
            if args.tracemalloc:
                print_trace(before, trace_snapshot(pid, trace_dir, 2), args.streams, args.frames)
                if args.keep:
                    for snap in ("snap-1", "snap-2"):
                        shutil.copy(trace_dir / snap, Path(args.keep) / snap)
            # The build ends; every stream is closed by the service.
            (work / "stop").touch()
            deadline = time.monotonic() + 120
            while clients.open and time.monotonic() < deadline:
                clients.pump(1.0)

            per_stream = (open_rss - base_rss) / args.streams
            ready = clients.counts(b'"phase": "ready"')
            ticks = clients.counts(b"tick ")
            keepalives = clients.counts(b":keepalive")
            print(f"{args.streams} event streams following one build (opened in {opened:.1f}s):")
            print(
                f"{'service RSS before / with streams':<36} {base_rss / 1024:.1f} MiB / "
                f"{open_rss / 1024:.1f} MiB  (+{(open_rss - base_rss) / 1024:.1f} MiB)"
            )
            print(f"{'RSS per stream':<36} {per_stream:.1f} KiB")
            print(f"{'descriptors per stream':<36} {(open_fds_now - base_fds) / args.streams:.2f}")
            print(
                f"{'streams that got ready':<36} {sum(1 for n in ready if n == 1)} of {args.streams}"
            )
            print(f"{'events per stream (ticks)':<36} min={min(ticks)} max={max(ticks)}")
            print(f"{'keepalives per stream':<36} min={min(keepalives)} max={max(keepalives)}")
            if args.floor:
                floor = measure_floor(args.streams)
                print(
                    f"{'bare Tornado stream (floor)':<36} {floor:.1f} KiB per stream; "
                    f"this service adds {per_stream - floor:.1f} KiB"
                )
            if any(n != 1 for n in ready) or min(ticks) != max(ticks):
                print("some stream missed events", file=sys.stderr)
                return 1
            return 0
        finally:
            if service is not None:
                service.stop()
            git.stop()


if __name__ == "__main__":
    sys.exit(main())
