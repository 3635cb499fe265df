"""The backend against what a real API server does (issue 18): bookmarks,
429/500/503/504 with Retry-After, graceful deletes and finalizers, the
Unknown phase, Pending straight to Succeeded or Failed, admission
rejections. fake_k8s.py cites the Kubernetes documents for each."""

from __future__ import annotations

import asyncio
import time

import pytest

from binderbuild.builders import pod_manifests as pm
from binderbuild.errors import BuildBackendError, BuildFailed
from binderbuild.events import Phase
from binderbuild.k8s_api import PodAPI
from tests.kubernetes.conftest import make_job, run
from tests.kubernetes.fake_k8s import FakeCoreV1Api
from tests.kubernetes.test_builder import (
    NS,
    PodBuild,
    begin,
    leftover,
    pod_created,
    start_pod,
    until,
    with_builder,
)


def plain_lines(build: PodBuild) -> list[str]:
    return [e.message for e in build.events if e.phase is Phase.UNKNOWN]


def list_calls(api: FakeCoreV1Api) -> int:
    return len([c for c in api.calls_to("list_namespaced_pod") if not c.kwargs.get("watch")])


# --- BOOKMARK events ------------------------------------------------------------------


def test_a_bookmark_keeps_the_watch_resumable_after_compaction(api):
    """Bookmarks carry the newest resourceVersion of a quiet watch: when the
    server ends the watch after history older than the bookmark was
    compacted, the watch resumes from it, with no 410 and no relist."""

    async def body(builder):
        await builder.start()
        watcher = builder.watcher
        assert watcher is not None
        await until(lambda: bool(api.watches), what="watching")
        assert api.calls_to("list_namespaced_pod", watch=True)[0].kwargs["allow_watch_bookmarks"]
        assert api.bookmark() == 1
        version = str(api.resource_version)
        await until(lambda: watcher.resource_version == version, what="bookmark seen")
        assert watcher.pods == {}  # a bookmark is no pod
        api.compact(before=api.resource_version)
        lists = list_calls(api)
        api.end_watches()
        await until(lambda: bool(api.watches), what="watching again")
        watch = api.calls_to("list_namespaced_pod", watch=True)[-1]
        assert watch.kwargs["resource_version"] == version
        assert list_calls(api) == lists, "resumed from the bookmark, not relisted"
        b = await begin(api, builder)
        await b.succeeded()

    with_builder(api, body)


# --- 429/500/503/504 with Retry-After -------------------------------------------------


def test_create_answered_429_waits_for_retry_after_then_builds(api):
    async def body(builder):
        api.answer("create_namespaced_pod", 429, retry_after="1")
        started = time.monotonic()
        b = PodBuild(api, builder, make_job())
        await pod_created(api, b.name)
        assert time.monotonic() - started >= 1.0, "Retry-After: 1 was not honoured"
        assert len(api.calls_to("create_namespaced_pod")) == 2
        await start_pod(api, b.name)
        await b.succeeded()
        assert api.created_uids and (NS, b.name) not in api.pods

    with_builder(api, body, api_retry_deadline=5.0)


@pytest.mark.parametrize("status", [500, 503, 504])
def test_server_errors_are_retried_on_every_call(api, status):
    async def body(builder):
        api.answer("list_namespaced_pod", status, retry_after="0")
        api.answer("watch", status, retry_after="0")
        await builder.start()
        api.answer("create_namespaced_pod", status)
        b = PodBuild(api, builder, make_job())
        await pod_created(api, b.name)
        api.answer("read_namespaced_pod_log", status, retry_after="0")
        await start_pod(api, b.name)
        api.log(b.name, "hello")
        api.answer("delete_namespaced_pod", status, retry_after="0")
        await b.succeeded()
        assert "hello\n" in plain_lines(b)
        await until(lambda: (NS, b.name) not in api.pods, what="deleted after a retry")
        assert len(api.calls_to("delete_namespaced_pod")) == 2

    with_builder(api, body)


def test_a_create_that_happened_despite_its_504_is_still_ours(api):
    """ServerTimeout: the outcome is unknown and the pod may exist. The retry
    gets 409 AlreadyExists for a pod naming this process as its owner: this
    replica owns it (and deletes it when done) instead of following it as
    someone else's."""

    async def body(builder):
        api.answer("create_namespaced_pod", 504, retry_after="0", commit=True)
        b = PodBuild(api, builder, make_job())
        await pod_created(api, b.name)
        await until(lambda: bool(b.messages), what="first event")
        assert b.messages[0].startswith(f"Build pod {b.name} created")
        await start_pod(api, b.name)
        await b.succeeded()
        assert len(api.created_uids) == 1
        await until(lambda: (NS, b.name) not in api.pods, what="the owner deleted it")

    with_builder(api, body)


def test_retry_after_beyond_the_deadline_fails_at_once_and_says_why(api):
    async def body(builder):
        await builder.start()
        api.answer("create_namespaced_pod", 429, retry_after="120")
        b = PodBuild(api, builder, make_job())
        started = time.monotonic()
        reason = await b.failed(BuildBackendError, timeout=5)
        assert time.monotonic() - started < 2
        assert "HTTP 429" in reason and "Too many requests" in reason
        assert "Retry-After 120" in reason
        assert api.created_uids == []

    with_builder(api, body, api_retry_deadline=30.0)


