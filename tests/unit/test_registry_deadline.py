"""One deadline per registry operation, and the push watch (issue 12).

A scripted transport stands in for the network (each request times out,
is refused, or answers), so these pin down the client's rules: attempts
cut to the time left, timed-out attempts retried, refused ones not, the
push watch's deadline restarted by every answer. The same behaviour against
a real registry process (stopped, SIGSTOPped) is tests/chaos/test_registry_unresponsive.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from binderbuild.builders.base import Builder
from binderbuild.builds import BuildManager, BuildState
from binderbuild.errors import RegistryError, TransportError
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.http import HttpClient, HttpRequestSpec, HttpResponse
from binderbuild.models import BuildJob, ImageSpec
from binderbuild.registry import RegistryClient
from tests.unit.test_builds import job

IMAGE = ImageSpec("127.0.0.1:5000/binder-repo", "abc", "build-x")
URL = "http://127.0.0.1:5000"


class ScriptedTransport(HttpClient):
    """Answers from a script: "hang" (times out after the request's timeout),
    "refuse" (fails at once), or an HTTP status."""

    def __init__(self, script: list[Any], then: Any = "hang") -> None:
        super().__init__()
        self.script = list(script)
        self.then = then
        self.timeouts: list[float] = []

    async def send(self, spec: HttpRequestSpec) -> HttpResponse:
        self.timeouts.append(spec.timeout)
        step = self.script.pop(0) if self.script else self.then
        if step == "hang":
            await asyncio.sleep(spec.timeout)
            raise TransportError(f"{spec.url}: HTTP 599: Timeout during request")
        if step == "refuse":
            raise TransportError(
                f"{spec.url}: ConnectionRefusedError: [Errno 111] Connection refused"
            )
        return HttpResponse(status=int(step), headers={}, body=b"")


def client(transport: HttpClient, timeout: float, unresponsive: float) -> RegistryClient:
    return RegistryClient(transport, URL, timeout=timeout, unresponsive_timeout=unresponsive)


def test_a_hung_registry_fails_the_check_within_the_deadline() -> None:
    async def scenario() -> None:
        transport = ScriptedTransport([])
        started = time.monotonic()
        with pytest.raises(RegistryError) as caught:
            await client(transport, timeout=5.0, unresponsive=0.6).image_digest(IMAGE)
        elapsed = time.monotonic() - started
        message = caught.value.message
        assert "did not answer within 0.6 seconds (DockerRegistry.unresponsive_timeout)" in message
        assert f"not building {IMAGE.name}" in message
        # The per-request timeout (5 s) was cut to the time left.
        assert transport.timeouts and all(t <= 0.6 for t in transport.timeouts)
        assert elapsed < 5.0

    asyncio.run(scenario())


def test_a_timed_out_attempt_is_tried_again_within_the_time_left() -> None:
    async def scenario() -> None:
        transport = ScriptedTransport(["hang", 404])
        assert await client(transport, timeout=0.2, unresponsive=2.0).image_digest(IMAGE) is None
        assert len(transport.timeouts) == 2
        assert transport.timeouts[0] == pytest.approx(0.2)
        assert transport.timeouts[1] <= 0.2

    asyncio.run(scenario())


def test_a_refused_registry_fails_at_once() -> None:
    async def scenario() -> None:
        transport = ScriptedTransport(["refuse"], then=404)
        with pytest.raises(RegistryError) as caught:
            await client(transport, timeout=5.0, unresponsive=30.0).image_digest(IMAGE)
        assert len(transport.timeouts) == 1
        assert f"The container registry at {URL} is unreachable" in caught.value.message
        assert "Connection refused" in caught.value.message

    asyncio.run(scenario())


def test_the_push_watch_restarts_its_deadline_on_every_answer() -> None:
    async def scenario() -> None:
        # Answers (any status) four times, then falls silent.
        transport = ScriptedTransport([200, 401, 500, 200], then="hang")
        registry = client(transport, timeout=10.0, unresponsive=0.4)
        started = time.monotonic()
        error = await asyncio.wait_for(registry.wait_unresponsive(interval=0.1), 10)
        elapsed = time.monotonic() - started
        assert "did not answer for 0.4 seconds" in error.message
        assert "while the image was pushed" in error.message
        # Four answers about 0.1 s apart, then the whole deadline of silence.
        assert elapsed >= 0.4 + 3 * 0.1
        assert all(t <= 0.4 + 1e-6 for t in transport.timeouts)

    asyncio.run(scenario())


class PushingBuilder(Builder):
    """Builds, starts pushing, then waits for ``release`` (a hung push)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.closed = False

    async def build(self, job: BuildJob) -> AsyncIterator[ProgressEvent]:
        try:
            yield event(Phase.BUILDING, "step 1\n")
            yield event(Phase.PUSHING, "Pushing\n")
            await self.release.wait()
            yield event(Phase.PUSHING, "Pushed\n")
        finally:
            self.closed = not self.release.is_set()


def test_a_push_the_registry_stops_answering_fails_the_build() -> None:
    async def scenario() -> None:
        watched: list[str] = []

        async def watch() -> RegistryError:
            watched.append("started")
            await asyncio.sleep(0.05)
            return RegistryError("The container registry did not answer for 30 seconds.")

        builder = PushingBuilder()
        mgr = BuildManager(
            builder, concurrency=1, build_timeout=60, idle_timeout=60, push_watch=watch
        )
        build, _ = mgr.submit(job("push"))
        await asyncio.wait_for(build.wait(), 5)
        assert build.state is BuildState.FAILED
        assert build.error is not None and "did not answer" in build.error.message
        assert build.events[-1].phase is Phase.FAILED
        assert watched == ["started"] and builder.closed
        assert mgr.running == 0

    asyncio.run(scenario())


def test_a_push_that_ends_stops_its_watch() -> None:
    async def scenario() -> None:
        cancelled: list[bool] = []

        async def watch() -> RegistryError:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
            raise AssertionError("not reached")

        builder = PushingBuilder()
        asyncio.get_running_loop().call_later(0.05, builder.release.set)
        mgr = BuildManager(
            builder, concurrency=1, build_timeout=60, idle_timeout=60, push_watch=watch
        )
        build, _ = mgr.submit(job("done"))
        await asyncio.wait_for(build.wait(), 5)
        assert build.state is BuildState.SUCCEEDED
        await asyncio.sleep(0.01)
        assert cancelled == [True]
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("push watch")]

    asyncio.run(scenario())
