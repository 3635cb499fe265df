"""What a local build leaves outside the service, and the sweep at start.

Every build of ``DockerBuilder`` owns three kinds of things the service's
memory does not hold, each tagged with the service's owner token
(``binderbuild.owners``):

- its **work directory** (``<work_root>/binderbuild-XXXX``: the sandbox's
  mount with the checkout and the build context, the egress proxy's socket;
  without a sandbox also repo2docker's checkout, through ``TMPDIR``), with
  ``OWNER_FILE`` naming the owner, the image and
- the **process groups** the build started (the trusted step, or repo2docker
  without a sandbox): group id and the leader's start time;
- its **sandbox container**, labelled ``OWNER_LABEL``, ``IMAGE_LABEL`` and
  ``BUILD_LABEL`` (the work directory's name).

A build removes all of them when it ends, however it ends. When the service
itself dies (SIGKILL, OOM, a crash), the processes die with it
(``PR_SET_PDEATHSIG``, ``deathsig_preexec``) and the sandbox sees its stdin
close (``sandbox_entry``); what is still there is found by the next start:
``sweep_workdirs`` and ``sweep_containers`` kill and remove what belongs to
a dead owner, and only that, so two services on one machine and engine never
touch each other's builds.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binderbuild import owners

log = logging.getLogger("binderbuild.builders.leftovers")

WORKDIR_PREFIX = "binderbuild-"
OWNER_FILE = "binderbuild-build.json"
OWNER_LABEL = "binderbuild.owner"
IMAGE_LABEL = "binderbuild.image"
BUILD_LABEL = "binderbuild.build"
ROLE_LABEL = "binderbuild.role"

Alive = Callable[[str], "bool | None"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Leftover:
    """A dead owner's build, found and removed."""

    what: str  # "workdir" or "container"
    name: str
    image: str
    owner: str
    killed_groups: int = 0


# --- work directories ------------------------------------------------------------


def make_workdir(root: str, image: str) -> Path:
    """A new build work directory under ``root`` with its owner file."""
    path = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=root or None))
    _write(path, {"owner": owners.current(), "image": image, "groups": []})
    return path


def note_process(workdir: Path, pid: int) -> None:
    """Record a process group this build started (``pid`` leads it)."""
    info = _read(workdir) or {"owner": owners.current(), "image": "", "groups": []}
    info["groups"].append({"pgid": pid, "start": owners.start_time(pid)})
    _write(workdir, info)


def remove_workdir(path: Path | str) -> None:
    """Remove a work directory whatever is in it (the service is root; files
    the sandbox's user made are removable)."""
    shutil.rmtree(path, ignore_errors=True)


def sweep_workdirs(root: str, alive: Alive = owners.alive) -> list[Leftover]:
    """Kill the process groups and remove the work directories of dead owners
    under ``root``. Directories without an owner file, or of a live owner (or
    one this process cannot judge), are left alone."""
    found: list[Leftover] = []
    base = Path(root or tempfile.gettempdir())
    try:
        candidates = sorted(base.glob(WORKDIR_PREFIX + "*"))
    except OSError:
        return found
    for path in candidates:
        info = _read(path)
        if info is None or not isinstance(info.get("owner"), str):
            continue
        if alive(info["owner"]) is not False:
            continue
        killed = 0
        for group in info.get("groups") or []:
            with contextlib.suppress(TypeError, ValueError, KeyError):
                killed += kill_group(int(group["pgid"]), int(group["start"]))
        remove_workdir(path)
        found.append(
            Leftover("workdir", str(path), str(info.get("image", "")), info["owner"], killed)
        )
    return found


def kill_group(pgid: int, started: int) -> bool:
    """SIGKILL process group ``pgid`` if it is the one whose leader started at
    ``started`` (clock ticks). Linux reuses no pid that still names a group,
    so a member that started no earlier than the recorded leader is in the
    recorded group; a group id reused later has only younger members too,
    but then its leader (``pgid``) started later than recorded. True when
    something was killed."""
    if pgid <= 1 or started < 0:
        return False
    leader_start = owners.start_time(pgid)
    if leader_start not in (-1, started):
        return False  # the id leads another group now
    members = [
        pid
        for pid in _pids()
        if owners.process_group(pid) == pgid and owners.start_time(pid) >= started
    ]
    if not members:
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _read(workdir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((workdir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(workdir: Path, info: dict[str, Any]) -> None:
    tmp = workdir / (OWNER_FILE + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(workdir / OWNER_FILE)


# --- processes that die with the service ---------------------------------------


def deathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the service dies
    (``prctl(PR_SET_PDEATHSIG)``; it survives ``exec`` of a binary without
    set-uid or capabilities). Resolved here, in the parent, so the child only
    makes one call between fork and exec. None where prctl is unavailable."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:
            # The service died between fork and prctl: nothing would kill us.
            os._exit(137)

    return preexec


# --- sandbox containers -----------------------------------------------------------


def container_labels(role: str, image: str, build: str) -> dict[str, str]:
    return {
        ROLE_LABEL: role,
        IMAGE_LABEL: image,
        BUILD_LABEL: build,
        OWNER_LABEL: owners.current(),
    }


def sweep_containers(client: Any, role: str, alive: Alive = owners.alive) -> list[Leftover]:
    """Remove (killing them first) the containers of ``role`` whose owner is
    dead. Blocking: run it in a thread."""
    import docker.errors

    found: list[Leftover] = []
    containers = client.api.containers(all=True, filters={"label": f"{ROLE_LABEL}={role}"})
    for item in containers:
        labels = item.get("Labels") or {}
        owner = labels.get(OWNER_LABEL)
        if not owner or alive(owner) is not False:
            continue
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(item["Id"], force=True, v=True)
        names = item.get("Names") or [item["Id"][:12]]
        found.append(Leftover("container", names[0].lstrip("/"), labels.get(IMAGE_LABEL, ""), owner))
    return found
