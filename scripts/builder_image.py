"""Build the local build-sandbox image (binderbuild/builder:local) when it is stale.

``images/builder/Dockerfile`` FROM the local stand-in for
``python:3.11-slim-bookworm`` (scripts/setup.sh makes it), with this
checkout's binderbuild in it: the sandbox runs binderbuild's repo2docker
engine and relay, so the image must follow the code. The image carries the
SHA-256 of everything it is made from (the Dockerfile, pyproject.toml,
README.md, binderbuild/ as .dockerignore sends it, and the base image's id)
as a label; a run with nothing changed only hashes and compares (well under a
second). A rebuild after a code change reuses the cached apt and pip layers.

    python scripts/builder_image.py [--tag binderbuild/builder:local]

Used by scripts/setup.sh and by the test suite's session fixture; ``build``
(one image build, streamed) also by tests/images/test_images.py, which builds
its own tags of both images and never touches this one.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TAG = "binderbuild/builder:local"
BASE = "binderbuild/python-standin:3.11-bookworm"
DOCKERFILE = "images/builder/Dockerfile"
LABEL = "binderbuild.source-sha256"


def _sources() -> list[Path]:
    files = [ROOT / DOCKERFILE, ROOT / "pyproject.toml", ROOT / "README.md"]
    for path in sorted((ROOT / "binderbuild").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            files.append(path)
    return files


def source_hash(base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    for path in _sources():
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


class ImageBuildError(Exception):
    """The daemon reported a build error; ``tail`` is the end of its log."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


def build(
    api: Any,
    *,
    dockerfile: str,
    tag: str,
    buildargs: Mapping[str, str],
    labels: Mapping[str, str],
    on_output: Callable[[str], None] | None = None,
) -> None:
    """Build ``dockerfile`` with this checkout as its context through the
    Engine API (``api``: a docker-py ``APIClient``), streaming the output to
    ``on_output``; raises ImageBuildError with the log's end on failure."""
    log: list[str] = []
    for chunk in api.build(
        path=str(ROOT),
        dockerfile=dockerfile,
        tag=tag,
        buildargs=dict(buildargs),
        labels=dict(labels),
        # No bridge on this dockerd: only host networking reaches PyPI and
        # Debian's mirror. Only these trusted image builds get it.
        network_mode="host",
        pull=False,
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "stream" in chunk:
            log.append(chunk["stream"])
            if on_output is not None:
                on_output(chunk["stream"])
        if "error" in chunk:
            raise ImageBuildError(
                f"building {tag} from {dockerfile} failed: {chunk['error']}", "".join(log)[-4000:]
            )


def ensure(tag: str = TAG, quiet: bool = False) -> bool:
    """Build ``tag`` unless it is up to date; True when it was built."""
    import docker
    import docker.errors

    client = docker.from_env(version="auto", timeout=3600)
    try:
        try:
            base_id = client.api.inspect_image(BASE)["Id"]  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            raise SystemExit(f"{BASE} is missing: run scripts/setup.sh") from None
        want = source_hash(base_id)
        try:
            current = client.api.inspect_image(tag)  # type: ignore[no-untyped-call]
        except docker.errors.ImageNotFound:
            current = None
        labels = ((current or {}).get("Config") or {}).get("Labels") or {}
        if labels.get(LABEL) == want:
            return False
        try:
            build(
                client.api,
                dockerfile=DOCKERFILE,
                tag=tag,
                buildargs={"PYTHON_IMAGE": BASE},
                labels={LABEL: want},
                on_output=None if quiet else sys.stdout.write,
            )
        except ImageBuildError as exc:
            raise SystemExit(f"{exc}\n{exc.tail}") from None
        if current is not None:
            # The previous build, now untagged; kept if something still uses it.
            try:
                client.api.remove_image(current["Id"])  # type: ignore[no-untyped-call]
            except docker.errors.APIError:
                pass
        return True
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=TAG)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    built = ensure(args.tag, args.quiet)
    print(f"{args.tag} {'built' if built else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
