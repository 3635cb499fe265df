"""What a first real-cluster run throws at the Kubernetes backend (issue 18):
half-open log streams, pods that never get a node, image pulls that fail,
followers that cancel, and build pods left behind by a replica that died."""

from __future__ import annotations

import asyncio
import json
import time

from binderbuild.builders import pod_manifests as pm
from binderbuild.builds import BuildState
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import Phase
from tests.kubernetes.conftest import make_builder, make_job
from tests.kubernetes.fake_k8s import FakeCoreV1Api, rfc3339
from tests.kubernetes.test_builder import (
    NS,
    PodBuild,
    begin,
    leftover,
    managed,
    start_pod,
    submitted,
    until,
    with_builder,
)

# --- 1. half-open log streams: the verdict comes from the watch -------------------


def plain_lines(build: PodBuild) -> list[str]:
    return [e.message for e in build.events if e.phase is Phase.UNKNOWN]


def test_log_requests_carry_a_read_timeout(api):
    async def body(builder):
        b = await begin(api, builder)
        await b.succeeded()
        for call in api.calls_to("read_namespaced_pod_log"):
            connect, read = call.kwargs["_request_timeout"]
            assert read == 42.0, "a log read must not wait forever"

    with_builder(api, body, log_read_timeout=42.0)


def test_stalled_log_of_a_failed_build_ends_promptly_with_its_verdict(api):
    """The log stream goes silent without closing; the pod watch says the
    container exited 1. The build ends at once (not after the idle timeout),
    as a failure with repo2docker's own message, read from the rest of the
    log, and without repeating a line."""

    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "before the stall")
        await until(lambda: "before the stall\n" in b.messages)
        assert api.stall_logs(b.name) == 1
        api.log(b.name, "after the stall")
        api.log_json(b.name, "failed", "The command '/bin/sh -c false' returned 1\n")
        started = time.monotonic()
        api.finish(b.name, 1)
        reason = await b.failed(BuildFailed, timeout=5)
        assert time.monotonic() - started < 4
        assert reason == "The build exited with code 1: The command '/bin/sh -c false' returned 1"
        assert plain_lines(b) == ["before the stall\n", "after the stall\n"]
        # The creator removed its finished pod.
        assert (NS, b.name) not in api.pods
        # The rest came from one read that does not follow.
        last = api.calls_to("read_namespaced_pod_log")[-1]
        assert last.kwargs["follow"] is False

    # A long read timeout: the watch, not the timeout, must end this build.
    with_builder(api, body, log_read_timeout=600.0)


def test_stalled_log_of_a_successful_build_ends_promptly(api):
    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "one")
        await until(lambda: "one\n" in b.messages)
        api.stall_logs(b.name)
        api.log(b.name, "two")
        api.finish(b.name, 0)
        await b.ended_well(timeout=5)
        assert plain_lines(b) == ["one\n", "two\n"]

    with_builder(api, body, log_read_timeout=600.0)


def test_read_timeout_after_the_container_ended_still_completes_the_log(api):
    """The read timeout fires first, after the container has ended: the lines
    the half-open stream never delivered still arrive, from one last read."""

    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "early")
        await until(lambda: "early\n" in b.messages)
        api.stall_logs(b.name)
        api.log(b.name, "late")
        api.finish(b.name, 0)
        await b.ended_well(timeout=5)
        assert plain_lines(b) == ["early\n", "late\n"]

    with_builder(api, body, log_read_timeout=0.2, log_end_grace=2.0)


def test_stalled_log_of_a_running_build_is_resumed(api):
    """Silent but not closed while the container runs: after the read timeout
    the log is requested again from the last line seen, so lines written in
    the meantime arrive, once each."""

    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "a1")
        await until(lambda: "a1\n" in b.messages)
        api.stall_logs(b.name)
        api.log(b.name, "a2")  # only a new request can see it
        await until(lambda: "a2\n" in b.messages, timeout=5, what="resumed log")
        api.log(b.name, "a3")
        api.finish(b.name, 0)
        await b.ended_well(timeout=5)
        assert plain_lines(b) == ["a1\n", "a2\n", "a3\n"]
        resumed = api.calls_to("read_namespaced_pod_log")[1]
        assert resumed.kwargs["since_seconds"] >= 1

    with_builder(api, body, log_read_timeout=0.3)


def test_a_long_silent_build_step_is_not_a_lost_log(api):
    """Read timeouts on a healthy, merely quiet stream are not failures: they
    never exhaust log_resume_attempts."""

    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "RUN make  # quiet for a while")
        await asyncio.sleep(1.0)  # ten read timeouts
        api.log(b.name, "done")
        api.finish(b.name, 0)
        await b.ended_well(timeout=5)
        assert plain_lines(b)[-1] == "done\n"

    with_builder(api, body, log_read_timeout=0.1, log_resume_attempts=2, log_end_grace=0.05)


