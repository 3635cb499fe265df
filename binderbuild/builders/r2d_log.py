"""repo2docker's output, read the same way by every backend.

repo2docker (run with ``--json-logs``, see ``r2d_command``) prints one JSON
object per line: ``{"phase": ..., "message": ..., "progress": ...}``. Both
backends read those lines (the local one from its subprocess, the Kubernetes
one from the build pod's log) and both must turn a failed build into a
message a user can act on. Both steps live here, once:

* ``R2dLogReader`` scrubs each line of secrets, turns it into a
  ``ProgressEvent`` and remembers what a failure message needs (the failure
  lines repo2docker reported and the last few messages);
* ``exit_failure`` and ``status_failure`` classify how the build ended (an
  exit code of repo2docker, or a status the backend read elsewhere, such as a
  build pod's) as a ``BuildFailed`` carrying repo2docker's own reason.

``exit_failure`` says in words what a person can act on (issue 12): out of
memory, naming the limit (the engine's ``OOMKilled``, or a build step killed
with 137 under the build containers' limit), out of disk space on the build
machine or in the registry (``ENOSPC`` in the daemon's or the push's error),
and a builder killed by a signal; anything else stays "repo2docker exited
with code N: <its reason>".
"""

from __future__ import annotations

import json
import re
import signal
from collections import deque
from collections.abc import Mapping
from typing import Any

from binderbuild.errors import BuildFailed
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.secrets import Scrubber

# repo2docker's phases as events. Its own terminal phases (built, failed,
# ...) are still part of building: the outcome is decided by the exit code
# or status, not by a log line.
R2D_PHASES: Mapping[str, Phase] = {
    "fetching": Phase.FETCHING,
    "building": Phase.BUILDING,
    "pushing": Phase.PUSHING,
    "built": Phase.BUILDING,
    "failed": Phase.BUILDING,
    "failure": Phase.BUILDING,
    "running": Phase.BUILDING,
    "launching": Phase.BUILDING,
}
# Phases of the lines that report why a build failed.
FAILURE_PHASES = frozenset({"failed", "failure"})
# Messages kept for the failure reason.
TAIL_LINES = 5


def parse_log_line(line: str) -> tuple[ProgressEvent, bool]:
    """Turn one repo2docker output line into an event; also says whether the
    line reports a failure. Unstructured lines become ``unknown`` events."""
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return event(Phase.UNKNOWN, line + "\n"), False
    raw_phase = str(data.get("phase", "")).lower()
    phase = R2D_PHASES.get(raw_phase, Phase.UNKNOWN)
    message = str(data.get("message", ""))
    fields: dict[str, Any] = {}
    if phase is Phase.PUSHING and isinstance(data.get("progress"), dict):
        fields["progress"] = data["progress"]
    return event(phase, message, **fields), raw_phase in FAILURE_PHASES


class R2dLogReader:
    """Reads one build's repo2docker output, line by line.

    ``read`` scrubs a line, parses it and returns its event; the reader keeps
    the last ``tail_lines`` non-empty messages and failure lines, which is
    all the classifiers need.
    """

    def __init__(self, scrubber: Scrubber | None = None, *, tail_lines: int = TAIL_LINES) -> None:
        self.scrubber = scrubber or Scrubber()
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._failures: deque[str] = deque(maxlen=tail_lines)
        # The last line that said the disk was full, however far back: a build
        # step's own output says it ("dd: error writing ...: No space left on
        # device"), its failure line only gives the step's exit code.
        self.no_space = ""

    def read(self, line: str) -> ProgressEvent:
        """The event of one output line (without its line break)."""
        ev, is_failure = parse_log_line(self.scrubber.scrub(line))
        text = ev.message.strip()
        if text:
            self._tail.append(text)
            if is_failure:
                self._failures.append(text)
            if _NO_SPACE.search(text):
                self.no_space = text
        return ev

    @property
    def tail(self) -> tuple[str, ...]:
        """The last non-empty messages, oldest first."""
        return tuple(self._tail)

    @property
    def failures(self) -> tuple[str, ...]:
        """The last failure lines repo2docker reported, oldest first."""
        return tuple(self._failures)

    @property
    def last_failure(self) -> str:
        """repo2docker's own reason for the failure, or ''."""
        return self._failures[-1] if self._failures else ""

    @property
    def reason(self) -> str:
        """The best reason the log gives: the last failure line, else the
        last message (a traceback's last line, say), else ''."""
        return self.last_failure or (self._tail[-1] if self._tail else "")


def exit_failure(
    code: int,
    log: R2dLogReader,
    *,
    memory_limit: int = 0,
    oom_killed: bool = False,
) -> BuildFailed:
    """A build process or container ended with ``code`` (not 0): the reason
    in words a person understands, with repo2docker's own reason after it.

    ``memory_limit`` is the limit (bytes) of what ran: the build containers'
    for the trusted step, the sandbox's for the sandbox. ``oom_killed`` says
    the engine reported the container as killed for memory (``OOMKilled``).
    In order: out of memory (reported, or a build step killed with 137 under
    a limit), out of disk space (the machine's or the registry's), killed by
    a signal, else "repo2docker exited with code N"."""
    said = _in_words(code, log, memory_limit, oom_killed)
    if said is None:
        reason = log.reason
        return BuildFailed(f"repo2docker exited with code {code}" + (f": {reason}" if reason else ""))
    # Said in words: only a line that reported the failure adds to it.
    detail = log.last_failure
    return BuildFailed(f"{said}: {detail}" if detail else f"{said}.")


def human_bytes(size: int) -> str:
    """512 MiB, 2 GiB, 1.5 GiB: a memory limit as people write it."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor:
            value = size / factor
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{size} bytes"


# A build step's exit status, as the Docker daemon's classic builder says it.
_STEP_CODE = re.compile(r"returned a non-zero code: (\d+)")
_NO_SPACE = re.compile(r"no space left on device|ENOSPC|disk quota exceeded", re.IGNORECASE)
_PUSHING = re.compile(r"\bpush", re.IGNORECASE)


def _in_words(code: int, log: R2dLogReader, memory_limit: int, oom_killed: bool) -> str | None:
    step = _STEP_CODE.search(log.last_failure)
    step_killed = step is not None and int(step.group(1)) == 137
    limit = f" (limit {human_bytes(memory_limit)})" if memory_limit else ""
    if oom_killed or (step_killed and memory_limit):
        return f"The build ran out of memory{limit}"
    # The failure lines first; then the output's last disk-full line.
    for text in (*reversed(log.failures or log.tail), log.no_space):
        if _NO_SPACE.search(text):
            if _PUSHING.search(text):
                return "The registry ran out of disk space while the image was pushed"
            return "The build failed: the build host is out of disk space"
    if step_killed:
        return "A build step was killed (SIGKILL, exit code 137)"
    if code < 0:
        return f"The builder was killed ({_signal_name(-code)}) before the build finished"
    if code == 137:
        return "The builder was killed (SIGKILL, exit code 137) before the build finished"
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def status_failure(status_reason: str, log: R2dLogReader) -> BuildFailed:
    """The build ended as a status says (a build pod's: out of memory,
    evicted, deadline exceeded, exit code); repo2docker's own failure line is
    added unless the status already says it."""
    detail = log.last_failure
    if detail and detail not in status_reason:
        status_reason = f"{status_reason.rstrip('.')}: {detail}"
    return BuildFailed(status_reason)
