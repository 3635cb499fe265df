"""Which process owns a leftover, and whether that process is still alive.

A build leaves things outside the service's memory: a sandbox container on
the engine, a work directory, process groups, a write-ahead record in the
history. Each is tagged with the *owner token* of the service process that
made it::

    <boot id>:<pid namespace>:<pid>:<start time in clock ticks>

so a restarted service (issue 12) can tell the leftovers of a dead process
(remove them) from those of a live one, such as a second service on the same
machine and engine (leave them alone). The start time guards against a
reused pid; the boot id against a reboot; a token from another pid
namespace (a service in a container) cannot be judged from here and is left
alone.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def _boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return "unknown-boot"


def _pid_namespace() -> str:
    try:
        # "pid:[4026531836]" -> "pid-[4026531836]" (no ":" in a token field).
        return os.readlink("/proc/self/ns/pid").replace(":", "-")
    except OSError:
        return "pid-unknown"


def start_time(pid: int) -> int:
    """When ``pid`` started (clock ticks since boot); -1 if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[19])  # field 22 of stat(5)


def process_group(pid: int) -> int:
    """The process group of ``pid``; -1 if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[2])


def current() -> str:
    """This process's owner token."""
    pid = os.getpid()
    return f"{_boot_id()}:{_pid_namespace()}:{pid}:{start_time(pid)}"


def alive(token: str) -> bool | None:
    """Whether the process of ``token`` still runs: True, False, or None when
    this process cannot tell (another pid namespace, a malformed token)."""
    parts = token.split(":")
    if len(parts) != 4:
        return None
    boot, namespace, pid_text, start_text = parts
    try:
        pid, start = int(pid_text), int(start_text)
    except ValueError:
        return None
    if boot != _boot_id():
        return False  # the machine rebooted: every process of then is gone
    if namespace != _pid_namespace():
        return None
    return start_time(pid) == start