# --- 2. pods that never start -----------------------------------------------------


def test_unschedulable_pod_fails_at_the_pending_deadline_with_the_schedulers_reason(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.unschedulable(b.name, "0/3 nodes are available: 3 Insufficient memory.")
        reason = await b.failed(BuildBackendError, timeout=5)
        assert "within 1.5 seconds" in reason
        assert "Unschedulable: 0/3 nodes are available: 3 Insufficient memory." in reason
        # A pod that can never start is removed.
        assert (NS, b.name) not in api.pods

    with_builder(api, body, pending_timeout=1.5)


def test_pending_deadline_counts_from_the_pods_creation(api):
    """A replica attaching to a pod that has been pending for ten minutes does
    not give it another five."""
    job = make_job()
    pod = leftover(job, "Pending")
    pod["metadata"]["creationTimestamp"] = rfc3339(time.time() - 600)
    api.add_pod(pod)
    api.unschedulable(job.image.build_name, "0/2 nodes are available: 2 node(s) had taint.")

    async def body(builder):
        b = PodBuild(api, builder, job)
        reason = await b.failed(BuildBackendError, timeout=3)
        assert "2 node(s) had taint" in reason
        assert api.created_uids == []

    with_builder(api, body, pending_timeout=300)


def test_err_image_pull_is_fatal_after_a_short_grace(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.schedule(b.name)
        api.waiting(
            b.name,
            "ErrImagePull",
            'failed to pull "registry.example.org/binderbuild-builder:test": not found',
        )
        reason = await b.failed(BuildBackendError, timeout=5)
        assert reason.startswith(
            "Cannot pull the builder image registry.example.org/binderbuild-builder:test "
            "(ErrImagePull)"
        )
        assert "not found" in reason
        assert (NS, b.name) not in api.pods

    with_builder(api, body, image_pull_error_grace=0.2)


def test_err_image_pull_that_recovers_is_not_fatal(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.schedule(b.name)
        api.waiting(b.name, "ErrImagePull", "i/o timeout")
        await asyncio.sleep(0.05)
        await start_pod(api, b.name)  # the next pull worked
        await asyncio.sleep(0.4)  # past the grace
        await b.succeeded()

    with_builder(api, body, image_pull_error_grace=0.2)


# --- 5. owners, followers and orphans ---------------------------------------------


def test_a_follower_that_cancels_leaves_the_owners_pod_alone(api):
    async def body(owner):
        follower = make_builder(api)
        try:
            a = await begin(api, owner)
            b = PodBuild(api, follower, a.job)
            await until(lambda: len(api.log_streams) == 2, what="second reader")
            b.collector.task.cancel()
            await asyncio.gather(b.collector.task, return_exceptions=True)
            await asyncio.sleep(0.1)
            assert (NS, a.name) in api.pods, "a follower must not delete the owner's build"
            assert not api.calls_to("delete_namespaced_pod")
            api.log(a.name, "still building")
            await a.succeeded()
            assert "still building\n" in a.messages
        finally:
            await follower.close()

    with_builder(api, body)


def test_a_follower_manager_that_cancels_leaves_the_owners_pod_alone(api):
    """Through BuildManager, as the app does when its clients leave."""

    async def body(owner):
        follower = make_builder(api)
        manager = managed(follower)
        try:
            a = await begin(api, owner)
            build, _ = manager.submit(a.job)
            await until(lambda: len(api.log_streams) == 2, what="second reader")
            await manager.cancel(build.id)
            assert build.state is BuildState.CANCELLED
            assert (NS, a.name) in api.pods
            await a.succeeded()
        finally:
            await manager.close()
            await follower.close()

    with_builder(api, body)


def test_the_owner_still_deletes_its_pod_when_cancelled(api):
    async def body(builder):
        manager = managed(builder)
        build, job = await submitted(api, manager)
        await start_pod(api, job.image.build_name)
        await manager.cancel(build.id)
        assert (NS, job.image.build_name) not in api.pods
        await manager.close()

    with_builder(api, body)


def test_pods_name_their_owner(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        owner = api.pod(b.name)["metadata"]["annotations"][pm.ANNOTATION_OWNER]
        assert owner == f"ns/bb-replica-1/{builder.instance_id}"
        await start_pod(api, b.name)
        await b.succeeded()

    with_builder(api, body, replica_name="bb-replica-1")


def orphan(api: FakeCoreV1Api, repo: str, phase: str, owner: str) -> str:
    job = make_job(repo=repo)
    pod = leftover(job, phase)
    pod["metadata"]["annotations"][pm.ANNOTATION_OWNER] = owner
    api.add_pod(pod)
    return job.image.build_name


def service_pod(api: FakeCoreV1Api, name: str) -> None:
    api.add_pod({"metadata": {"name": name, "labels": {"app": "svc"}}, "spec": {}})


ADOPT = {"adopt_orphaned_pods": True, "replica_name": "new-replica"}


def test_startup_adopts_a_running_pod_whose_owner_is_gone(api):
    name = orphan(api, "https://git.example.org/a/orphan", "Pending", "ns/dead-replica/abc")
    api.start(name)
    api.log_json(name, "building", "Step 1/2\n")

    async def body(builder):
        await builder.start()
        # Adopted by the start-up sweep: its log is followed, nobody asked.
        await until(lambda: len(api.log_streams) == 1, what="adopted log reader")
        assert name in builder.adopting
        # A request for the same image joins the adopted pod.
        job = make_job(repo="https://git.example.org/a/orphan")
        b = PodBuild(api, builder, job)
        await until(lambda: len(api.log_streams) == 2, what="joined")
        api.finish(name, 0)
        await b.ended_well()
        assert api.created_uids == []
        # The adopter, now its owner, reads the verdict and removes the pod.
        await until(lambda: (NS, name) not in api.pods, what="adopted pod deleted")
        await until(lambda: name in builder.adopted)
        assert builder.adopted[name].outcome == "succeeded"
        assert name not in builder.adopting

    with_builder(api, body, **ADOPT)


def test_startup_reads_the_verdict_of_finished_orphans_and_deletes_them(api):
    name = orphan(api, "https://git.example.org/a/failed", "Pending", "ns/dead-replica/abc")
    api.start(name)
    api.log_json(name, "failed", "The command 'make' returned a non-zero code: 2\n")
    api.finish(name, 1)

    async def body(builder):
        await builder.start()
        await until(lambda: name in builder.adopted, what="verdict")
        adopted = builder.adopted[name]
        assert adopted.outcome == "failed"
        assert "The command 'make' returned a non-zero code: 2" in adopted.reason
        assert adopted.image == make_job(repo="https://git.example.org/a/failed").image.name
        assert (NS, name) not in api.pods

    with_builder(api, body, **ADOPT)


def test_pods_of_a_live_replica_are_not_adopted(api):
    service_pod(api, "live-replica")
    name = orphan(api, "https://git.example.org/a/live", "Pending", "ns/live-replica/abc")
    api.start(name)

    async def body(builder):
        await builder.start()
        assert await builder.adopt_orphans() == []
        await asyncio.sleep(0.1)
        assert not api.log_streams
        assert not builder.adopting
        assert (NS, name) in api.pods

    with_builder(api, body, **ADOPT)


def test_pods_of_this_replicas_previous_process_are_adopted(api):
    """The container restarted in the same pod: same pod name, new process."""
    service_pod(api, "same-replica")
    name = orphan(api, "https://git.example.org/a/mine", "Pending", "ns/same-replica/oldproc")
    api.start(name)

    async def body(builder):
        await builder.start()
        await until(lambda: name in builder.adopting, what="adopted")
        api.finish(name, 0)
        await until(lambda: name in builder.adopted)

    with_builder(api, body, adopt_orphaned_pods=True, replica_name="same-replica")


def test_adoption_happens_in_the_periodic_sweep_too(api):
    """A rolling update: the old replica still existed at start-up and is gone
    at the next sweep."""
    service_pod(api, "old-replica")
    name = orphan(api, "https://git.example.org/a/later", "Pending", "ns/old-replica/abc")
    api.start(name)

    async def body(builder):
        await builder.start()
        await asyncio.sleep(0.05)
        assert not builder.adopting
        api.remove("old-replica")
        assert await builder.adopt_orphans() == [name]
        await until(lambda: name in builder.adopting)
        api.finish(name, 0)
        await until(lambda: (NS, name) not in api.pods)

    with_builder(api, body, **ADOPT)


def test_shutdown_leaves_adopted_pods_running(api):
    name = orphan(api, "https://git.example.org/a/kept", "Pending", "ns/dead-replica/abc")
    api.start(name)

    async def body(builder):
        await builder.start()
        await until(lambda: name in builder.adopting)
        await builder.begin_shutdown()
        await builder.close()
        assert (NS, name) in api.pods
        assert not api.calls_to("delete_namespaced_pod")

    with_builder(api, body, **ADOPT)


def test_adopted_outcomes_are_reported(api):
    name = orphan(api, "https://git.example.org/a/hook", "Pending", "")
    api.start(name)
    api.finish(name, 0)
    seen: list[str] = []

    async def body(builder):
        builder.on_adopted.append(lambda adopted: seen.append(json.dumps(adopted.as_dict())))
        await builder.start()
        await until(lambda: bool(seen), what="hook called")
        assert json.loads(seen[0])["outcome"] == "succeeded"
        assert json.loads(seen[0])["name"] == name

    with_builder(api, body, **ADOPT)
