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

The push test (test_build_and_push_to_the_registry) needs a registry too,
the one the release pushes to (its push Secret holds the credentials):
    BINDERBUILD_TEST_REGISTRY_URL       registry API URL, e.g.
                                        https://registry.example.org; unset:
                                        the push test fails and says so
    BINDERBUILD_TEST_IMAGE_PREFIX       where test images go
                                        [<registry host>/binderbuild-test-]
    BINDERBUILD_TEST_PUSH_SECRET        Secret with credentials.json
                                        [<release>-binderbuild-push]
    BINDERBUILD_TEST_REGISTRY_USERNAME  to check the pushed manifest as
    BINDERBUILD_TEST_REGISTRY_PASSWORD  binderbuild does [anonymous]

The other tests do not push (push=False): the image stays in the node's
builder daemon.

Build pods are sandboxed (pod_manifests): the ``sandbox`` container fetches
and detects as its own uid, without the daemon socket, the push Secret or a
service-account token; the ``builder`` container relays its log and builds.
The first test checks that split on the pod the cluster admitted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from urllib.parse import urlsplit

import pytest
from traitlets.config import Config

from binderbuild import __version__
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.events import Phase
from binderbuild.http import HttpClient
from binderbuild.k8s_api import PodAPI, close_core_api, make_core_api
from binderbuild.models import BuildJob, ImageSpec
from binderbuild.registry import RegistryClient
from tests.kubernetes.conftest import Collector, make_ref, run, until

pytestmark = pytest.mark.kubernetes

NAMESPACE = os.environ.get("BINDERBUILD_TEST_NAMESPACE", "bbtest")
RELEASE = os.environ.get("BINDERBUILD_TEST_RELEASE", "bbtest")
BUILD_IMAGE = os.environ.get("BINDERBUILD_TEST_BUILD_IMAGE", f"binderbuild/builder:{__version__}")
REPO = os.environ.get(
    "BINDERBUILD_TEST_REPO", "https://github.com/binderhub-ci-repos/minimal-dockerfile"
)
REF = os.environ.get("BINDERBUILD_TEST_REF", "HEAD")
REGISTRY_URL = os.environ.get("BINDERBUILD_TEST_REGISTRY_URL", "").rstrip("/")
IMAGE_PREFIX = os.environ.get(
    "BINDERBUILD_TEST_IMAGE_PREFIX",
    f"{urlsplit(REGISTRY_URL).netloc}/binderbuild-test-" if REGISTRY_URL else "",
)
PUSH_SECRET = os.environ.get("BINDERBUILD_TEST_PUSH_SECRET", f"{RELEASE}-binderbuild-push")


@pytest.fixture(autouse=True)
def cluster() -> None:
    if not os.environ.get("KUBECONFIG"):
        pytest.skip(
            "No Kubernetes cluster (KUBECONFIG is unset): run KUBECONFIG=... pytest -m kubernetes tests/kubernetes"
        )


def cluster_builder(core, **traits) -> KubernetesBuilder:
    config = Config()
    config.KubernetesBuilder.build_namespace = NAMESPACE
    config.KubernetesBuilder.instance_name = RELEASE
    config.KubernetesBuilder.build_image = BUILD_IMAGE
    config.KubernetesBuilder.build_service_account = f"{RELEASE}-binderbuild-build"
    for key, value in traits.items():
        config.KubernetesBuilder[key] = value
    return KubernetesBuilder(config=config, k8s_api=core, log=logging.getLogger("test.cluster"))


def fresh_job(prefix: str = "binderbuild-test/", push: bool = False) -> BuildJob:
    """A job no earlier run has built: its build (pod) name is unique."""
    marker = secrets.token_hex(4)
    ref = make_ref(REPO, REF)
    image = ImageSpec(
        repository=f"{prefix}cluster-{marker}",
        tag="latest",
        build_name=f"build-cluster-test-{marker}",
    )
    return BuildJob(image=image, ref=ref, push=push)


def test_build_a_repository_in_a_pod_and_stream_its_log():
    async def body():
        core = await make_core_api()
        try:
            builder = cluster_builder(core, sandbox_uid=4242)
            job = fresh_job()
            collector = Collector(builder.build(job))
            pods = PodAPI(core)
            admitted: dict = {}

            async def read() -> None:
                admitted.update(await pods.read_pod(NAMESPACE, job.image.build_name) or {})

            while not admitted and not collector.task.done():
                await read()
                await asyncio.sleep(0.5)
            await collector.done(timeout=840)
            assert collector.error is None, f"{collector.error}\n" + "".join(
                collector.messages[-30:]
            )
            # The sandbox's fetch, relayed by the builder, then the builder's build.
            assert any(e.phase is Phase.FETCHING for e in collector.events)
            assert any(e.phase is Phase.BUILDING for e in collector.events)
            assert admitted, "the build pod was never seen"
            spec = admitted["spec"]
            assert spec["automountServiceAccountToken"] is False
            box = next(c for c in spec["containers"] if c["name"] == "sandbox")
            assert box["securityContext"]["runAsUser"] == 4242
            assert not [e for e in box.get("env", []) if "valueFrom" in e]
            assert "docker-socket" not in {m["name"] for m in box["volumeMounts"]}
            assert not any(
                "serviceaccount" in m["mountPath"]
                for c in spec["containers"]
                for m in c["volumeMounts"]
            )
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


def test_build_and_push_to_the_registry():
    """The push path: the build pod pushes through the builder daemon with
    the release's push Secret, and the registry then has the image, as
    binderbuild's own registry client sees it."""
    if not REGISTRY_URL:
        pytest.fail(
            "BINDERBUILD_TEST_REGISTRY_URL is unset: name the registry the release "
            "pushes to (see this module's docstring)",
            pytrace=False,
        )

    async def body():
        core = await make_core_api()
        http = HttpClient(user_agent="binderbuild-cluster-test")
        try:
            builder = cluster_builder(core, push_secret=PUSH_SECRET)
            job = fresh_job(IMAGE_PREFIX, push=True)
            collector = Collector(builder.build(job))
            await collector.done(timeout=840)
            assert collector.error is None, f"{collector.error}\n" + "".join(
                collector.messages[-30:]
            )
            assert any(e.phase is Phase.PUSHING for e in collector.events)
            await builder.close()
            registry = RegistryClient(
                http,
                REGISTRY_URL,
                os.environ.get("BINDERBUILD_TEST_REGISTRY_USERNAME", ""),
                os.environ.get("BINDERBUILD_TEST_REGISTRY_PASSWORD", ""),
            )
            assert await registry.image_exists(job.image), (
                f"{job.image.name} is not in the registry"
            )
        finally:
            http.close()
            await close_core_api(core)

    run(body(), timeout=870)
