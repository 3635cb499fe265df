"""KubernetesBuilder against an in-memory API: create or attach, watch, logs,
outcome, cleanup, re-attachment. The fake plays the cluster and its kubelet."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points
from typing import Any

import pytest
from traitlets.config import Config

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.base import BuildResources
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.builds import Build, BuildManager, BuildState
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import Phase
from binderbuild.models import BuildJob
from tests.kubernetes.conftest import SECRET, Collector, make_builder, make_job, run, until
from tests.kubernetes.fake_k8s import FakeCoreV1Api, rfc3339

NS = "ns"


def build_pod_exists(api: FakeCoreV1Api, name: str):
    return lambda: (NS, name) in api.pods


async def watched(builder: KubernetesBuilder, name: str) -> None:
    """Wait until the builder's watch has seen the pod's latest state."""
    await until(lambda: builder.watcher is not None and builder.watcher.get(name) is not None)


async def pod_created(api: FakeCoreV1Api, name: str) -> None:
    await until(build_pod_exists(api, name), what="pod created")


async def start_pod(api: FakeCoreV1Api, name: str) -> None:
    """Let the fake kubelet start the build container, then wait until the
    builder follows its log (nothing logged before that would be lost)."""
    api.start(name)
    await until(lambda: api.log_streams, what="log followed")


def with_builder(
    api: FakeCoreV1Api, body: Callable[[KubernetesBuilder], Awaitable[None]], **traits: Any
) -> None:
    """Run one test body against a fresh builder, and close the builder after
    it so its watch and sweeper tasks end inside the test's event loop."""

    async def main() -> None:
        builder = make_builder(api, **traits)
        try:
            await body(builder)
        finally:
            await builder.close()

    run(main())


class PodBuild:
    """One build of `job` on a builder, consumed by a Collector, with the
    outcome checks the tests share."""

    def __init__(self, api: FakeCoreV1Api, builder: KubernetesBuilder, job: BuildJob) -> None:
        self.api = api
        self.job = job
        self.name = job.image.build_name
        self.collector = Collector(builder.build(job))

    @property
    def events(self):
        return self.collector.events

    @property
    def messages(self) -> list[str]:
        return self.collector.messages

    async def ended_well(self, timeout: float = 5.0) -> None:
        """Wait for the build to end; it must end without error."""
        await self.collector.done(timeout=timeout)
        assert self.collector.error is None

    async def succeeded(self) -> None:
        """Finish the pod with exit code 0; the build must end without error."""
        self.api.finish(self.name, 0)
        await self.ended_well()

    async def failed(self, kind: type[Exception], timeout: float = 5.0) -> str:
        """Wait for the build to end with an error of `kind`; its message."""
        await self.collector.done(timeout=timeout)
        assert isinstance(self.collector.error, kind)
        return str(self.collector.error)


async def begin(
    api: FakeCoreV1Api,
    builder: KubernetesBuilder,
    job: BuildJob | None = None,
    *,
    start: bool = True,
) -> PodBuild:
    """Start a build and wait for its pod; by default also start the pod and
    wait until its log is followed: the arrange steps most tests share."""
    build = PodBuild(api, builder, job or make_job())
    await pod_created(api, build.name)
    if start:
        await start_pod(api, build.name)
    return build


def test_entry_point_names_the_kubernetes_builder():
    (ep,) = [ep for ep in entry_points(group="binderbuild.builders") if ep.name == "kubernetes"]
    assert ep.load() is KubernetesBuilder


