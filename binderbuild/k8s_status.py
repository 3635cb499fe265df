"""Read Kubernetes pod objects (plain JSON dicts, camelCase keys) as data.

Pure functions, no I/O: what phase a build pod is in, whether it has
started, why it failed, and when things happened. The builder decides what
to do; these only say what the status means. Pods are the JSON the API
returns (``metadata``/``spec``/``status``), never client model objects, so
tests can write them as literals.

Failure reasons a user or operator can act on are spelled out here, because
the raw status is spread over several places: ``status.reason`` (Evicted,
DeadlineExceeded), the container's ``state.terminated`` (OOMKilled, exit
code) and, while pending, the container's ``state.waiting`` (image pull and
configuration errors) or the ``PodScheduled`` condition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

Pod = Mapping[str, Any]

SUCCEEDED = "Succeeded"
FAILED = "Failed"
RUNNING = "Running"
PENDING = "Pending"

# Waiting reasons that will not fix themselves while a user waits: the
# builder image cannot be pulled or the pod references something missing
# (usually the push Secret).
FATAL_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
# A failed pull. Often final (no such image, no access), sometimes a registry
# hiccup that the next attempt survives; the kubelet alternates it with
# ImagePullBackOff while it retries. The builder treats it as fatal once it
# has lasted a short grace (``pending_problem(..., pull_errors=True)``).
PULL_ERROR = "ErrImagePull"
IMAGE_PULL_REASONS = frozenset(
    {"ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", PULL_ERROR}
)

# RFC 3339 as the API server and kubelet write it: optional fraction of up
# to nine digits (RFC3339Nano trims trailing zeros, so the width varies).
_TIMESTAMP = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})"
)


def meta(pod: Pod) -> Mapping[str, Any]:
    return pod.get("metadata") or {}


def name(pod: Pod) -> str:
    return str(meta(pod).get("name", ""))


def uid(pod: Pod) -> str:
    return str(meta(pod).get("uid", ""))


def phase(pod: Pod) -> str:
    return str((pod.get("status") or {}).get("phase") or PENDING)


def is_finished(pod: Pod) -> bool:
    """The pod will never run again (``restartPolicy: Never``)."""
    return phase(pod) in (SUCCEEDED, FAILED)


def is_terminating(pod: Pod) -> bool:
    return bool(meta(pod).get("deletionTimestamp"))


def container_status(pod: Pod, container: str | None = None) -> Mapping[str, Any]:
    """Status of the named container (default: the first one), or {}."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    status: Mapping[str, Any]
    for status in statuses:
        if container is None or status.get("name") == container:
            return status
    return {}


def container_terminated(pod: Pod, container: str | None = None) -> Mapping[str, Any] | None:
    state = container_status(pod, container).get("state") or {}
    return state.get("terminated")


def has_started(pod: Pod, container: str | None = None) -> bool:
    """The container runs or ran, so its log can be read."""
    if is_finished(pod):
        return True
    state = container_status(pod, container).get("state") or {}
    return "running" in state or "terminated" in state


def outcome(pod: Pod, container: str | None = None) -> bool | None:
    """True: the build succeeded; False: it failed; None: not finished yet.

    The container's terminated state is read as well as the phase: the
    kubelet reports the container's exit a moment before the pod phase.
    """
    current = phase(pod)
    if current == SUCCEEDED:
        return True
    if current == FAILED:
        return False
    terminated = container_terminated(pod, container)
    if terminated is not None:
        return terminated.get("exitCode") == 0
    return None


def failure_reason(pod: Pod, container: str | None = None) -> str:
    """Why a finished (or fatally pending) build pod failed, in words."""
    status = pod.get("status") or {}
    reason = status.get("reason") or ""
    message = (status.get("message") or "").strip()
    if reason == "Evicted":
        return "The build pod was evicted" + (f": {message}" if message else ".")
    if reason == "DeadlineExceeded":
        deadline = (pod.get("spec") or {}).get("activeDeadlineSeconds")
        limit = f" of {deadline} seconds" if deadline else ""
        return f"The build pod exceeded its deadline{limit} and was stopped."
    terminated = container_terminated(pod, container)
    if terminated is not None:
        term_reason = terminated.get("reason") or ""
        code = terminated.get("exitCode")
        if term_reason == "OOMKilled":
            limit = _memory_limit(pod, container)
            return "The build ran out of memory" + (f" (limit {limit})." if limit else ".")
        text = f"The build exited with code {code}"
        if term_reason and term_reason not in ("Error", "Completed"):
            text += f" ({term_reason})"
        term_message = (terminated.get("message") or "").strip()
        return text + (f": {term_message}" if term_message else ".")
    problem = pending_problem(pod, container)
    if problem is not None:
        return problem
    if reason or message:
        return f"The build pod failed: {reason}" + (f": {message}" if message else "")
    return f"The build pod ended in phase {phase(pod)}."


