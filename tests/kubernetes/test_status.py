"""Reading pod status as data: outcomes, failure reasons, timestamps."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from binderbuild import k8s_status as st


def pod(phase="Running", *, state=None, reason=None, message=None, conditions=None, spec=None):
    status: dict = {"phase": phase}
    if state is not None:
        status["containerStatuses"] = [{"name": "builder", "state": state}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if conditions:
        status["conditions"] = conditions
    return {
        "metadata": {"name": "build-x", "uid": "u1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec
        or {
            "activeDeadlineSeconds": 3600,
            "containers": [
                {
                    "name": "builder",
                    "image": "reg/builder:1",
                    "resources": {"limits": {"memory": "2Gi"}},
                }
            ],
        },
        "status": status,
    }


def waiting(reason: str, message: str | None = None) -> dict:
    """A pending pod whose builder container waits for `reason`."""
    state: dict = {"reason": reason}
    if message is not None:
        state["message"] = message
    return pod("Pending", state={"waiting": state})


def test_outcome_from_phase_or_container():
    assert st.outcome(pod("Pending")) is None
    assert st.outcome(pod("Running", state={"running": {}})) is None
    assert st.outcome(pod("Succeeded")) is True
    assert st.outcome(pod("Failed")) is False
    # The container's exit is known a moment before the phase changes.
    assert st.outcome(pod("Running", state={"terminated": {"exitCode": 0}})) is True
    assert st.outcome(pod("Running", state={"terminated": {"exitCode": 2}})) is False


def test_oom_killed():
    p = pod("Failed", state={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    assert st.failure_reason(p) == "The build ran out of memory (limit 2Gi)."


def test_evicted():
    p = pod("Failed", reason="Evicted", message="The node was low on resource: ephemeral-storage.")
    assert st.failure_reason(p) == (
        "The build pod was evicted: The node was low on resource: ephemeral-storage."
    )


def test_deadline_exceeded():
    p = pod(
        "Failed", reason="DeadlineExceeded", message="Pod was active on the node longer than..."
    )
    assert (
        st.failure_reason(p)
        == "The build pod exceeded its deadline of 3600 seconds and was stopped."
    )


def test_exit_code():
    p = pod("Failed", state={"terminated": {"exitCode": 1, "reason": "Error"}})
    assert st.failure_reason(p) == "The build exited with code 1."
    q = pod(
        "Failed",
        state={"terminated": {"exitCode": 143, "reason": "ContainerCannotRun", "message": "boom"}},
    )
    assert st.failure_reason(q) == "The build exited with code 143 (ContainerCannotRun): boom"


def test_image_pull_failures_are_fatal_while_pending():
    backoff = waiting("ImagePullBackOff", 'Back-off pulling image "reg/builder:1"')
    assert st.pending_problem(backoff) == (
        'Cannot pull the builder image reg/builder:1 (ImagePullBackOff): Back-off pulling image "reg/builder:1"'
    )
    assert st.failure_reason(backoff).startswith("Cannot pull the builder image reg/builder:1")
    # The first failed pull may be transient: not fatal yet.
    first = waiting("ErrImagePull")
    assert st.pending_problem(first) is None
    creating = waiting("ContainerCreating")
    assert st.pending_problem(creating) is None


def test_missing_secret_is_fatal():
    p = waiting("CreateContainerConfigError", 'secret "push" not found')
    assert st.pending_problem(p) == (
        'The build pod cannot start (CreateContainerConfigError): secret "push" not found'
    )


@pytest.mark.parametrize(
    "reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"]
)
def test_pull_errors_once_past_their_grace_name_the_image(reason):
    p = waiting(reason, "manifest unknown")
    assert st.pending_problem(p, pull_errors=True) == (
        f"Cannot pull the builder image reg/builder:1 ({reason}): manifest unknown"
    )
    assert st.is_pull_error(p) is (reason == "ErrImagePull")


def test_config_errors_are_fatal_at_once():
    p = waiting("CreateContainerConfigError", 'secret "push" not found')
    assert st.pending_problem(p) is not None
    assert st.pending_problem(waiting("InvalidImageName", "bad")) is not None


def test_pending_timeout_reason_carries_the_schedulers_words():
    unschedulable = pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
            }
        ],
    )
    assert st.pending_timeout_reason(unschedulable, 300) == (
        "The build pod was not scheduled within 300 seconds: "
        "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    )
    pulling = waiting("ContainerCreating", "pulling image")
    pulling["spec"]["nodeName"] = "node-2"
    assert st.pending_timeout_reason(pulling, 300) == (
        "The build pod did not start within 300 seconds on node node-2 "
        "(ContainerCreating: pulling image)."
    )
    assert st.pending_timeout_reason(pod("Pending"), 0.5) == (
        "The build pod was not scheduled within 0.5 seconds."
    )


def test_pending_messages():
    unschedulable = pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient memory.",
            }
        ],
    )
    assert st.pending_message(unschedulable) == (
        "Waiting for a node to run the build: 0/3 nodes are available: 3 Insufficient memory."
    )
    fresh = pod("Pending")
    assert st.pending_message(fresh) == "Build pod created; waiting for it to be scheduled."
    scheduled = pod("Pending", spec={"nodeName": "node-2", "containers": []})
    assert st.pending_message(scheduled) == "Build pod scheduled on node-2; starting the builder."


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-22T00:51:00Z", (1795308660, 0)),
        ("2026-11-22T00:51:00.5Z", (1795308660, 500_000_000)),
        ("2026-11-22T00:51:00.123456789Z", (1795308660, 123_456_789)),
        ("2026-11-22T01:51:00.000000001+01:00", (1795308660, 1)),
    ],
)
def test_parse_timestamp_keeps_nanoseconds(text, expected):
    assert st.parse_timestamp(text) == expected


def test_timestamps_order_correctly_whatever_their_width():
    # RFC3339Nano trims zeros, so string order is wrong ("00.1Z" > "00.12Z").
    a = st.parse_timestamp("2026-11-22T00:51:00.1Z")
    b = st.parse_timestamp("2026-11-22T00:51:00.12Z")
    assert a is not None and b is not None and a < b


def test_parse_timestamp_rejects_garbage():
    assert st.parse_timestamp("not a time") is None
    assert st.parse_timestamp("2026-11-22 00:51:00") is None


def test_finished_at_and_created_at():
    p = pod("Failed", state={"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:10:00Z"}})
    assert st.created_at(p) == datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    assert st.finished_at(p) == datetime(2026, 1, 1, 0, 10, tzinfo=UTC).timestamp()
    # Failed without running (evicted while pending): fall back to creation.
    evicted = pod("Failed", reason="Evicted")
    assert st.finished_at(evicted) == st.created_at(evicted)
