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
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import IO, Any

from binderbuild.builders.sandbox_output import (
    CONTEXT_FILE,
    SandboxOutputError,
    check_context,
    open_regular,
    read_params,
)

ENV_MAX_CONTEXT = "BINDERBUILD_MAX_CONTEXT_BYTES"
DEFAULT_MAX_CONTEXT = 10 * 1024**3


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
    args = parser.parse_args(argv)
    return run(args.dir, args.tag, args.push)


if __name__ == "__main__":
    sys.exit(main())