def waiting_reason(pod: Pod, container: str | None = None) -> str:
    state = container_status(pod, container).get("state") or {}
    return str((state.get("waiting") or {}).get("reason") or "")


def is_pull_error(pod: Pod, container: str | None = None) -> bool:
    """The container waits after a failed pull that may or may not be final."""
    return waiting_reason(pod, container) == PULL_ERROR


def pending_problem(
    pod: Pod, container: str | None = None, *, pull_errors: bool = False
) -> str | None:
    """A reason when a not-yet-started pod can never start on its own.

    ``pull_errors``: count ``ErrImagePull`` as fatal too (the caller has seen
    it last long enough)."""
    state = container_status(pod, container).get("state") or {}
    waiting = state.get("waiting") or {}
    reason = waiting.get("reason") or ""
    if reason not in FATAL_WAITING_REASONS and not (pull_errors and reason == PULL_ERROR):
        return None
    message = (waiting.get("message") or "").strip()
    if reason in IMAGE_PULL_REASONS:
        image = _container_image(pod, container)
        text = (
            f"Cannot pull the builder image {image}" if image else "Cannot pull the builder image"
        )
        return text + f" ({reason})" + (f": {message}" if message else ".")
    return f"The build pod cannot start ({reason})" + (f": {message}" if message else ".")


def pending_message(pod: Pod) -> str:
    """What a waiting user is told while the pod has not started."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            why = (condition.get("message") or condition.get("reason") or "").strip()
            return "Waiting for a node to run the build" + (f": {why}" if why else ".")
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        return f"Build pod scheduled on {node}; starting the builder."
    return "Build pod created; waiting for it to be scheduled."


def unschedulable_reason(pod: Pod) -> str:
    """The scheduler's words when it cannot place the pod, e.g.
    "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."; "" otherwise."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            reason = str(condition.get("reason") or "").strip()
            message = str(condition.get("message") or "").strip()
            return ": ".join(part for part in (reason, message) if part)
    return ""


def pending_timeout_reason(pod: Pod, seconds: float, container: str | None = None) -> str:
    """Why a pod still pending at its deadline failed, with what held it up."""
    limit = f"{seconds:g} seconds"
    node = (pod.get("spec") or {}).get("nodeName")
    if not node:
        why = unschedulable_reason(pod)
        return f"The build pod was not scheduled within {limit}" + (f": {why}" if why else ".")
    state = container_status(pod, container).get("state") or {}
    waiting = state.get("waiting") or {}
    reason = str(waiting.get("reason") or "").strip()
    message = str(waiting.get("message") or "").strip()
    detail = ": ".join(part for part in (reason, message) if part)
    return f"The build pod did not start within {limit} on node {node}" + (
        f" ({detail})." if detail else "."
    )


def parse_timestamp(text: str) -> tuple[int, int] | None:
    """RFC 3339 -> (epoch seconds, nanoseconds), exact to the nanosecond.

    Kept as integers (not a float or datetime, which stop at microseconds):
    log lines are told apart by their kubelet timestamp when a log stream is
    resumed.
    """
    match = _TIMESTAMP.fullmatch(text.strip())
    if match is None:
        return None
    tz = match.group("tz")
    base = datetime.strptime(match.group("base"), "%Y-%m-%dT%H:%M:%S")
    if tz == "Z":
        stamp = base.replace(tzinfo=UTC)
    else:
        stamp = datetime.fromisoformat(match.group("base") + tz)
    nanos = int((match.group("frac") or "0").ljust(9, "0"))
    return int(stamp.timestamp()), nanos


def timestamp_seconds(text: str | None) -> float | None:
    if not text:
        return None
    parsed = parse_timestamp(text)
    if parsed is None:
        return None
    return parsed[0] + parsed[1] / 1e9


def created_at(pod: Pod) -> float | None:
    return timestamp_seconds(meta(pod).get("creationTimestamp"))


def finished_at(pod: Pod, container: str | None = None) -> float | None:
    """When the build container ended (falls back to the pod's start time for
    pods that failed without running, e.g. evicted while pending)."""
    terminated = container_terminated(pod, container)
    if terminated is not None:
        when = timestamp_seconds(terminated.get("finishedAt"))
        if when is not None:
            return when
    status = pod.get("status") or {}
    return timestamp_seconds(status.get("startTime")) or created_at(pod)


def _container_spec(pod: Pod, container: str | None) -> Mapping[str, Any]:
    spec: Mapping[str, Any]
    for spec in (pod.get("spec") or {}).get("containers") or []:
        if container is None or spec.get("name") == container:
            return spec
    return {}


def _container_image(pod: Pod, container: str | None) -> str:
    return str(_container_spec(pod, container).get("image") or "")


def _memory_limit(pod: Pod, container: str | None) -> str:
    resources = _container_spec(pod, container).get("resources") or {}
    return str((resources.get("limits") or {}).get("memory") or "")
