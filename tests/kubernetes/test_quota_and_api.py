"""PodCountCache (launch quota on Kubernetes) and the PodAPI adapter."""

from __future__ import annotations

import json

import pytest

from binderbuild import k8s_api
from binderbuild.errors import BuildBackendError
from binderbuild.k8s_api import PodAPI, ResourceExpired
from binderbuild.k8s_quota import PodCountCache
from tests.kubernetes.conftest import run, until
from tests.kubernetes.fake_k8s import FakeContent, FakeCoreV1Api, FakeResponse

REPO_A = "https://github.com/org/a"
REPO_B = "https://github.com/org/b"


def user_pod(
    name: str,
    *,
    repo: str | None = None,
    env_repo: str | None = None,
    phase: str = "Running",
    user: str | None = None,
    labels: dict | None = None,
) -> dict:
    annotations = {}
    if repo:
        annotations["binderbuild/repo-url"] = repo
    if user:
        annotations["hub.jupyter.org/username"] = user
        annotations["hub.jupyter.org/servername"] = ""
    env = [{"name": "BINDER_REPO_URL", "value": env_repo}] if env_repo else []
    return {
        "metadata": {
            "name": name,
            "labels": labels or {"component": "singleuser-server", "app": "jupyterhub"},
            "annotations": annotations,
        },
        "spec": {"containers": [{"name": "notebook", "image": "img", "env": env}]},
        "status": {"phase": phase},
    }


def make_cache(api: FakeCoreV1Api) -> PodCountCache:
    return PodCountCache(k8s_api=api, namespace="ns", startup_timeout=5)


def test_counts_running_servers_by_repository(api):
    async def body():
        api.add_pod(user_pod("jupyter-1", repo=REPO_A))
        api.add_pod(user_pod("jupyter-2", env_repo=REPO_A))  # BinderSpawnerMixin's env only
        api.add_pod(user_pod("jupyter-3", repo=REPO_B, phase="Pending"))
        api.add_pod(user_pod("jupyter-4", repo=REPO_A, phase="Succeeded"))
        api.add_pod(user_pod("jupyter-5", repo=REPO_A, phase="Failed"))
        api.add_pod(user_pod("not-a-server", repo=REPO_A, labels={"component": "hub"}))
        cache = make_cache(api)
        await cache.start()
        assert cache.ready
        assert cache.count() == 3
        assert cache.count(REPO_A) == 2
        assert cache.count(REPO_B) == 1
        assert cache.count("https://github.com/org/unknown") == 0
        await cache.close()

    run(body())


def test_counts_follow_the_watch(api):
    async def body():
        cache = make_cache(api)
        await cache.start()
        assert cache.count() == 0
        api.add_pod(user_pod("jupyter-1", repo=REPO_A))
        api.add_pod(user_pod("jupyter-2", repo=REPO_A))
        await until(lambda: cache.count(REPO_A) == 2)
        api.modify("jupyter-1", phase="Succeeded")
        await until(lambda: cache.count(REPO_A) == 1)
        api.remove("jupyter-2")
        await until(lambda: cache.count() == 0)
        # Counting never calls the API: one list, one watch.
        assert len(api.calls_to("list_namespaced_pod")) == 2
        await cache.close()

    run(body())


def test_terminating_pods_do_not_count(api):
    async def body():
        pod = user_pod("jupyter-1", repo=REPO_A)
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        api.add_pod(pod)
        cache = make_cache(api)
        await cache.start()
        assert cache.count() == 0
        await cache.close()

    run(body())


def test_exclude_names_servers_not_to_count(api):
    async def body():
        api.add_pod(user_pod("jupyter-alice", repo=REPO_A, user="alice"))
        api.add_pod(user_pod("jupyter-bob", repo=REPO_A, user="bob"))
        cache = make_cache(api)
        await cache.start()
        assert cache.supports_exclude
        assert cache.count(REPO_A, exclude=frozenset({"alice/"})) == 1
        assert cache.count(None, exclude=frozenset({"alice/", "bob/"})) == 0
        await cache.close()

    run(body())


def test_count_before_start_is_a_programming_error(api):
    with pytest.raises(RuntimeError, match="before start"):
        make_cache(api).count()


def test_quota_counter_protocol_is_met(api):
    from binderbuild.quota import ServerCounter

    assert isinstance(make_cache(api), ServerCounter)


# --- PodAPI -----------------------------------------------------------------


class Scripted:
    """A CoreV1Api-like object answering each method with a given response."""

    def __init__(self, **responses):
        self.responses = responses

    def __getattr__(self, method):
        async def call(*args, **kwargs):
            assert kwargs["_preload_content"] is False
            return self.responses[method]

        return call


def streamed(*chunks: bytes) -> FakeResponse:
    content = FakeContent()
    for chunk in chunks:
        content.feed(chunk)
    content.end()
    return FakeResponse(200, content=content)


