"""What a build sandbox hands to the trusted step, and how that step reads it.

The sandbox (repo2docker with ``binderbuild_docker_api`` in export mode, see
``r2d_engine``) ends by writing two files to its output directory:

``context.tar``
    the build context, an uncompressed tar with the Dockerfile in it as a
    regular file;
``build.json``
    the build parameters repo2docker chose: ``tag``, ``buildargs``,
    ``labels``, ``dockerfile`` (its path in the context) and ``platform``.

Everything in that directory was written by a process that ran a stranger's
repository's fetch and detection, so the trusted step (the service's
machine, with the Docker socket) treats it as hostile input: files are
opened without following symlinks and must be regular files of bounded size,
every parameter is type- and shape-checked, the tag must be the image the
service asked for, and everything else about the build (network, memory,
pulls, push, registry credentials) is decided by the service, never read from
here.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Any

CONTEXT_FILE = "context.tar"
PARAMS_FILE = "build.json"

MAX_PARAMS_BYTES = 256 * 1024
# Build args and labels: what repo2docker sets is a handful of short values.
_MAX_ENTRIES = 64
_MAX_VALUE = 8192
_ARG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(/[a-z0-9]+)?")


class SandboxOutputError(ValueError):
    """The sandbox's output is missing, malformed or not what was asked for."""


@dataclass(frozen=True)
class BuildParams:
    tag: str
    buildargs: dict[str, str]
    labels: dict[str, str]
    dockerfile: str
    platform: str


def _text(value: Any, what: str, limit: int = _MAX_VALUE) -> str:
    if not isinstance(value, str) or len(value) > limit or "\0" in value:
        raise SandboxOutputError(f"{what} must be a string of at most {limit} characters")
    return value


def _mapping(value: Any, what: str, key_re: re.Pattern[str]) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > _MAX_ENTRIES:
        raise SandboxOutputError(f"{what} must be an object of at most {_MAX_ENTRIES} entries")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key_re.fullmatch(key):
            raise SandboxOutputError(f"{what}: {str(key)[:80]!r} is not an allowed name")
        out[key] = _text(item, f"{what}[{key}]")
    return out


def _dockerfile_path(value: Any) -> str:
    name = _text(value if value else "Dockerfile", "dockerfile", 1024).removeprefix("./")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise SandboxOutputError(f"dockerfile {name[:80]!r} is not a plain path in the context")
    return name


def parse_params(data: Any, expected_tag: str) -> BuildParams:
    """Check the parameters the sandbox wrote; the tag must be ``expected_tag``."""
    if not isinstance(data, dict):
        raise SandboxOutputError("the build parameters are not a JSON object")
    tag = _text(data.get("tag"), "tag", 512)
    if tag != expected_tag:
        raise SandboxOutputError(f"the sandbox asked for tag {tag[:200]!r}, not {expected_tag!r}")
    platform = _text(data.get("platform") or "", "platform", 64)
    if platform and not _PLATFORM.fullmatch(platform):
        raise SandboxOutputError(f"platform {platform!r} is not os/arch[/variant]")
    return BuildParams(
        tag=tag,
        buildargs=_mapping(data.get("buildargs"), "buildargs", _ARG_NAME),
        labels=_mapping(data.get("labels"), "labels", _LABEL_NAME),
        dockerfile=_dockerfile_path(data.get("dockerfile")),
        platform=platform,
    )


def open_regular(path: str, max_bytes: int) -> IO[bytes]:
    """Open ``path`` for reading only if it is a regular file (no symlink,
    FIFO or device: the sandbox could plant any) of at most ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxOutputError(
            f"{os.path.basename(path)} is missing or not a file ({exc.strerror})"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise SandboxOutputError(f"{os.path.basename(path)} is not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise SandboxOutputError(
            f"{os.path.basename(path)} is larger than {max_bytes // (1024 * 1024)} MiB"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_params(directory: str, expected_tag: str) -> BuildParams:
    with open_regular(os.path.join(directory, PARAMS_FILE), MAX_PARAMS_BYTES) as f:
        raw = f.read(MAX_PARAMS_BYTES + 1)
    try:
        data = json.loads(raw)
    except ValueError:
        raise SandboxOutputError("the build parameters are not valid JSON") from None
    return parse_params(data, expected_tag)


def check_context(context: IO[bytes], dockerfile: str) -> None:
    """The context must be a tar holding ``dockerfile`` as a regular file.

    A symlinked Dockerfile would be resolved differently by a tar reader and
    by the daemon, so the policy could check one file and the daemon build
    another; the sandbox materializes it, so anything else is refused.
    Leaves ``context`` at its start.
    """
    try:
        with tarfile.open(fileobj=context, mode="r:") as tar:
            try:
                member = tar.getmember(dockerfile)
            except KeyError:
                raise SandboxOutputError(f"{dockerfile} is not in the build context") from None
            if not member.isreg():
                raise SandboxOutputError(f"{dockerfile} is not a regular file in the build context")
    except tarfile.TarError as exc:
        raise SandboxOutputError(f"the build context is not a tar archive ({exc})") from None
    finally:
        context.seek(0)
