"""KubernetesBuilder against a real cluster (the only test allowed to skip).

Runs when KUBECONFIG points at a cluster where the chart is installed:

    helm install bbtest helm/binderbuild --namespace bbtest --create-namespace \\
        --set build.image.repository=... --set build.image.tag=...
    KUBECONFIG=~/.kube/config pytest -m kubernetes tests/kubernetes

Environment (defaults in brackets):
    BINDERBUILD_TEST_NAMESPACE    namespace of the release [bbtest]
    BINDERBUILD_TEST_RELEASE      release name = build pods' instance label [bbtest]
    BINDERBUILD_TEST_BUILD_IMAGE  builder image [binderbuild/builder:<version>]
    BINDERBUILD_TEST_REPO         git repository with a Dockerfile, reachable
                                  from the cluster
                                  [https://github.com/binderhub-ci-repos/minimal-dockerfile]
    BINDERBUILD_TEST_REF          ref to build [HEAD]

Images are not pushed (push=False): the image stays in the node's builder
daemon, so no registry is needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets

import pytest
from traitlets.config import Config

from binderbuild import __version__
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.events import Phase
from binderbuild.k8s_api import PodAPI, close_core_api, make_core_api
from binderbuild.models import BuildJob, ImageSpec
from tests.kubernetes.conftest import Collector, make_ref, run, until

pytestmark = pytest.mark.kubernetes

NAMESPACE = os.environ.get("BINDERBUILD_TEST_NAMESPACE", "bbtest")
RELEASE = os.environ.get("BINDERBUILD_TEST_RELEASE", "bbtest")
BUILD_IMAGE = os.environ.get("BINDERBUILD_TEST_BUILD_IMAGE", f"binderbuild/builder:{__version__}")
REPO = os.environ.get(
    "BINDERBUILD_TEST_REPO", "https://github.com/binderhub-ci-repos/minimal-dockerfile"
)
REF = os.environ.get("BINDERBUILD_TEST_REF", "HEAD")


@pytest.fixture(autouse=True)
def cluster() -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip(
            "No Kubernetes cluster (KUBECONFIG is unset): run KUBECONFIG=... pytest -m kubernetes tests/kubernetes"
        )


def cluster_builder(core) -> KubernetesBuilder:
    config = Config()
    config.KubernetesBuilder.build_namespace = NAMESPACE
    config.KubernetesBuilder.instance_name = RELEASE
    config.KubernetesBuilder.build_image = BUILD_IMAGE
    config.KubernetesBuilder.build_service_account = f"{RELEASE}-binderbuild-build"
    return KubernetesBuilder(config=config, k8s_api=core, log=logging.getLogger("test.cluster"))


def fresh_job() -> BuildJob:
    """A job no earlier run has built: its build (pod) name is unique."""
    marker = secrets.token_hex(4)
    ref = make_ref(REPO, REF)
    image = ImageSpec(
        repository=f"binderbuild-test/cluster-{marker}",
        tag="latest",
        build_name=f"build-cluster-test-{marker}",
    )
    return BuildJob(image=image, ref=ref, push=False)


def test_build_a_repository_in_a_pod_and_stream_its_log():
    async def body():
        core = await make_core_api()
        try:
            builder = cluster_builder(core)
            job = fresh_job()
            collector = Collector(builder.build(job))
            await collector.done(timeout=840)
            assert collector.error is None, f"{collector.error}\n" + "".join(
                collector.messages[-30:]
            )
            assert any(e.phase is Phase.BUILDING for e in collector.events)
            await builder.close()
            # Its creator removed the pod.
            assert await PodAPI(core).read_pod(NAMESPACE, job.image.build_name) is None
        finally:
            await close_core_api(core)

    run(body(), timeout=870)


def test_restart_mid_build_reattaches():
    async def body():
        core = await make_core_api()
        try:
            job = fresh_job()
            first = cluster_builder(core)
            collector = Collector(first.build(job))
            await until(
                lambda: any(e.phase in (Phase.FETCHING, Phase.BUILDING) for e in collector.events),
                timeout=600,
                what="the build to start logging",
            )
            # The service stops: the build pod must survive it.
            await first.begin_shutdown()
            collector.task.cancel()
            await asyncio.gather(collector.task, return_exceptions=True)
            await first.close()
            assert await PodAPI(core).read_pod(NAMESPACE, job.image.build_name) is not None

            second = cluster_builder(core)
            again = Collector(second.build(job))
            await again.done(timeout=840)
            assert again.error is None, f"{again.error}\n" + "".join(again.messages[-30:])
            assert "already being built" in again.events[0].message
            await second.close()
        finally:
            await close_core_api(core)

    run(body(), timeout=870)
