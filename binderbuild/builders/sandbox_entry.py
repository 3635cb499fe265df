"""The first process of a build sandbox: network relay, then repo2docker.

Runs inside the sandbox container (``builders/sandbox.py``), as an
unprivileged user with no network of its own (``--network none`` leaves only
the container's private loopback). The build's egress proxy listens on a
Unix socket of the host that is mounted into the container; this module
exposes that socket as ``127.0.0.1:RELAY_PORT`` on the container's loopback
(one thread per connection, bytes copied both ways, nothing interpreted), so
git, ``requests`` and the ``git://`` tunnel can use it as an ordinary HTTP
proxy. Then it runs repo2docker in this process with the given arguments
and exits with its status.

    python -m binderbuild.builders.sandbox_entry [repo2docker arguments...]

Environment: ``BINDERBUILD_SANDBOX_EGRESS_SOCKET`` (the mounted socket; unset:
no relay), ``BINDERBUILD_SANDBOX_GIT_PROXY`` (where to write the
``GIT_PROXY_COMMAND`` script; unset: none) and
``BINDERBUILD_SANDBOX_LIFELINE=stdin``: exit (137) as soon as stdin reaches
its end, which is when the service holding it is gone (``sandbox.py``); as
the container's PID 1, that ends every process in it.

``BINDERBUILD_SANDBOX_REPORT_DIR`` (build pods, ``pod_manifests``): nobody
reads the container's output there, the trusted container of the same pod
reads files. repo2docker then runs as a child process with its output in
``sandbox.log`` of that directory; this process holds an exclusive ``flock``
on ``alive`` while it runs and writes repo2docker's exit status to
``status`` when it ends (``report_child``). The trusted step
(``trusted_build --sandbox``) relays the log and waits for the status, or
for the lock to be released without one (this process was killed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import runpy
import signal
import socket
import subprocess
import sys
import threading
from types import FrameType

ENV_EGRESS_SOCKET = "BINDERBUILD_SANDBOX_EGRESS_SOCKET"
ENV_GIT_PROXY = "BINDERBUILD_SANDBOX_GIT_PROXY"
ENV_LIFELINE = "BINDERBUILD_SANDBOX_LIFELINE"
ENV_REPORT_DIR = "BINDERBUILD_SANDBOX_REPORT_DIR"
# The files of the report directory (read by trusted_build.follow_sandbox).
REPORT_LOG = "sandbox.log"
REPORT_ALIVE = "alive"
REPORT_STATUS = "status"
RELAY_HOST = "127.0.0.1"
RELAY_PORT = 3128

_CHUNK = 64 * 1024


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(_CHUNK):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _serve(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
    back.start()
    _pipe(client, upstream)
    back.join()
    client.close()
    upstream.close()


def start_relay(path: str, host: str = RELAY_HOST, port: int = RELAY_PORT) -> socket.socket:
    """Listen on ``host:port`` and relay every connection to the Unix socket ``path``."""
    listener = socket.create_server((host, port), backlog=64)

    def accept() -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_serve, args=(client, path), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener


def write_git_proxy(path: str) -> None:
    """The ``GIT_PROXY_COMMAND`` for ``git://``: binderbuild's CONNECT tunnel."""
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\nexec {sys.executable} -m binderbuild.egress "$@"\n')
    os.chmod(path, 0o700)


def watch_lifeline(fd: int = 0) -> threading.Thread:
    """Exit the process when ``fd`` reaches its end (the service is gone)."""

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, _CHUNK):
                pass
        os._exit(137)

    thread = threading.Thread(target=watch, daemon=True, name="lifeline")
    thread.start()
    return thread


def hold_alive(report_dir: str) -> int:
    """Create ``alive`` in ``report_dir`` already locked (made under another
    name, locked, then renamed), so whoever sees the file and can take the
    lock knows its holder is gone. Returns the descriptor to keep open."""
    tmp = os.path.join(report_dir, f".{REPORT_ALIVE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(tmp, os.path.join(report_dir, REPORT_ALIVE))
    return fd


def write_status(report_dir: str, code: int) -> None:
    tmp = os.path.join(report_dir, f".{REPORT_STATUS}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(f"{code}\n")
    os.rename(tmp, os.path.join(report_dir, REPORT_STATUS))


def report_child(argv: list[str], report_dir: str) -> int:
    """Run ``argv`` with its output in ``sandbox.log``, holding ``alive``
    locked, and write its exit status (negative: killed by that signal)."""
    alive = hold_alive(report_dir)
    log_fd = os.open(
        os.path.join(report_dir, REPORT_LOG),
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW,
        0o644,
    )
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd)
    os.close(log_fd)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    code = child.wait()
    write_status(report_dir, code)
    os.close(alive)
    return code


def main(argv: list[str]) -> None:
    report_dir = os.environ.get(ENV_REPORT_DIR, "")
    if report_dir:
        tmpdir = os.environ.get("TMPDIR", "")
        if tmpdir:
            os.makedirs(tmpdir, exist_ok=True)
        code = report_child([sys.executable, "-m", "repo2docker", *argv], report_dir)
        sys.exit(0 if code == 0 else 1)
    if os.environ.get(ENV_LIFELINE) == "stdin":
        watch_lifeline()
    egress = os.environ.get(ENV_EGRESS_SOCKET, "")
    if egress:
        start_relay(egress)
    git_proxy = os.environ.get(ENV_GIT_PROXY, "")
    if git_proxy:
        write_git_proxy(git_proxy)
    tmpdir = os.environ.get("TMPDIR", "")
    if tmpdir:
        # The checkout goes there: the work directory, on disk, not the
        # container's small /tmp.
        os.makedirs(tmpdir, exist_ok=True)
    sys.argv = ["repo2docker", *argv]
    # repo2docker ends with sys.exit(status); the relay threads are daemons.
    runpy.run_module("repo2docker", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