def test_lines_are_split_across_chunks_and_overlong_lines_are_cut():
    async def body():
        api = PodAPI(
            Scripted(
                read_namespaced_pod_log=streamed(b"ab", b"c\nde", b"f\n", b"x" * 25, b"y\nlast")
            ),
            max_line_bytes=10,
        )
        lines = [line async for line in api.pod_log_lines("ns", "p", container="builder")]
        assert lines == ["abc", "def", "x" * 10 + " [line truncated]", "last"]

    run(body())


def test_a_silent_stream_is_reported_as_stalled_not_read_forever():
    async def body():
        silent = FakeResponse(200, content=FakeContent())  # open, never fed, never ended
        api = PodAPI(Scripted(read_namespaced_pod_log=silent))
        with pytest.raises(k8s_api.StreamStalled, match="nothing for 0.1 s"):
            async for _ in api.pod_log_lines("ns", "p", container="builder", read_timeout=0.1):
                pass
        assert silent.closed

    run(body(), timeout=5)


def test_http_errors_carry_the_api_message_and_a_hint_for_rbac():
    async def body():
        forbidden = FakeResponse(
            403, {"kind": "Status", "message": 'pods is forbidden: User "x" cannot create'}
        )
        api = PodAPI(Scripted(create_namespaced_pod=forbidden))
        with pytest.raises(BuildBackendError) as info:
            await api.create_pod("ns", {"metadata": {"name": "p"}})
        assert "HTTP 403" in str(info.value)
        assert "pods is forbidden" in str(info.value)
        assert "Role" in str(info.value)

    run(body())


def test_not_found_and_conflict_are_answers_not_errors():
    async def body():
        gone = PodAPI(
            Scripted(
                read_namespaced_pod=FakeResponse(404, {}),
                delete_namespaced_pod=FakeResponse(404, {}),
            )
        )
        assert await gone.read_pod("ns", "p") is None
        assert await gone.delete_pod("ns", "p", uid="u") is False
        taken = PodAPI(
            Scripted(
                create_namespaced_pod=FakeResponse(409, {}),
                delete_namespaced_pod=FakeResponse(409, {}),
            )
        )
        assert await taken.create_pod("ns", {"metadata": {"name": "p"}}) is None
        assert await taken.delete_pod("ns", "p", uid="other") is False

    run(body())


def test_watch_errors():
    async def body():
        expired = streamed(
            json.dumps({"type": "ERROR", "object": {"code": 410, "message": "too old"}}).encode()
            + b"\n"
        )
        with pytest.raises(ResourceExpired):
            async for _ in PodAPI(Scripted(list_namespaced_pod=expired)).watch_pods(
                "ns", "a=b", "1"
            ):
                pass
        broken = streamed(
            json.dumps({"type": "ERROR", "object": {"code": 500, "message": "etcd"}}).encode()
            + b"\n"
        )
        with pytest.raises(BuildBackendError, match="etcd"):
            async for _ in PodAPI(Scripted(list_namespaced_pod=broken)).watch_pods(
                "ns", "a=b", "1"
            ):
                pass

    run(body())


def test_connection_failures_become_backend_errors():
    class Down:
        async def read_namespaced_pod(self, *args, **kwargs):
            raise OSError("connection refused")

    async def body():
        with pytest.raises(BuildBackendError, match="connection refused"):
            await PodAPI(Down()).read_pod("ns", "p")

    run(body())


def test_namespace_comes_from_the_environment_or_the_service_account(tmp_path):
    ns_file = tmp_path / "namespace"
    assert (
        k8s_api.current_namespace(environ={"POD_NAMESPACE": "from-env"}, namespace_file=ns_file)
        == "from-env"
    )
    assert k8s_api.current_namespace(environ={}, namespace_file=ns_file) == "default"
    ns_file.write_text("from-sa\n")
    assert k8s_api.current_namespace(environ={}, namespace_file=ns_file) == "from-sa"


def test_constructed_by_the_launcher_with_its_config(api):
    """HubLauncher makes its counter as klass(parent=self, log=...): the
    PodCountCache section of the config (which the chart writes) applies."""
    from traitlets.config import Config, LoggingConfigurable

    config = Config()
    config.PodCountCache.namespace = "jhub"
    config.PodCountCache.label_selector = "component=singleuser-server,app=jupyterhub"
    launcher = LoggingConfigurable(config=config)

    async def body():
        api.add_pod(user_pod("jupyter-1", repo=REPO_A), namespace="jhub")
        api.add_pod(user_pod("jupyter-2", repo=REPO_A), namespace="other")
        cache = PodCountCache(parent=launcher, log=launcher.log, k8s_api=api)
        assert cache.namespace == "jhub"
        await cache.start()
        assert cache.count() == 1
        (listing,) = [c for c in api.calls_to("list_namespaced_pod") if not c.kwargs.get("watch")]
        assert listing.args == ("jhub",)
        assert listing.kwargs["label_selector"] == "component=singleuser-server,app=jupyterhub"
        await cache.close()

    run(body())
