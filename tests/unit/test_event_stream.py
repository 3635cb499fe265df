"""Issue 15: event streams at Tornado's floor. ``EventStreamHandler`` in a
real Tornado server on loopback, fed by one shared source of events (as many
clients follow one build): no task per stream beyond the handler's own,
every stream gets every event, keepalives while idle, and a client that
leaves closes its iterator at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import tornado.httpserver
import tornado.web

from binderbuild.errors import BuildFailed
from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.handlers.build import EventStreamHandler
from binderbuild.models import BuildRequest
from binderbuild.pipeline import Pipeline, RunOutcome
from tests.unit import test_pipeline
from tests.unit.fakes import Script, until
from tests.unit.test_pipeline import SPEC


class Source:
    """A build's event list with one wake-up, like ``Build.follow``."""

    def __init__(self) -> None:
        self.events: list[ProgressEvent] = []
        self.changed = asyncio.Event()
        self.followers = 0

    def add(self, ev: ProgressEvent) -> None:
        self.events.append(ev)
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncIterator[tuple[int | None, ProgressEvent]]:
        async for ev in self.follow_plain():
            yield None, ev

    async def follow_plain(self) -> AsyncIterator[ProgressEvent]:
        self.followers += 1
        try:
            index = 0
            while True:
                while index < len(self.events):
                    ev = self.events[index]
                    yield ev
                    index += 1
                    if ev.phase.is_final:
                        return
                await self.changed.wait()
        finally:
            self.followers -= 1


class Handler(EventStreamHandler):
    async def get(self) -> None:
        self.start_stream()
        await self.stream(self.settings["source"].follow())


class PlainHandler(EventStreamHandler):
    async def get(self) -> None:
        self.start_stream()
        await self.stream(self.settings["source"].follow_plain())


async def serve(
    source: Source, keepalive: float, handler: type[EventStreamHandler] = Handler
) -> tuple[tornado.httpserver.HTTPServer, int]:
    ctx = SimpleNamespace(settings=SimpleNamespace(keepalive_interval=keepalive))
    app = tornado.web.Application([(r"/events", handler)], binderbuild=ctx, source=source)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    return reader, writer


def run(coro: Any) -> None:
    asyncio.run(coro)


def test_streams_cost_no_task_of_their_own_and_all_get_every_event() -> None:
    async def main() -> None:
        source = Source()
        server, port = await serve(source, keepalive=0.3)
        before = len(asyncio.all_tasks())
        clients = [await open_stream(port) for _ in range(40)]
        await until(lambda: source.followers == 40)
        await asyncio.sleep(0.05)
        # Tornado's two tasks per connection (its request loop, the
        # handler) and nothing more: no pump, queue getter or wait_for task.
        assert len(asyncio.all_tasks()) - before <= 2 * 40, len(asyncio.all_tasks()) - before
        for i in range(3):
            source.add(event(Phase.BUILDING, f"step {i}\n"))
        await asyncio.sleep(0.7)  # idle: keepalives
        source.add(event(Phase.READY, "done\n"))
        for reader, writer in clients:
            body = (await asyncio.wait_for(reader.read(), 5)).decode()
            assert [f"step {i}" in body for i in range(3)] == [True] * 3
            assert '"phase": "ready"' in body
            assert ":keepalive" in body
            assert "retry: 2147483647" in body
            writer.close()
        assert source.followers == 0
        server.stop()

    run(main())


def test_a_client_leaving_closes_its_iterator_at_once() -> None:
    async def main() -> None:
        source = Source()
        server, port = await serve(source, keepalive=0.2)
        reader, writer = await open_stream(port)
        stay_reader, stay_writer = await open_stream(port)
        await until(lambda: source.followers == 2)
        writer.close()
        # Noticed at the latest by the next keepalive write.
        await until(lambda: source.followers == 1, timeout=3)
        source.add(event(Phase.READY, "done\n"))
        body = (await asyncio.wait_for(stay_reader.read(), 5)).decode()
        assert '"phase": "ready"' in body
        stay_writer.close()
        server.stop()

    run(main())


def test_events_without_ids_need_no_wrapper_and_headers_are_not_kept() -> None:
    async def main() -> None:
        source = Source()
        server, port = await serve(source, keepalive=0.2, handler=PlainHandler)
        loop: Any = asyncio.get_running_loop()
        before = len(loop._asyncgens)
        clients = [await open_stream(port) for _ in range(10)]
        await until(lambda: source.followers == 10)
        source.add(event(Phase.BUILDING, "step\n"))
        await asyncio.sleep(0.5)
        # One generator per stream: the source's own (as /build streams walk
        # the pipeline's events without a generator adding ids).
        assert len(loop._asyncgens) - before == 10, len(loop._asyncgens) - before
        source.add(event(Phase.READY, "done\n"))
        for reader, writer in clients:
            head, _, body = (
                (await asyncio.wait_for(reader.read(), 5)).decode().partition("\r\n\r\n")
            )
            # The headers still reach the client (they are dropped only once written).
            assert "Content-Type: text/event-stream" in head
            assert "Cache-Control: no-cache" in head
            assert "step" in body and '"phase": "ready"' in body and ":keepalive" in body
            assert "id:" not in body
            writer.close()
        server.stop()

    run(main())


