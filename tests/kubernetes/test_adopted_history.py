"""Build pods adopted from a replica that died end up in the build history
(issue 18): the builder reports them through BuildResources.on_external_build,
and compose() hands it the history store's recorder."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from traitlets.config import Config

from binderbuild.builders import pod_manifests as pm
from binderbuild.builders.base import BuildResources, ExternalBuild
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.builds import BuildState
from binderbuild.events import Phase
from binderbuild.history import BuildHistory, external_build_recorder
from binderbuild.models import ResolvedRef
from binderbuild.secrets import Scrubber
from tests.kubernetes.conftest import SECRET, make_job, run, until
from tests.kubernetes.fake_k8s import FakeCoreV1Api
from tests.kubernetes.test_builder import NS, leftover


def repo_of(ref: ResolvedRef) -> str:
    """Like BuildsAPI.repo_of for the git provider: the spec without its ref."""
    return ref.spec.rsplit("/", 1)[0]


def adopting_builder(api: FakeCoreV1Api, history: BuildHistory) -> KubernetesBuilder:
    config = Config()
    for key, value in {
        "build_namespace": NS,
        "instance_name": "bb",
        "build_image": "registry.example.org/binderbuild-builder:test",
        "log_end_grace": 0.5,
        "log_resume_delay": 0.05,
        "build_cleanup_interval": 3600.0,
        "api_retry_deadline": 1.0,
        "adopt_orphaned_pods": True,
        "replica_name": "new-replica",
    }.items():
        config.KubernetesBuilder[key] = value
    return KubernetesBuilder(
        config=config,
        k8s_api=api,
        resources=BuildResources(
            scrubber=Scrubber([SECRET]),
            on_external_build=(external_build_recorder(history, repo_of),),
        ),
        log=logging.getLogger("test.k8s.adopt"),
    )


def orphan(api: FakeCoreV1Api, repo: str) -> tuple[str, str]:
    job = make_job(repo=repo)
    pod = leftover(job, "Pending")
    pod["metadata"]["annotations"][pm.ANNOTATION_OWNER] = "ns/dead-replica/abc"
    api.add_pod(pod)
    return job.image.build_name, job.image.name


def with_history(tmp_path, body) -> None:
    async def main() -> None:
        history = BuildHistory(tmp_path)
        api = FakeCoreV1Api()
        builder = adopting_builder(api, history)
        try:
            await body(api, builder, history)
        finally:
            await builder.close()
            await history.close()

    run(main())


def test_pods_carry_the_whole_resolved_ref():
    job = make_job()
    pod = pm.build_pod_manifest(job, pm.BuildPodConfig(namespace=NS, build_image="b:1"))
    assert pm.ref_from_annotations(pod["metadata"]["annotations"]) == job.ref


def test_pods_of_older_versions_still_give_a_ref():
    annotations = {
        pm.ANNOTATION_REPO: "https://git.example.org/o/r",
        pm.ANNOTATION_REF: "b" * 40,
        pm.ANNOTATION_PROVIDER: "git",
    }
    ref = pm.ref_from_annotations(annotations)
    assert (ref.provider_id, ref.repo_url, ref.resolved_ref, ref.spec) == (
        "git",
        "https://git.example.org/o/r",
        "b" * 40,
        "",
    )


def test_an_adopted_pods_success_is_in_the_history(tmp_path):
    async def body(api, builder, history):
        name, image = orphan(api, "https://git.example.org/a/success")
        api.start(name)
        api.log_json(name, "building", "Step 1/1 : FROM base\n")
        await builder.start()
        await until(lambda: name in builder.adopting, what="adopted")
        api.log(name, f"pushing with {SECRET}")
        api.finish(name, 0)
        await until(lambda: name in builder.adopted, what="outcome")
        record = None
        for _ in range(200):
            record = await history.latest_success(name)
            if record is not None:
                break
            await asyncio.sleep(0.01)
        assert record is not None, "the adopted build was not recorded"
        assert record.state == BuildState.SUCCEEDED.value
        assert record.image == image
        assert record.build_name == name
        assert record.provider == "git"
        assert record.resolved_ref == "a" * 40
        assert record.repo == "https://git.example.org/a/success"
        assert record.failure is None
        assert record.finished is not None and record.created <= record.finished
        (listed,) = await history.list_for_repo("git", "https://git.example.org/a/success")
        assert listed.id == record.id
        events = await history.events(record.id)
        assert events is not None
        messages = [e.message for e in events]
        assert "Step 1/1 : FROM base\n" in messages
        assert not any(SECRET in m for m in messages), "the log is scrubbed"
        assert events[-1].phase is Phase.BUILT
        assert events[-1].fields["imageName"] == image
        assert record.event_count == len(events)

    with_history(tmp_path, body)


def test_an_adopted_pods_failure_is_in_the_history(tmp_path):
    async def body(api, builder, history):
        name, _ = orphan(api, "https://git.example.org/a/failure")
        api.start(name)
        api.log_json(name, "failed", "The command 'make' returned a non-zero code: 2\n")
        api.finish(name, 1)
        await builder.start()
        await until(lambda: name in builder.adopted, what="outcome")
        await until(lambda: (NS, name) not in api.pods, what="deleted")
        records = []
        for _ in range(200):
            records = await history.list_for_repo("git", "https://git.example.org/a/failure")
            if records:
                break
            await asyncio.sleep(0.01)
        (record,) = records
        assert record.state == BuildState.FAILED.value
        assert "returned a non-zero code: 2" in (record.failure or "")
        assert record.failure_type == "BuildFailed"
        events = await history.events(record.id)
        assert events is not None and events[-1].phase is Phase.FAILED

    with_history(tmp_path, body)


def test_the_same_pod_adopted_twice_is_one_record(tmp_path):
    """Two replicas may adopt one pod: the record's id comes from the pod's
    uid, so a shared history keeps one."""

    async def body(api, builder, history):
        name, _ = orphan(api, "https://git.example.org/a/twice")
        api.start(name)
        api.finish(name, 0)
        pod = api.pod(name)
        builder._record_adopted(name, pod, "succeeded", "")
        builder._record_adopted(name, pod, "succeeded", "")
        for _ in range(200):
            if await history.count() == 1:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert await history.count() == 1

    with_history(tmp_path, body)


def test_abandoned_adoptions_are_not_recorded(tmp_path):
    """The API failed while following: the pod may still finish, and the
    next sweep adopts it again. Nothing is recorded yet."""

    async def body(api, builder, history):
        name, _ = orphan(api, "https://git.example.org/a/abandoned")
        builder._record_adopted(name, api.pod(name), "abandoned", "API down")
        await asyncio.sleep(0.05)
        assert await history.count() == 0

    with_history(tmp_path, body)


def test_compose_hands_the_history_recorder_to_the_builder(tmp_path):
    """The composition root wires it: what the builder reports lands in the
    same history the builds API reads."""
    from binderbuild.app import BinderBuild
    from binderbuild.services import shutdown

    config = Config()
    config.BinderBuild.build_class = "kubernetes"
    config.BinderBuild.use_registry = True
    config.BinderBuild.require_build_only = True
    config.BinderBuild.data_dir = str(tmp_path)
    config.BinderBuild.image_prefix = "registry.example.org/binder-"
    config.DockerRegistry.url = "http://127.0.0.1:9"
    config.KubernetesBuilder.build_namespace = NS

    async def main() -> None:
        app = BinderBuild(config=config)
        services = app.compose()
        try:
            hooks = services.builder.resources.on_external_build
            assert len(hooks) == 1
            now = time.time()
            ref = make_job(repo="https://github.com/o/r").ref
            ref = dataclasses.replace(ref, provider_id="gh", spec="o/r/main")
            build = ExternalBuild(
                id="0123456789abcdef",
                ref=ref,
                image="registry.example.org/binder-o-2dr:" + "a" * 40,
                build_name="binder-o-2dr-aaaa",
                succeeded=True,
                failure=None,
                failure_type=None,
                # Recent: the store prunes builds older than max_age_days.
                created=now - 60,
                started=now - 50,
                finished=now,
                events=(),
            )
            hooks[0](build)
            for _ in range(200):
                if await services.history.get("0123456789abcdef") is not None:
                    break
                await asyncio.sleep(0.01)
            record = await services.history.get("0123456789abcdef")
            assert record is not None
            # Named by the providers, as the builds API names every build.
            assert (record.provider, record.repo) == ("gh", "o/r")
            assert record.state == "succeeded"
        finally:
            await shutdown(services)

    run(main())
