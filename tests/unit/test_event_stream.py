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

import tornado.httpserver
import tornado.web

from binderbuild.events import Phase, ProgressEvent, event
from binderbuild.handlers.build import EventStreamHandler
from tests.unit.fakes import until


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
