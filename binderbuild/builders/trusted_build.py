"""The trusted step of a sandboxed build: the sandbox's output into an image.

The build sandbox (``builders/sandbox.py``) fetched the repository, detected
its buildpack and wrote a build context and parameters; it had no Docker
socket. This step, run by ``DockerBuilder`` on the service's machine as its
own killable process, is the only one that talks to the daemon:

1. reads the sandbox's output as hostile input (``sandbox_output``): no
   symlinks followed, sizes bounded, parameters checked, the tag must be the
   image the service asked for;
2. builds and pushes through ``DockerAPIEngine`` (the same Engine API code
   the engine uses everywhere), which applies the Dockerfile policy
   (``dockerfile_policy.check_dockerfile``) before the daemon sees anything
   and takes the network, memory limit and registry credentials from the
   service's environment only.

It prints repo2docker's JSON log lines (``{"phase", "message"}``) on stdout,
so the service reads both processes of a build with one ``R2dLogReader``,
and exits 1 after a ``failed`` line when the build cannot be made.

    python -m binderbuild.builders.trusted_build --dir=OUT --tag=IMAGE --push|--no-push

In a build pod (``pod_manifests``) the sandbox is the pod's other container
and may still be running, so this step first follows it through their shared
volume, mounted read-only here (``--sandbox=DIR``, ``follow_sandbox``): it
prints the sandbox's log as it grows, waits for its exit status, stops with
it when the sandbox failed, then copies the two output files into its own
directory (``--dir``, which only this container can write) before checking
anything, so the sandbox cannot change them between the check and the build.

    python -m binderbuild.builders.trusted_build --sandbox=SHARED --dir=PRIVATE --tag=IMAGE --push
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import shutil
import stat
import sys
import time
from typing import IO, Any

from binderbuild.builders.sandbox_entry import REPORT_ALIVE, REPORT_LOG, REPORT_STATUS
from binderbuild.builders.sandbox_output import (
    CONTEXT_FILE,
    MAX_PARAMS_BYTES,
    PARAMS_FILE,
    SandboxOutputError,
    check_context,
    open_regular,
    read_params,
)

ENV_MAX_CONTEXT = "BINDERBUILD_MAX_CONTEXT_BYTES"
DEFAULT_MAX_CONTEXT = 10 * 1024**3
# Where the sandbox leaves its output, under its report directory
# (sandbox.OUT_DIR relative to sandbox.WORK_DIR).
SANDBOX_OUT = "out"
# A line of the sandbox's log longer than this is passed on in pieces.
MAX_LINE = 1 << 20
# Far more than any sandbox log needs; the rest is dropped (the service
# caps the build log anyway).
MAX_SANDBOX_LOG = 256 * 1024**2
_MAX_STATUS = 32


def emit(phase: str, message: str, out: IO[str] = sys.stdout) -> None:
    out.write(json.dumps({"phase": phase, "message": message}) + "\n")
    out.flush()


class _JsonLines(logging.Handler):
    """The engine logs push progress with a ``phase``; print it as repo2docker would."""

    def emit(self, record: logging.LogRecord) -> None:
        emit(str(getattr(record, "phase", "building")), record.getMessage())


def _engine() -> Any:
    from binderbuild.builders.r2d_engine import DockerAPIEngine

    engine = DockerAPIEngine(parent=None)
    logger = logging.getLogger("binderbuild.trusted_build")
    logger.handlers[:] = [_JsonLines()]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    engine.log = logger
    return engine


def _open_shared(path: str) -> int | None:
    """A file the sandbox wrote, opened read-only without following links
    (None while it does not exist); anything but a regular file is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SandboxOutputError(f"{os.path.basename(path)} is a symbolic link") from None
        raise SandboxOutputError(f"cannot open {os.path.basename(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SandboxOutputError(f"{os.path.basename(path)} is not a regular file")
    return fd


def _holder_gone(fd: int) -> bool:
    """The sandbox's first process no longer holds its lock on ``alive``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _read_status(path: str) -> int | None:
    fd = _open_shared(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(_MAX_STATUS)
    try:
        return int(raw.strip())
    except ValueError:
        raise SandboxOutputError("the sandbox's exit status is not a number") from None


class _LogRelay:
    """Prints the lines of a growing file, each once, as they are completed."""

    def __init__(self, path: str, out: IO[str]) -> None:
        self.path = path
        self.out = out
        self.fd: int | None = None
        self.pending = b""
        self.total = 0
        self.done = False

    def pump(self) -> None:
        if self.done:
            return
        if self.fd is None:
            self.fd = _open_shared(self.path)
            if self.fd is None:
                return
        while self.total < MAX_SANDBOX_LOG:
            try:
                chunk = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.total += len(chunk)
            self.pending += chunk
            *lines, self.pending = self.pending.split(b"\n")
            for line in lines:
                self._write(line)
            while len(self.pending) > MAX_LINE:
                self._write(self.pending[:MAX_LINE])
                self.pending = self.pending[MAX_LINE:]

    def finish(self) -> None:
        self.pump()
        self.done = True
        if self.pending:
            self._write(self.pending)
            self.pending = b""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _write(self, line: bytes) -> None:
        self.out.write(line.decode(errors="replace").rstrip("\r") + "\n")
        self.out.flush()


def follow_sandbox(
    directory: str, out: IO[str] = sys.stdout, poll: float = 0.2
) -> tuple[int | None, str]:
    """Relay the sandbox's log (``sandbox.log`` in ``directory``) to ``out``
    until it reports its exit status; returns (status, "") or, when the
    sandbox's first process went away without a status, (None, why).

    Waits as long as the sandbox neither reports nor lets go of ``alive``
    (the pod's ``activeDeadlineSeconds`` ends a sandbox that hangs)."""
    relay = _LogRelay(os.path.join(directory, REPORT_LOG), out)
    alive: int | None = None
    try:
        while True:
            status = _read_status(os.path.join(directory, REPORT_STATUS))
            if status is not None:
                relay.finish()
                return status, ""
            if alive is None:
                alive = _open_shared(os.path.join(directory, REPORT_ALIVE))
            elif _holder_gone(alive):
                # It may have written its status just before it let go.
                status = _read_status(os.path.join(directory, REPORT_STATUS))
                relay.finish()
                if status is not None:
                    return status, ""
                return None, "the build sandbox ended without a result (it was killed)"
            relay.pump()
            time.sleep(poll)
    finally:
        if alive is not None:
            os.close(alive)
        relay.finish()


def copy_output(source: str, target: str, max_context: int) -> None:
    """Copy the sandbox's parameters and context (regular files, bounded)
    from the shared ``source`` into ``target``, private to this step."""
    os.makedirs(target, mode=0o700, exist_ok=True)
    for name, limit in ((PARAMS_FILE, MAX_PARAMS_BYTES), (CONTEXT_FILE, max_context)):
        with open_regular(os.path.join(source, name), limit) as src:
            dst_path = os.path.join(target, name)
            with open(dst_path, "wb") as dst:
                shutil.copyfileobj(_Bounded(src, limit), dst, 1024 * 1024)


class _Bounded:
    """Reads at most ``limit`` bytes, then fails: the file may still grow."""

    def __init__(self, f: IO[bytes], limit: int) -> None:
        self.f = f
        self.left = limit

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size if size >= 0 else self.left + 1)
        self.left -= len(data)
        if self.left < 0:
            raise SandboxOutputError("a file of the sandbox's output grew past its limit")
        return data


def run_sandboxed(sandbox_dir: str, directory: str, tag: str, push: bool) -> int:
    """Follow the sandbox in ``sandbox_dir``, copy its output to ``directory``,
    then build it (``run``)."""
    try:
        status, why = follow_sandbox(sandbox_dir)
    except SandboxOutputError as exc:
        emit("failed", f"The build sandbox's output was refused: {exc}\n")
        return 1
    if status is None:
        emit("failed", f"\n{why[0].upper()}{why[1:]}.\n")
        return 1
    if status != 0:
        # The sandbox's own log said why (repo2docker's "failed" line); a
        # signal is usually its memory limit.
        if status < 0:
            emit("failed", f"\nThe build sandbox was killed by signal {-status}.\n")
        return 1
    try:
        max_context = int(os.environ.get(ENV_MAX_CONTEXT) or DEFAULT_MAX_CONTEXT)
        copy_output(os.path.join(sandbox_dir, SANDBOX_OUT), directory, max_context)
    except SandboxOutputError as exc:
        emit("failed", f"The build sandbox's output was refused: {exc}\n")
        return 1
    return run(directory, tag, push)


def run(directory: str, tag: str, push: bool) -> int:
    try:
        max_context = int(os.environ.get(ENV_MAX_CONTEXT) or DEFAULT_MAX_CONTEXT)
        params = read_params(directory, tag)
        context = open_regular(os.path.join(directory, CONTEXT_FILE), max_context)
    except SandboxOutputError as exc:
        emit("failed", f"The build sandbox's output was refused: {exc}\n")
        return 1
    with context:
        try:
            check_context(context, params.dockerfile)
        except SandboxOutputError as exc:
            emit("failed", f"The build sandbox's output was refused: {exc}\n")
            return 1
        from repo2docker.engine import ContainerEngineException

        try:
            engine = _engine()
        except ContainerEngineException as exc:
            emit("failed", f"\nContainer engine initialization error: {exc}\n")
            return 1
        for item in engine.build(
            push=push,
            tag=params.tag,
            buildargs=params.buildargs,
            labels=params.labels,
            dockerfile=params.dockerfile,
            platform=params.platform or None,
            fileobj=context,
            custom_context=True,
        ):
            # What repo2docker does with each item of a build (app.py).
            if "stream" in item:
                emit("building", item["stream"])
            elif "error" in item:
                emit("failed", str(item["error"]))
                return 1
            elif "status" in item:
                emit("building", "Fetching base image...\r")
            else:
                emit("building", json.dumps(item))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--push", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--sandbox", default="", help="the sandbox's report directory, to follow first"
    )
    args = parser.parse_args(argv)
    if args.sandbox:
        return run_sandboxed(args.sandbox, args.dir, args.tag, args.push)
    return run(args.dir, args.tag, args.push)


if __name__ == "__main__":
    sys.exit(main())
