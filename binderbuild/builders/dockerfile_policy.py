"""What a repository's Dockerfile may not ask the Docker daemon to do.

Build steps (``RUN``) run in containers on the build network (``none`` by
default), but ``ADD <url>`` is different: the *daemon* downloads the URL,
from the host's own network, before any container exists. A Dockerfile from a
stranger could then copy the cloud metadata service, the registry's API or
any service on the machine's loopback into an image, and read it by
launching that image. Network isolation of build steps cannot stop it, so
such Dockerfiles are refused before the build starts.

Refused, in ``ADD`` and ``ONBUILD ADD`` (the latter would fire in an image
built ``FROM`` this one, later, unchecked):

- a source with a URL scheme (``http://``, ``https://``, anything ``://``)
  or a ``git@`` address (BuildKit's git sources);
- a source containing ``$``: variables (``ARG``/``ENV``) are expanded by the
  daemon, so ``ADD $U /x`` can become a URL after this check.

``COPY`` and local ``ADD`` sources (including archives) stay allowed. The
parser follows the Dockerfile syntax where it matters here: the ``escape``
parser directive, line continuations, comment lines inside continuations,
flags such as ``--chown``, and the JSON (exec) form.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

__all__ = ["DockerfilePolicyError", "check_dockerfile", "instructions"]

_DIRECTIVE = re.compile(r"^#\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(\S+)\s*$")
_MAX_QUOTED = 200


class DockerfilePolicyError(ValueError):
    """The Dockerfile asks for something this service does not allow."""


def _escape_char(lines: list[str]) -> str:
    """The escape character from the parser directives at the top (default ``\\``)."""
    escape = "\\"
    for line in lines:
        match = _DIRECTIVE.match(line.strip())
        if not match:
            break  # directives end at the first line that is not one
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
    return escape


def instructions(text: str) -> Iterator[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines = text.splitlines()
    escape = _escape_char(lines)
    current: list[str] = []
    for raw in lines:
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            # Blank and comment lines never end an instruction (Docker skips
            # them inside a continuation too).
            continue
        line = raw.rstrip()
        if line.endswith(escape):
            current.append(line[: -len(escape)])
            continue
        current.append(line)
        yield " ".join(part.strip() for part in current).strip()
        current = []
    if current:
        yield " ".join(part.strip() for part in current).strip()


def _add_sources(args: str) -> list[str]:
    """The source operands of ``ADD args`` (everything but the destination)."""
    words = args.split()
    while words and words[0].startswith("--"):
        words.pop(0)  # --chown=, --chmod=, --checksum=, --link, --keep-git-dir=
    rest = " ".join(words)
    if rest.startswith("["):
        try:
            operands = json.loads(rest)
        except ValueError:
            operands = None
        if isinstance(operands, list) and all(isinstance(o, str) for o in operands):
            return operands[:-1] if len(operands) > 1 else operands
    return words[:-1] if len(words) > 1 else words


def _remote(source: str) -> bool:
    lowered = source.strip("\"'").lower()
    return "://" in lowered or lowered.startswith("git@") or "$" in lowered


def _check(instruction: str) -> None:
    parts = instruction.split(None, 1)
    if not parts:
        return
    keyword, args = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
    if keyword == "ONBUILD":
        _check(args)
        return
    if keyword != "ADD":
        return
    for source in _add_sources(args):
        if _remote(source):
            shown = instruction if len(instruction) <= _MAX_QUOTED else instruction[:_MAX_QUOTED] + "..."
            raise DockerfilePolicyError(
                f"This Dockerfile is not built here: {shown!r} makes the Docker daemon "
                "download a URL (or a variable that may become one) outside the build's "
                "network isolation. Use COPY for files from the repository, and download "
                "files in a RUN step instead (e.g. RUN curl -fsSLo /dest URL)."
            )


def check_dockerfile(text: str) -> None:
    """Raise DockerfilePolicyError when the Dockerfile may not be built."""
    for instruction in instructions(text):
        _check(instruction)