def test_persistent_server_errors_end_within_the_retry_deadline(api):
    async def body(builder):
        await builder.start()
        api.answer("create_namespaced_pod", 500, times=1000)
        b = PodBuild(api, builder, make_job())
        started = time.monotonic()
        reason = await b.failed(BuildBackendError, timeout=5)
        assert time.monotonic() - started < 2.5
        assert "HTTP 500" in reason and "etcdserver: leader changed" in reason
        assert "retried" in reason
        assert len(api.calls_to("create_namespaced_pod")) > 2  # backed off, then gave up

    with_builder(api, body, api_retry_deadline=1.0)


def test_pod_api_reads_retry_after_from_the_status_details_too():
    """Without the header, details.retryAfterSeconds says how long (the
    conventions put it in both; the header wins when both are there)."""

    async def body():
        api = FakeCoreV1Api()
        api.add_pod({"metadata": {"name": "p"}, "spec": {}})
        api.answer("read_namespaced_pod", 429, retry_after="1")
        api.answers["read_namespaced_pod"][0].retry_after = None  # header dropped...
        forced = api.answers["read_namespaced_pod"][0]
        original = forced.response

        def body_only():
            resp = original()
            resp._body = (
                b'{"kind":"Status","code":429,"message":"slow down",'
                b'"details":{"retryAfterSeconds":1}}'
            )
            return resp

        forced.response = body_only  # type: ignore[method-assign]
        pods = PodAPI(api, retry_deadline=10.0)
        started = time.monotonic()
        pod = await pods.read_pod("ns", "p")
        assert pod is not None and pod["metadata"]["name"] == "p"
        assert time.monotonic() - started >= 1.0

    run(body())


# --- graceful deletes and finalizers ---------------------------------------------------


def test_pod_deleted_gracefully_by_someone_else_fails_the_build_saying_so(api):
    """kubectl delete: the pod lingers with deletionTimestamp while its
    container is stopped, and the build says it was deleted (not just
    "exit code 137")."""

    async def body(builder):
        b = await begin(api, builder)
        api.schedule(b.name)
        api.log(b.name, "working")
        resp = await api.delete_namespaced_pod(
            b.name, NS, body={"gracePeriodSeconds": 30}, _preload_content=False
        )
        assert resp.status == 200
        assert api.pod(b.name)["metadata"]["deletionTimestamp"]  # lingers
        await asyncio.sleep(0.2)
        assert not b.collector.task.done(), "still running during the grace period"
        api.log(b.name, "got SIGTERM")
        api.kubelet_stops(b.name)
        reason = await b.failed(BuildFailed)
        assert "deleted" in reason and "137" in reason
        assert plain_lines(b) == ["working\n", "got SIGTERM\n"]

    with_builder(api, body)


def test_a_leftover_pod_held_by_a_finalizer_is_waited_for_then_replaced(api):
    job = make_job()
    pod = leftover(job, "Failed")
    pod["metadata"]["finalizers"] = ["example.org/audit"]
    api.add_pod(pod)
    name = job.image.build_name

    async def body(builder):
        b = PodBuild(api, builder, job)
        await until(
            lambda: api.pods.get((NS, name), {}).get("metadata", {}).get("deletionTimestamp"),
            what="deletion requested",
        )
        await asyncio.sleep(0.1)
        assert api.created_uids == []  # still held
        api.remove_finalizers(name)
        await until(lambda: bool(api.created_uids), what="replaced")
        await start_pod(api, name)
        await b.succeeded()

    with_builder(api, body)


def test_a_finalizer_that_never_goes_fails_the_build_naming_it(api):
    job = make_job()
    pod = leftover(job, "Succeeded")
    pod["metadata"]["finalizers"] = ["example.org/stuck"]
    pod["status"]["phase"] = "Failed"
    api.add_pod(pod)

    async def body(builder):
        b = PodBuild(api, builder, job)
        reason = await b.failed(BuildBackendError)
        assert "still being deleted" in reason
        assert "example.org/stuck" in reason
        assert api.created_uids == []

    with_builder(api, body, old_pod_delete_timeout=0.3)


def test_terminating_pods_are_neither_swept_nor_adopted(api):
    job = make_job(repo="https://git.example.org/a/held")
    pod = leftover(job, "Pending")
    pod["metadata"]["finalizers"] = ["example.org/audit"]
    pod["metadata"]["annotations"][pm.ANNOTATION_OWNER] = "ns/gone/abc"
    api.add_pod(pod)
    name = job.image.build_name
    api.start(name)
    api.schedule(name)

    async def body(builder):
        await api.delete_namespaced_pod(
            name, NS, body={"gracePeriodSeconds": 30}, _preload_content=False
        )
        await builder.start()
        await until(lambda: bool(builder.watcher and builder.watcher.get(name)))
        await until(
            lambda: builder.watcher.get(name)["metadata"].get("deletionTimestamp"),
            what="terminating seen",
        )
        assert await builder.adopt_orphans() == []
        assert await builder.cleanup_once(now=time.time() + 10**6) == []
        deletes = api.calls_to("delete_namespaced_pod")
        assert len(deletes) == 1  # only the test's own

    with_builder(api, body, adopt_orphaned_pods=True, replica_name="r")


