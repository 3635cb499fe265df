"""The real kubernetes_asyncio client, over HTTP, against a loopback API server.

No cluster exists here, but the client library can still be exercised for
real: a small aiohttp server on 127.0.0.1 speaks the pod endpoints of the
Kubernetes API (JSON bodies, streamed watches and logs, Status errors),
backed by the same in-memory cluster as the other tests. KubernetesBuilder
gets nothing injected: it reads a kubeconfig naming that server, so URL
building, query parameters, request bodies and streamed responses all go
through kubernetes_asyncio and aiohttp as they would against a cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from traitlets.config import Config

from binderbuild.builders.base import BuildResources
from binderbuild.builders.kubernetes import KubernetesBuilder
from binderbuild.errors import BuildFailed
from binderbuild.events import Phase
from binderbuild.k8s_quota import PodCountCache
from tests.kubernetes.conftest import Collector, make_job, run, until
from tests.kubernetes.fake_k8s import FakeCoreV1Api, FakeResponse

# Query parameters of the API -> keyword arguments of CoreV1Api methods.
_PARAMS = {
    "labelSelector": ("label_selector", str),
    "resourceVersion": ("resource_version", str),
    "timeoutSeconds": ("timeout_seconds", int),
    "tailLines": ("tail_lines", int),
    "sinceSeconds": ("since_seconds", int),
    "container": ("container", str),
    "gracePeriodSeconds": ("grace_period_seconds", int),
}


class LoopbackApiServer:
    """The pod endpoints of the Kubernetes API, served from a FakeCoreV1Api."""

    def __init__(self, fake: FakeCoreV1Api) -> None:
        self.fake = fake
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.app = web.Application()
        base = "/api/v1/namespaces/{ns}/pods"
        self.app.router.add_post(base, self.create)
        self.app.router.add_get(base, self.list)
        self.app.router.add_get(base + "/{name}", self.read)
        self.app.router.add_delete(base + "/{name}", self.delete)
        self.app.router.add_get(base + "/{name}/log", self.log)
        # A client that goes away cancels its handler, as the API server ends
        # a watch whose client left.
        self.runner = web.AppRunner(self.app, handler_cancellation=True)
        self.url = ""

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        # End the streams still open, so that shutting down does not wait for
        # them.
        self.fake.end_watches()
        for stream in [*self.fake.log_streams, *self.fake.stalled_streams]:
            stream.content.end()
        await self.runner.cleanup()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                    "contexts": [
                        {"name": "loopback", "context": {"cluster": "loopback", "user": "tester"}}
                    ],
                    "current-context": "loopback",
                }
            )
        )
        return path

    @staticmethod
    def _kwargs(request: web.Request) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"_preload_content": False}
        for key, value in request.query.items():
            if key in _PARAMS:
                name, kind = _PARAMS[key]
                kwargs[name] = kind(value)
            # The API server parses booleans like Go's strconv.ParseBool, and
            # the client sends Python's "True".
            elif key in ("watch", "follow", "timestamps"):
                kwargs[key] = value.lower() in ("true", "t", "1")
            elif key == "allowWatchBookmarks":
                kwargs["allow_watch_bookmarks"] = value.lower() in ("true", "t", "1")
        return kwargs

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], Any]:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.query), body))
        return self._kwargs(request), body

    async def _answer(self, request: web.Request, resp: FakeResponse) -> web.StreamResponse:
        body = await resp.read()
        if body or resp.status >= 300:
            return web.Response(
                status=resp.status,
                body=body,
                content_type="application/json",
                headers=resp.headers,
            )
        stream = web.StreamResponse(status=resp.status)
        stream.content_type = "application/json"
        await stream.prepare(request)
        try:
            while chunk := await resp.content.readany():
                await stream.write(chunk)
        except ConnectionResetError:
            # The test cut the stream: drop the connection mid-body, as a
            # failing node or proxy would.
            assert request.transport is not None
            request.transport.abort()
            return stream
        finally:
            resp.close()
        await stream.write_eof()
        return stream

    async def create(self, request: web.Request) -> web.StreamResponse:
        kwargs, body = await self._record(request)
        resp = await self.fake.create_namespaced_pod(request.match_info["ns"], body, **kwargs)
        return await self._answer(request, resp)

    async def list(self, request: web.Request) -> web.StreamResponse:
        kwargs, _ = await self._record(request)
        resp = await self.fake.list_namespaced_pod(request.match_info["ns"], **kwargs)
        return await self._answer(request, resp)

    async def read(self, request: web.Request) -> web.StreamResponse:
        kwargs, _ = await self._record(request)
        resp = await self.fake.read_namespaced_pod(
            request.match_info["name"], request.match_info["ns"], **kwargs
        )
        return await self._answer(request, resp)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        kwargs, body = await self._record(request)
        resp = await self.fake.delete_namespaced_pod(
            request.match_info["name"], request.match_info["ns"], body=body, **kwargs
        )
        return await self._answer(request, resp)

    async def log(self, request: web.Request) -> web.StreamResponse:
        kwargs, _ = await self._record(request)
        resp = await self.fake.read_namespaced_pod_log(
            request.match_info["name"], request.match_info["ns"], **kwargs
        )
        return await self._answer(request, resp)


def http_builder(kubeconfig: Path, **traits: Any) -> KubernetesBuilder:
    config = Config()
    settings = {
        "kubeconfig": str(kubeconfig),
        "build_namespace": "ns",
        "instance_name": "bb",
        "push_secret": "bb-push",
        "log_end_grace": 0.5,
        "log_resume_delay": 0.05,
        "build_cleanup_interval": 3600.0,
        **traits,
    }
    for key, value in settings.items():
        config.KubernetesBuilder[key] = value
    return KubernetesBuilder(
        config=config,
        resources=BuildResources(memory_limit=1 << 30),
        log=logging.getLogger("test.http"),
    )


def with_server(fake: FakeCoreV1Api, body: Callable[[LoopbackApiServer], Awaitable[None]]) -> None:
    """Run one test body with a loopback API server up, stopping it after."""

    async def main() -> None:
        server = LoopbackApiServer(fake)
        await server.start()
        try:
            await body(server)
        finally:
            await server.stop()

    run(main())


@pytest.fixture
def fake() -> FakeCoreV1Api:
    return FakeCoreV1Api()


def test_build_over_http_with_the_real_client(fake, tmp_path):
    async def body(server):
        builder = http_builder(server.kubeconfig(tmp_path / "kubeconfig"))
        job = make_job()
        name = job.image.build_name
        collector = Collector(builder.build(job))
        await until(lambda: ("ns", name) in fake.pods, what="pod created over HTTP")
        fake.unschedulable(name, "0/1 nodes are available")
        await until(lambda: any("0/1 nodes are available" in m for m in collector.messages))
        fake.schedule(name)
        fake.start(name)
        await until(lambda: fake.log_streams, what="log followed over HTTP")
        fake.log_json(name, "fetching", "Cloning...\n")
        # Longer than aiohttp's 64 KiB line buffer. (Words, not one run of
        # letters: Scrubber's URL pattern is quadratic on long runs.)
        fake.log_json(name, "building", "word " * 40_000 + "\n")
        fake.finish(name, 0)
        await collector.done()
        assert collector.error is None
        phases = [e.phase for e in collector.events]
        assert Phase.FETCHING in phases and Phase.BUILDING in phases
        assert any(len(m) > 100_000 for m in collector.messages)
        # What went over the wire.
        (create,) = [r for r in server.requests if r[0] == "POST"]
        assert create[3]["metadata"]["name"] == name
        assert create[3]["spec"]["restartPolicy"] == "Never"
        (delete,) = [r for r in server.requests if r[0] == "DELETE"]
        assert delete[3]["preconditions"] == {"uid": fake.created_uids[0]}
        watch = next(r for r in server.requests if r[2].get("watch") == "True")
        assert watch[2]["labelSelector"] == (
            "app.kubernetes.io/component=build,app.kubernetes.io/instance=bb,"
            "app.kubernetes.io/name=binderbuild"
        )
        log = next(r for r in server.requests if r[1].endswith("/log"))
        assert log[2]["follow"] == "True" and log[2]["timestamps"] == "True"
        assert log[2]["container"] == "builder"
        assert ("ns", name) not in fake.pods
        await builder.close()

    with_server(fake, body)


def test_attach_resume_and_failure_over_http(fake, tmp_path):
    async def body(server):
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        first, second = http_builder(kubeconfig), http_builder(kubeconfig)
        job = make_job()
        name = job.image.build_name
        a = Collector(first.build(job))
        await until(lambda: ("ns", name) in fake.pods)
        fake.start(name)
        await until(lambda: len(fake.log_streams) == 1)
        fake.log(name, "one", "two")
        b = Collector(second.build(job))  # 409 over HTTP: attach
        await until(lambda: len(fake.log_streams) == 2)
        await until(lambda: "two\n" in a.messages and "two\n" in b.messages)
        assert fake.break_logs(name) == 2  # both connections dropped mid-stream
        fake.log(name, "three")
        await until(lambda: len(fake.log_streams) == 2, timeout=10, what="both resumed")
        fake.log_json(name, "failed", "Step 3 failed\n")
        fake.finish(name, 1)
        await a.done()
        await b.done()
        for c in (a, b):
            assert isinstance(c.error, BuildFailed)
            assert str(c.error) == "The build exited with code 1: Step 3 failed"
            lines = [m for m in c.messages if m in ("one\n", "two\n", "three\n")]
            assert lines == ["one\n", "two\n", "three\n"]
        await first.close()
        await second.close()

    with_server(fake, body)


def test_half_open_log_streams_over_http(fake, tmp_path):
    """The server keeps the log connections open and sends nothing: while the
    container runs, the read timeout makes the client ask again; once it has
    ended, the watch ends the build and one last read brings the rest."""

    async def body(server):
        builder = http_builder(server.kubeconfig(tmp_path / "kubeconfig"), log_read_timeout=0.5)
        job = make_job()
        name = job.image.build_name
        c = Collector(builder.build(job))
        await until(lambda: ("ns", name) in fake.pods)
        fake.start(name)
        await until(lambda: fake.log_streams, what="log followed over HTTP")
        fake.log(name, "one")
        await until(lambda: "one\n" in c.messages)
        assert fake.stall_logs(name) == 1
        fake.log(name, "two")
        await until(lambda: "two\n" in c.messages, timeout=5, what="resumed after the read timeout")
        builder.log_read_timeout = 600.0  # from now on only the watch can end it
        await until(lambda: fake.log_streams, what="following again")
        assert fake.stall_logs(name) == 1
        fake.log(name, "three")
        fake.finish(name, 0)
        await c.done(timeout=5)
        assert c.error is None
        assert [m for m in c.messages if m in ("one\n", "two\n", "three\n")] == [
            "one\n",
            "two\n",
            "three\n",
        ]
        last = [r for r in server.requests if r[1].endswith("/log")][-1]
        assert last[2]["follow"] == "False"
        await builder.close()

    with_server(fake, body)


def test_quota_cache_over_http(fake, tmp_path):
    async def body(server):
        fake.add_pod(
            {
                "metadata": {
                    "name": "jupyter-a",
                    "labels": {"component": "singleuser-server"},
                    "annotations": {"binderbuild/repo-url": "https://github.com/o/r"},
                },
                "spec": {"containers": [{"name": "notebook"}]},
                "status": {"phase": "Running"},
            }
        )
        cache = PodCountCache(kubeconfig=str(server.kubeconfig(tmp_path / "kc")), namespace="ns")
        await cache.start()
        assert cache.count() == 1 and cache.count("https://github.com/o/r") == 1
        fake.remove("jupyter-a")
        await until(lambda: cache.count() == 0)
        await cache.close()

    with_server(fake, body)


def test_throttling_and_admission_over_http(fake, tmp_path):
    """Through aiohttp's real headers: a 429 with Retry-After is waited out
    and retried; an admission refusal (403 Status body) is not retried and
    reads as one."""

    async def body(server):
        builder = http_builder(server.kubeconfig(tmp_path / "kubeconfig"), api_retry_deadline=5.0)
        fake.answer("create_namespaced_pod", 429, retry_after="1")
        job = make_job()
        name = job.image.build_name
        loop = asyncio.get_running_loop()
        started = loop.time()
        c = Collector(builder.build(job))
        await until(lambda: ("ns", name) in fake.pods, timeout=5)
        assert loop.time() - started >= 1.0
        creates = [r for r in server.requests if r[0] == "POST"]
        assert len(creates) == 2
        fake.start(name)
        fake.finish(name, 0)
        await c.done(timeout=5)
        assert c.error is None

        fake.reject_creates(
            403, "Forbidden", 'pods "x" is forbidden: exceeded quota: builds, limited: pods=4'
        )
        other = Collector(builder.build(make_job(repo="https://git.example.org/o/other")))
        await other.done(timeout=5)
        assert "The cluster refused the build pod (HTTP 403)" in str(other.error)
        assert "exceeded quota" in str(other.error)
        assert len([r for r in server.requests if r[0] == "POST"]) == 3
        await builder.close()

    with_server(fake, body)