# --- /build streams that join a running build (Build subscribers) ---------------------


class BuildStreamHandler(EventStreamHandler):
    """What BuildHandler does with an admitted request: join a running build
    as a subscriber when the pipeline can tell without I/O, else run."""

    async def get(self) -> None:
        pipeline: Pipeline = self.settings["pipeline"]
        target = pipeline.validate(BuildRequest(provider_id="fake", spec=SPEC, build_only=True))
        self.start_stream()
        joined = pipeline.try_join(target)
        if joined is not None:
            await self.stream(None, joined)
        else:
            await self.stream(pipeline.run(target))


async def serve_pipeline(pipeline: Pipeline, keepalive: float) -> tuple[Any, int]:
    ctx = SimpleNamespace(settings=SimpleNamespace(keepalive_interval=keepalive), pipeline=pipeline)
    app = tornado.web.Application(
        [(r"/events", BuildStreamHandler)], binderbuild=ctx, pipeline=pipeline
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, sock.getsockname()[1]


def body_of(raw: bytes) -> str:
    """The SSE body without keepalive comments (their number varies)."""
    return raw.decode().partition("\r\n\r\n")[2].replace(":keepalive\n\n", "")


@pytest.mark.parametrize("fails", [False, True])
def test_joined_streams_get_the_same_bytes_as_the_first_without_a_generator(fails: bool) -> None:
    async def main() -> None:
        w = test_pipeline.world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate, error=BuildFailed("boom") if fails else None)
        server, port = await serve_pipeline(w.pipeline, keepalive=0.2)
        target = w.target(build_only=True)
        assert w.pipeline.try_join(target) is None  # nothing resolved, nothing runs
        first = await open_stream(port)
        await until(lambda: len(w.builds.builds()) == 1)
        build = w.builds.builds()[0]
        await until(lambda: len(build.events) >= 3 and build.followers == 1)
        assert w.pipeline.try_join(w.target(build_only=True, force_rebuild=True)) is None
        loop: Any = asyncio.get_running_loop()
        gens, tasks = len(loop._asyncgens), len(asyncio.all_tasks())
        joined = [await open_stream(port) for _ in range(20)]
        await until(lambda: build.followers == 21)
        await asyncio.sleep(0.05)
        # No generator per joined stream, and no handler task either while
        # the build runs: only Tornado's connection loop (one per stream).
        assert len(loop._asyncgens) - gens == 0, len(loop._asyncgens) - gens
        assert len(asyncio.all_tasks()) - tasks <= 20, len(asyncio.all_tasks()) - tasks
        build.append(event(Phase.BUILDING, "live line\n"))
        await asyncio.sleep(0.5)  # idle: keepalives for everyone
        gate.set()
        raws = [await asyncio.wait_for(reader.read(), 5) for reader, _ in [first, *joined]]
        expected = body_of(raws[0])
        assert "live line" in expected and "retry: 2147483647" in expected
        if fails:
            assert '"phase": "failed"' in expected and '"status_code": 500' in expected
        else:
            assert '"phase": "ready"' in expected and "Built image." not in expected
        for raw in raws[1:]:
            assert b":keepalive\n\n" in raw
            assert body_of(raw) == expected  # byte-identical events
        for _, writer in [first, *joined]:
            writer.close()
        assert build.followers == 0
        outcome = RunOutcome.FAILURE if fails else RunOutcome.SUCCESS
        assert [r.outcome for r in w.reports] == [outcome] * 21
        assert {r.image.name for r in w.reports if r.image} == {build.image_name}
        assert all(r.ref is not None and r.timings.build >= 0 for r in w.reports)
        server.stop()
        await w.builds.close()

    run(main())


def test_a_joined_client_leaving_is_reported_and_stops_following() -> None:
    async def main() -> None:
        w = test_pipeline.world()
        gate = asyncio.Event()
        w.builder.default = Script(gate=gate)
        server, port = await serve_pipeline(w.pipeline, keepalive=0.2)
        first = await open_stream(port)
        await until(lambda: len(w.builds.builds()) == 1)
        build = w.builds.builds()[0]
        await until(lambda: build.followers == 1)
        _, leaving = await open_stream(port)
        await until(lambda: build.followers == 2 and len(build._subscribers) == 1)
        leaving.close()
        # Noticed at the latest by the next keepalive write.
        await until(lambda: build.followers == 1 and not build._subscribers, timeout=3)
        assert [r.outcome for r in w.reports] == [RunOutcome.ABANDONED]
        assert not build.state.finished  # the shared build goes on
        gate.set()
        assert '"phase": "ready"' in body_of(await asyncio.wait_for(first[0].read(), 5))
        first[1].close()
        server.stop()
        await w.builds.close()

    run(main())