# --- the Unknown phase -----------------------------------------------------------------


def test_a_node_that_stops_reporting_and_comes_back_does_not_fail_the_build(api):
    async def body(builder):
        b = await begin(api, builder)
        api.schedule(b.name)
        api.log(b.name, "before")
        await until(lambda: "before\n" in b.messages)
        api.modify(b.name, phase="Unknown")
        api.break_logs(b.name)  # the kubelet is unreachable
        await asyncio.sleep(0.3)
        assert not b.collector.task.done()
        api.modify(b.name, phase="Running")
        api.log(b.name, "after")
        await until(lambda: "after\n" in b.messages, timeout=8, what="log resumed")
        await b.succeeded()

    with_builder(api, body, api_retry_deadline=0.2, log_resume_attempts=8)


def test_a_node_that_never_comes_back_ends_the_build_with_a_clear_reason(api):
    async def body(builder):
        b = await begin(api, builder)
        api.schedule(b.name, node="node-9")
        api.modify(b.name, phase="Unknown")
        api.break_logs(b.name)
        reason = await b.failed(BuildBackendError, timeout=10)
        assert "Unknown" in reason and "node-9" in reason
        # It may still finish if the node returns: not deleted.
        assert (NS, b.name) in api.pods

    with_builder(api, body, api_retry_deadline=0.1, log_resume_attempts=2)


# --- Pending straight to Succeeded or Failed --------------------------------------------


def test_pending_straight_to_succeeded_still_shows_the_log(api):
    """The container ran between two status reports: the watch never saw it
    running. Its log is read once."""

    async def body(builder):
        b = await begin(api, builder, start=False)
        api.log(b.name, "quick step")
        api.finish(b.name, 0)
        await b.ended_well()
        assert plain_lines(b) == ["quick step\n"]

    with_builder(api, body)


def test_pending_straight_to_failed_gives_repo2dockers_reason(api):
    async def body(builder):
        b = await begin(api, builder, start=False)
        api.log_json(b.name, "failed", "Could not resolve ref main\n")
        api.finish(b.name, 1)
        reason = await b.failed(BuildFailed)
        assert "Could not resolve ref main" in reason

    with_builder(api, body)


# --- admission rejections ---------------------------------------------------------------


def test_quota_admission_rejection_is_a_clear_backend_error(api):
    message = (
        'pods "build-x" is forbidden: exceeded quota: builds, requested: pods=1, '
        "used: pods=4, limited: pods=4"
    )
    api.reject_creates(403, "Forbidden", message)

    async def body(builder):
        b = PodBuild(api, builder, make_job())
        reason = await b.failed(BuildBackendError)
        assert "exceeded quota: builds" in reason
        assert "refused the build pod" in reason
        assert "admission" in reason
        assert "Role" not in reason  # not an RBAC problem
        assert len(api.calls_to("create_namespaced_pod")) == 1  # never retried

    with_builder(api, body)


def test_pod_security_admission_rejection_names_the_policy(api):
    message = (
        'pods "build-x" is forbidden: violates PodSecurity "restricted:latest": '
        'seccompProfile (pod or container "builder" must set securityContext.seccompProfile.type)'
    )
    api.reject_creates(403, "Forbidden", message)

    async def body(builder):
        reason = await PodBuild(api, builder, make_job()).failed(BuildBackendError)
        assert 'violates PodSecurity "restricted:latest"' in reason

    with_builder(api, body)


def test_invalid_pod_rejection_lists_its_causes(api):
    api.reject_creates(
        422,
        "Invalid",
        'Pod "build-x" is invalid: spec.containers[0].resources.requests: Invalid value: "4": '
        "must be less than or equal to cpu limit",
        kind="Pod",
        name="build-x",
        causes=[
            {
                "reason": "FieldValueInvalid",
                "field": "spec.containers[0].resources.requests",
                "message": 'Invalid value: "4": must be less than or equal to cpu limit',
            }
        ],
    )

    async def body(builder):
        reason = await PodBuild(api, builder, make_job()).failed(BuildBackendError)
        assert "HTTP 422" in reason
        assert "spec.containers[0].resources.requests" in reason
        assert "refused the build pod" in reason
        assert len(api.calls_to("create_namespaced_pod")) == 1

    with_builder(api, body)


def test_rbac_refusal_keeps_the_role_hint(api):
    api.reject_creates(
        403,
        "Forbidden",
        'pods is forbidden: User "system:serviceaccount:ns:bb" cannot create resource '
        '"pods" in API group "" in the namespace "ns"',
    )

    async def body(builder):
        reason = await PodBuild(api, builder, make_job()).failed(BuildBackendError)
        assert "cannot create resource" in reason
        assert "Role" in reason

    with_builder(api, body)
