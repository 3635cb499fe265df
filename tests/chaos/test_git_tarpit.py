"""Git servers that accept connections and never answer, or answer a byte
at a time (tarpits), over 50 resolutions.

Real service and real ``git ls-remote``. Each resolution ends within
``GitRepoProvider.ls_remote_timeout`` (plus its wait for a resolution slot)
with the provider's one answer for an unreachable repository, and the
service keeps nothing of them: no git process (running or zombie) and no
more open file descriptors than before.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.api.helpers import Response, call, wait_for
from tests.chaos.test_build_crash import descendants

TIMEOUT = 2.0
ATTEMPTS = 50
CONCURRENT = 10  # resolve_concurrency_limit: the rest queue


def _serve(talk: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback TCP server that hands each connection to ``talk`` on its own thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=talk, args=(conn, stop), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        for conn in conns:
            conn.close()
        listener.close()


@pytest.fixture
def silent_tarpit() -> Iterator[int]:
    """Accepts and never sends a byte."""

    def talk(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait()

    yield from _serve(talk)


@pytest.fixture
def trickling_tarpit() -> Iterator[int]:
    """Answers HTTP one byte every 0.2 s, headers that never end."""

    def talk(conn: socket.socket, stop: threading.Event) -> None:
        data = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\n"
        data += b"X-Slow: " + b"a" * 100_000
        for byte in data:
            if stop.wait(0.2):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return

    yield from _serve(talk)


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def zombies_and_children(pid: int) -> list[tuple[int, str]]:
    found = []
    for child in descendants(pid):
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        found.append((child, stat.rsplit(")", 1)[1].split()[0]))
    return found


def test_tarpit_git_servers_over_fifty_resolutions(
    start_service: Any, silent_tarpit: int, trickling_tarpit: int
) -> None:
    svc = start_service(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbtest-local-'\n"
        f"c.GitRepoProvider.ls_remote_timeout = {TIMEOUT}\n"
        f"c.BinderBuild.resolve_concurrency_limit = {CONCURRENT}\n"
    )
    assert svc.proc is not None
    pid = svc.proc.pid
    urls = [
        f"git://127.0.0.1:{silent_tarpit}/silent.git",
        f"http://127.0.0.1:{trickling_tarpit}/trickle.git",
    ]

    def attempt(i: int) -> tuple[Response, float]:
        # A branch of its own each: no two attempts share a resolution.
        url = urls[i % 2]
        started = time.monotonic()
        spec = f"{quote(url, safe='')}/branch-{i}"
        resp = call(f"{svc.url}/api/builds", "POST", {"provider": "git", "spec": spec}, timeout=120)
        return resp, time.monotonic() - started

    # One of each first: what the service opens once (git's version check,
    # pools) is open before the count.
    for i in range(2):
        resp, _ = attempt(i)
        assert resp.status == 502, resp.text
    time.sleep(1)
    fds_before = fd_count(pid)
    assert not zombies_and_children(pid)

    with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
        results = list(pool.map(attempt, range(2, ATTEMPTS + 2)))

    rounds = -(-ATTEMPTS // CONCURRENT)
    for resp, elapsed in results:
        assert resp.status == 502, resp.text
        message = resp.json()["message"]
        assert message.startswith("Could not reach the repository at "), message
        # Each waits for a slot at most as long as the rounds before it.
        assert elapsed <= rounds * (TIMEOUT + 3), elapsed
    timed_out = svc.log().count("Timed out after 2s asking for refs")
    assert timed_out >= ATTEMPTS, svc.log()[-3000:]

    # Nothing left: no git process, no zombie, no descriptor more than before.
    wait_for("the git processes to be gone", lambda: not zombies_and_children(pid), 10)
    wait_for(
        f"the descriptors to return to {fds_before}",
        lambda: fd_count(pid) <= fds_before,
        10,
    )
    # The service answers as before.
    resp, _ = attempt(ATTEMPTS + 2)
    assert resp.status == 502, resp.text


def git_processes_for(port: int, only: bytes = b"") -> list[int]:
    """Live processes (git, its transport helper) whose command line names
    ``port`` (and contains ``only``)."""
    found = []
    for name in Path("/proc").iterdir():
        if not name.name.isdigit():
            continue
        try:
            cmdline = (name / "cmdline").read_bytes()
            state = (name / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"127.0.0.1:{port}/".encode() in cmdline and only in cmdline and state != "Z":
            found.append(int(name.name))
    return found


# ls_remote_timeout per way of stopping: stopped, far longer than the test
# (only the service's end can stop them); killed, short, since git's http
# helper outlives the service until its low-speed limit (timeout + 5 s).
RESOLVE_TIMEOUT = {"SIGTERM": 600.0, "SIGKILL": 8.0}


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGKILL"])
def test_resolutions_in_a_tarpit_end_with_the_service(
    start_service: Any, silent_tarpit: int, trickling_tarpit: int, stop: str
) -> None:
    svc = start_service(
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbtest-local-'\n"
        f"c.GitRepoProvider.ls_remote_timeout = {RESOLVE_TIMEOUT[stop]}\n"
    )
    assert svc.proc is not None
    urls = [
        f"git://127.0.0.1:{silent_tarpit}/silent.git",
        f"http://127.0.0.1:{trickling_tarpit}/trickle.git",
    ]
    pool = ThreadPoolExecutor(max_workers=4)
    for i in range(4):
        body = {"provider": "git", "spec": f"{quote(urls[i % 2], safe='')}/branch-{i}"}
        pool.submit(call, f"{svc.url}/api/builds", "POST", body, timeout=60)
    ports = (silent_tarpit, trickling_tarpit)
    wait_for(
        "git to connect to both tarpits",
        lambda: all(git_processes_for(p) for p in ports),
        20,
    )
    started = time.monotonic()
    if stop == "SIGTERM":
        svc.stop()
    else:
        svc.proc.kill()
        svc.proc.wait(10)
    try:
        # git itself dies with the service, however it ends.
        wait_for(
            "git to end with the service",
            lambda: not any(git_processes_for(p, b"ls-remote") for p in ports),
            10,
        )
        if stop == "SIGTERM":
            # Stopped: the service ends the whole group (the transport helper too).
            wait_for(
                "the resolutions' processes to end with the service",
                lambda: not any(git_processes_for(p) for p in ports),
                10,
            )
        else:
            # Killed: git's http helper outlives it, and gives up by itself
            # within the resolution's time limit (curl's low-speed limit).
            wait_for(
                "the transport helper to give up",
                lambda: not any(git_processes_for(p) for p in ports),
                RESOLVE_TIMEOUT[stop] + 5 + 10 - (time.monotonic() - started),
            )
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