def test_successful_build_streams_events_and_removes_its_pod(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.schedule(b.name)
        await start_pod(api, b.name)
        api.log_json(b.name, "fetching", "Cloning repository...\n")
        api.log_json(b.name, "building", "Step 1/3 : FROM base\n")
        api.log_json(
            b.name, "pushing", "Pushing image\n", progress={"layer1": {"current": 1, "total": 2}}
        )
        await b.succeeded()
        phases = [e.phase for e in b.events]
        assert phases[0] is Phase.WAITING
        assert [e.phase for e in b.events if e.phase is not Phase.WAITING] == [
            Phase.FETCHING,
            Phase.BUILDING,
            Phase.PUSHING,
        ]
        assert "Cloning repository...\n" in b.messages
        pushing = next(e for e in b.events if e.phase is Phase.PUSHING)
        assert pushing.fields["progress"] == {"layer1": {"current": 1, "total": 2}}
        # Its creator deletes the finished pod, with a uid precondition.
        assert (NS, b.name) not in api.pods
        (delete,) = api.calls_to("delete_namespaced_pod")
        assert delete.kwargs["body"]["preconditions"]["uid"] == api.created_uids[0]
        # The pod created is the pure manifest (plus what the server adds).
        (create,) = api.calls_to("create_namespaced_pod")
        assert create.args[1] == pm.build_pod_manifest(b.job, builder.pod_config())

    with_builder(api, body)


def test_pending_state_becomes_waiting_events(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.unschedulable(b.name, "0/3 nodes are available: 3 Insufficient cpu.")
        await until(lambda: any("Insufficient cpu" in m for m in b.messages))
        api.unschedulable(
            b.name, "0/3 nodes are available: 3 Insufficient cpu."
        )  # same news: no repeat
        api.schedule(b.name, "node-2")
        await until(lambda: any("node-2" in m for m in b.messages))
        await start_pod(api, b.name)
        await b.succeeded()
        waiting = [e.message for e in b.events if e.phase is Phase.WAITING]
        assert sum("Insufficient cpu" in m for m in waiting) == 1

    with_builder(api, body)


@pytest.mark.parametrize(
    ("kill", "expected"),
    [
        (
            lambda api, n: api.finish(n, 137, reason="OOMKilled"),
            "The build ran out of memory (limit 2147483648).",
        ),
        (
            lambda api, n: api.fail_pod(n, "Evicted", "The node was low on resource: memory."),
            "evicted: The node was low on resource: memory.",
        ),
        (
            lambda api, n: api.fail_pod(n, "DeadlineExceeded", "Pod was active too long"),
            "exceeded its deadline of 7200 seconds",
        ),
    ],
    ids=["oom", "evicted", "deadline"],
)
def test_failure_reasons_from_pod_status(api, kill, expected):
    async def body(builder):
        b = await begin(api, builder)
        api.log_json(b.name, "building", "Step 2/3 : RUN make\n")
        kill(api, b.name)
        assert expected in await b.failed(BuildFailed)

    with_builder(api, body)


def test_repo2docker_failure_message_is_part_of_the_reason(api):
    async def body(builder):
        b = await begin(api, builder)
        api.log_json(b.name, "building", "Step 2/3 : RUN false\n")
        api.log_json(
            b.name, "failed", "The command '/bin/sh -c false' returned a non-zero code: 1\n"
        )
        api.finish(b.name, 1)
        assert await b.failed(BuildFailed) == (
            "The build exited with code 1: The command '/bin/sh -c false' returned a non-zero code: 1"
        )
        assert (NS, b.name) not in api.pods  # the creator cleans up failures too

    with_builder(api, body)


def test_unpullable_builder_image_fails_fast_and_removes_the_pod(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.schedule(b.name)
        api.waiting(b.name, "ErrImagePull", "pull access denied")  # may be transient
        await asyncio.sleep(0.05)
        assert not b.collector.task.done()
        api.waiting(
            b.name,
            "ImagePullBackOff",
            'Back-off pulling image "registry.example.org/binderbuild-builder:test"',
        )
        assert (
            "Cannot pull the builder image registry.example.org/binderbuild-builder:test"
            in await b.failed(BuildBackendError)
        )
        assert (NS, b.name) not in api.pods

    with_builder(api, body)


def test_log_lines_are_scrubbed(api):
    async def body(builder):
        b = await begin(api, builder)
        api.log_json(b.name, "building", f"token is {SECRET}\n")
        api.log(b.name, f"plain line with https://user:{SECRET}@git.example.org/x")
        await b.succeeded()
        text = json.dumps([e.payload() for e in b.events])
        assert SECRET not in text
        assert any(e.phase is Phase.UNKNOWN for e in b.events)

    with_builder(api, body)


def test_second_replica_attaches_instead_of_building_again(api):
    """Two replicas share the cluster; both get the build, one pod is made."""

    async def body(replica_a):
        replica_b = make_builder(api)
        a = await begin(api, replica_a)  # the first log reader
        for i in range(150):
            api.log_json(a.name, "building", f"line {i}\n")
        b = PodBuild(api, replica_b, a.job)
        await until(lambda: len(api.log_streams) == 2, what="second reader")
        api.log_json(a.name, "building", "after attach\n")
        api.finish(a.name, 0)
        await a.ended_well()
        await b.ended_well()
        assert len(api.calls_to("create_namespaced_pod")) == 2  # second got 409
        assert len(api.created_uids) == 1
        # The attached replica starts from the tail of the log.
        (log_b,) = [
            c for c in api.calls_to("read_namespaced_pod_log") if c.kwargs.get("tail_lines")
        ]
        assert log_b.kwargs["tail_lines"] == 100
        b_lines = [m for m in b.messages if m.startswith("line ")]
        assert b_lines == [f"line {i}\n" for i in range(50, 150)]
        assert "after attach\n" in a.messages and "after attach\n" in b.messages
        assert "already being built" in b.events[0].message
        # Only the creator deleted the pod.
        assert len(api.calls_to("delete_namespaced_pod")) == 1
        await replica_b.close()

    with_builder(api, body)


def test_one_watch_per_process_however_many_builds(api):
    async def body(builder):
        jobs = [make_job(repo=f"https://git.example.org/owner/repo{i}") for i in range(6)]
        builds = [PodBuild(api, builder, job) for job in jobs]
        for b in builds:
            await pod_created(api, b.name)
            api.start(b.name)
        await until(lambda: len(api.log_streams) == len(jobs))
        for b in builds:
            api.log_json(b.name, "building", f"building {b.name}\n")
            api.finish(b.name, 0)
        for b in builds:
            await b.ended_well()
        watches = api.calls_to("list_namespaced_pod", watch=True)
        assert len(watches) == 1
        assert watches[0].kwargs["label_selector"] == pm.build_selector("bb")
        # One log reader per build.
        assert len(api.calls_to("read_namespaced_pod_log")) == len(jobs)

    with_builder(api, body)


def managed(
    builder: KubernetesBuilder, concurrency: int = 2, idle_timeout: float = 30
) -> BuildManager:
    return BuildManager(
        builder, concurrency=concurrency, build_timeout=30, idle_timeout=idle_timeout
    )


async def submitted(api: FakeCoreV1Api, manager: BuildManager) -> tuple[Build, BuildJob]:
    """Submit the default job to a BuildManager and wait for its pod."""
    job = make_job()
    build, _ = manager.submit(job)
    await pod_created(api, job.image.build_name)
    return build, job


def test_build_manager_fans_one_pod_out_to_every_client(api):
    async def body(builder):
        manager = managed(builder, concurrency=4)
        job = make_job()
        name = job.image.build_name
        first, created = manager.submit(job)
        second, created_again = manager.submit(job)
        assert created and not created_again and first is second
        await pod_created(api, name)
        await start_pod(api, name)
        api.log_json(name, "building", "shared line\n")
        api.finish(name, 0)
        seen_by = []
        for _ in range(3):
            seen_by.append([ev.message async for _, ev in first.follow()])
        assert first.state is BuildState.SUCCEEDED
        assert all("shared line\n" in seen for seen in seen_by)
        assert len(api.calls_to("read_namespaced_pod_log")) == 1
        await manager.close()

    with_builder(api, body)


def test_restart_mid_build_reattaches_to_the_running_pod(api):
    """The service shuts down during a build; its pod keeps running; the
    restarted service re-attaches and finishes the build."""

    async def body(old):
        manager = managed(old)
        build, job = await submitted(api, manager)
        name = job.image.build_name
        await start_pod(api, name)
        api.log_json(name, "building", "before restart\n")
        await until(lambda: any(e.message == "before restart\n" for e in build.events))
        # Shutdown order of the app: tell the builder, cancel builds, close.
        await old.begin_shutdown()
        await manager.close()
        await old.close()
        assert (NS, name) in api.pods, "shutdown must leave the build pod running"
        assert not api.calls_to("delete_namespaced_pod")

        api.log_json(name, "building", "while nobody watched\n")
        new = make_builder(api)
        b = PodBuild(api, new, job)
        await until(lambda: len(api.log_streams) == 1, what="re-attached log reader")
        api.log_json(name, "pushing", "after restart\n")
        await b.succeeded()
        assert "while nobody watched\n" in b.messages  # from the log tail
        assert "after restart\n" in b.messages
        assert len(api.created_uids) == 1  # never rebuilt
        await new.close()

    with_builder(api, body)


def test_cancel_stops_the_build_pod(api):
    async def body(builder):
        manager = managed(builder)
        build, job = await submitted(api, manager)
        name = job.image.build_name
        await start_pod(api, name)
        await manager.cancel(build.id)
        assert build.state is BuildState.CANCELLED
        assert (NS, name) not in api.pods

    with_builder(api, body)


def test_timeout_stops_the_build_pod(api):
    async def body(builder):
        manager = managed(builder, idle_timeout=0.3)
        build, job = await submitted(api, manager)
        name = job.image.build_name
        api.start(name)
        await build.wait()
        assert build.state is BuildState.FAILED
        assert "no output" in str(build.error)
        assert (NS, name) not in api.pods

    with_builder(api, body)


def test_broken_log_stream_resumes_without_gaps_or_repeats(api):
    async def body(builder):
        b = await begin(api, builder)
        api.log(b.name, "a1", "a2")
        # Three lines with one timestamp: only their count tells them apart.
        api.log(b.name, "same", "same", "same", same_timestamp=True)
        await until(lambda: b.messages.count("same\n") == 3)
        assert api.break_logs(b.name) == 1
        api.log(b.name, "b1")  # written while no stream was open
        await until(lambda: len(api.log_streams) == 1, timeout=10, what="resumed stream")
        api.log(b.name, "b2")
        api.finish(b.name, 0)
        await b.ended_well(timeout=10)
        lines = [e.message for e in b.events if e.phase is Phase.UNKNOWN]
        assert lines == ["a1\n", "a2\n", "same\n", "same\n", "same\n", "b1\n", "b2\n"]
        resumed = api.calls_to("read_namespaced_pod_log")[-1]
        assert resumed.kwargs["since_seconds"] >= 1

    with_builder(api, body)


def test_log_stream_that_never_comes_back_is_a_backend_error(api):
    async def body(builder):
        b = await begin(api, builder)
        # The one resumption fails, however often it is retried.
        api.answer("read_namespaced_pod_log", 500, times=1000)
        api.break_logs(b.name)
        assert "Lost the log stream" in await b.failed(BuildBackendError, timeout=10)
        # The pod may still finish and push: an API failure does not delete it.
        assert (NS, b.name) in api.pods

    with_builder(api, body, log_resume_attempts=1, log_end_grace=0.05)


def test_pod_deleted_by_someone_else(api):
    async def body(builder):
        b = await begin(api, builder)
        api.remove(b.name)
        assert "deleted before the build finished" in await b.failed(BuildFailed)

    with_builder(api, body)


def test_pod_deleted_before_it_started(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        await watched(builder, b.name)
        api.remove(b.name)
        assert "deleted before it started" in await b.failed(BuildFailed)

    with_builder(api, body)


def leftover(job, phase: str, **status) -> dict:
    pod = pm.build_pod_manifest(job, make_builder(FakeCoreV1Api()).pod_config())
    pod["status"] = {"phase": phase, **status}
    return pod


def terminated(pod: dict, finished_at: float) -> dict:
    """Give a leftover pod a builder container that exited 0 at `finished_at`."""
    pod["status"]["containerStatuses"] = [
        {
            "name": "builder",
            "state": {"terminated": {"exitCode": 0, "finishedAt": rfc3339(finished_at)}},
        }
    ]
    return pod


def test_leftover_failed_pod_is_replaced(api):
    job = make_job()
    old = api.add_pod(leftover(job, "Failed"))

    async def body(builder):
        b = PodBuild(api, builder, job)
        await until(lambda: len(api.created_uids) == 1, what="new pod")
        assert api.pod(b.name)["metadata"]["uid"] != old["metadata"]["uid"]
        await start_pod(api, b.name)
        await b.succeeded()
        deletes = api.calls_to("delete_namespaced_pod")
        assert deletes[0].kwargs["body"]["preconditions"]["uid"] == old["metadata"]["uid"]

    with_builder(api, body)


def test_pod_that_just_succeeded_is_followed_not_rebuilt(api):
    job = make_job()
    name = job.image.build_name
    api.add_pod(leftover(job, "Succeeded"))
    api.start(name)
    api.log_json(name, "pushing", "Pushed\n")
    api.finish(name, 0)

    async def body(builder):
        b = PodBuild(api, builder, job)
        await b.ended_well()
        assert api.created_uids == []
        assert "Pushed\n" in b.messages

    with_builder(api, body)


@pytest.mark.parametrize(
    ("field", "key", "value"),
    [
        ("labels", "app.kubernetes.io/instance", "someone-else"),
        ("annotations", "binderbuild/image", "elsewhere/other:tag"),
    ],
    ids=["another-deployment", "another-image"],
)
def test_a_pod_of_the_same_name_that_is_not_ours_is_an_error(api, field, key, value):
    job = make_job()
    pod = leftover(job, "Running")
    pod["metadata"][field][key] = value
    api.add_pod(pod)

    async def body(builder):
        with pytest.raises(BuildBackendError, match="share this namespace"):
            async for _ in builder.build(job):
                pass

    with_builder(api, body)


def test_cleanup_sweeps_finished_and_over_age_pods_only(api):
    now = 2_000_000_000.0

    def add(name: str, created: float, phase: str, finished: float | None = None) -> None:
        pod = leftover(make_job(repo=f"https://git.example.org/{name}"), phase)
        pod["metadata"]["name"] = name
        pod["metadata"]["creationTimestamp"] = rfc3339(created)
        if finished is not None:
            terminated(pod, finished)
        api.add_pod(pod)

    async def body(builder):
        await builder.start()
        add("done-old", now - 500, "Succeeded", finished=now - 120)
        add("done-fresh", now - 500, "Failed", finished=now - 10)
        add("running-young", now - 600, "Running")
        add("running-ancient", now - 7200, "Running")
        add("pending-ancient", now - 7200, "Pending")
        other = leftover(make_job(repo="https://git.example.org/other"), "Succeeded")
        other["metadata"]["name"] = "not-ours"
        other["metadata"]["labels"]["app.kubernetes.io/instance"] = "another-release"
        api.add_pod(other)
        await until(lambda: len(builder.watcher.pods) == 5)
        deleted = await builder.cleanup_once(now=now)
        assert sorted(deleted) == ["done-old", "pending-ancient", "running-ancient"]
        assert {n for (_, n) in api.pods} == {"done-fresh", "running-young", "not-ours"}

    with_builder(api, body, finished_pod_max_age=60, build_max_age=3600)


def test_cleanup_never_deletes_a_newer_pod_of_the_same_name(api):
    job = make_job()
    name = job.image.build_name

    async def body(builder):
        api.add_pod(terminated(leftover(job, "Succeeded"), 1.0))
        await builder.start()
        await watched(builder, name)
        # Replaced behind the watch's back: the cache still has the old uid.
        api.pods.pop((NS, name))
        api.pods[(NS, name)] = {
            **leftover(job, "Running"),
            "metadata": {**leftover(job, "Running")["metadata"], "uid": "newer-uid"},
        }
        assert await builder.cleanup_once() == []
        assert api.pod(name)["metadata"]["uid"] == "newer-uid"

    with_builder(api, body, finished_pod_max_age=0)


def daemon_pod(node: str, ready: bool = True) -> dict:
    return {
        "metadata": {
            "name": f"dind-{node}",
            "labels": {
                "app.kubernetes.io/name": "binderbuild",
                "app.kubernetes.io/component": "image-builder",
            },
        },
        "spec": {"nodeName": node},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def test_sticky_builds_prefer_the_rendezvous_node(api):
    for node in ("node-a", "node-b", "node-c"):
        api.add_pod(daemon_pod(node))
    api.add_pod(daemon_pod("node-broken", ready=False))

    async def body(builder):
        b = await begin(api, builder, start=False)
        expected = pm.rendezvous_rank(["node-a", "node-b", "node-c"], b.job.ref.repo_url)[0]
        affinity = api.pod(b.name)["spec"]["affinity"]
        terms = affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert terms[0]["preference"]["matchExpressions"][0]["values"] == [expected]
        assert expected in b.events[0].message
        assert await builder.builder_nodes() == ["node-a", "node-b", "node-c"]
        await start_pod(api, b.name)
        api.finish(b.name, 0)
        await b.collector.done()
        # The node list is cached, not listed per build.
        daemon_lists = [
            c
            for c in api.calls_to("list_namespaced_pod")
            if "image-builder" in c.kwargs.get("label_selector", "") and not c.kwargs.get("watch")
        ]
        assert len(daemon_lists) == 1

    with_builder(api, body, sticky_builds=True)


def test_sticky_builds_degrade_to_spreading_when_nodes_cannot_be_listed(api):
    async def body(builder):
        await builder.start()
        api.status_for["list_namespaced_pod"] = 403
        b = await begin(api, builder, start=False)
        assert "podAntiAffinity" in api.pod(b.name)["spec"]["affinity"]
        await start_pod(api, b.name)
        await b.succeeded()

    with_builder(api, body, sticky_builds=True)


def test_watch_survives_expiry_and_server_timeouts(api):
    async def body(builder):
        await builder.start()
        b = await begin(api, builder, start=False)
        api.end_watches()  # server-side timeout: watch again from the last version
        await until(lambda: len(api.calls_to("list_namespaced_pod", watch=True)) == 2)
        api.compact()
        api.end_watches()  # the next watch gets 410 Gone: list again
        await until(lambda: len(api.calls_to("list_namespaced_pod", watch=True)) == 4, timeout=10)
        await start_pod(api, b.name)
        await b.succeeded()
        plain_lists = [c for c in api.calls_to("list_namespaced_pod") if not c.kwargs.get("watch")]
        assert len(plain_lists) == 2

    with_builder(api, body)


def test_check_reports_the_backend(api):
    async def body(builder):
        info = await builder.check()
        assert info == {"engine": "kubernetes", "namespace": "ns", "build_pods": 0}

    with_builder(api, body)


def test_unreachable_api_is_a_backend_error(api):
    api.fail_with["list_namespaced_pod"] = OSError("connection refused")
    api.status_for["list_namespaced_pod"] = 403

    async def body(builder):
        with pytest.raises(BuildBackendError, match="Could not list pods"):
            await builder.check()

    with_builder(api, body, startup_timeout=0.2)


def test_binderhub_style_docker_host_is_used_unless_configured(api):
    dind = BuildResources(docker_host="unix:///var/run/dind/docker.sock")
    plain = KubernetesBuilder(k8s_api=api, resources=dind)
    assert plain.build_docker_host == "/var/run/dind/docker.sock"
    config = Config()
    config.KubernetesBuilder.build_docker_host = "/run/ours/docker.sock"
    configured = KubernetesBuilder(config=config, k8s_api=api, resources=dind)
    assert configured.build_docker_host == "/run/ours/docker.sock"
    tcp = KubernetesBuilder(
        k8s_api=api, resources=BuildResources(docker_host="tcp://10.0.0.1:2375")
    )
    # Not a socket path: the default, the chart's directory for this
    # namespace and instance.
    assert tcp.build_docker_host == pm.default_docker_socket(tcp.namespace, tcp.instance_name)
    assert tcp.build_docker_host == (
        f"/var/run/binderbuild-dind/{tcp.namespace}/binderbuild/docker.sock"
    )


def test_constructed_like_the_app_does(api, caplog):
    caplog.set_level(logging.WARNING)
    builder = KubernetesBuilder(
        parent=None,
        log=logging.getLogger("test.app"),
        resources=BuildResources(
            docker_host="",
            memory_limit=1024,
            docker_client=None,
            registry_credentials={"registry": "https://r", "username": "u", "password": "p4ssword"},
        ),
        k8s_api=api,
    )
    assert builder.pod_config().memory_limit == 1024
    assert "push_secret is empty" in caplog.text
    assert "p4ssword" not in caplog.text
