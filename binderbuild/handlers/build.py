"""``GET /build/{provider}/{spec}``: the Binder protocol's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import cast

from tornado.iostream import StreamClosedError

from binderbuild.errors import BinderBuildError, error_status
from binderbuild.events import KEEPALIVE, NO_RECONNECT, ProgressEvent, encode_sse, failed
from binderbuild.handlers.base import BaseHandler
from binderbuild.models import BuildRequest

log = logging.getLogger("binderbuild.web")

_DONE = object()

# Values of ?build_only= (case-insensitive); anything else is a 400.
_TRUE_VALUES = frozenset({"true", "1", "yes"})
_FLAG_VALUES = _TRUE_VALUES | {"false", "0", "no"}


class EventStreamHandler(BaseHandler):
    """Writes an async iterator of events as Server-Sent Events.

    The iterator runs in its own task so that keepalives can be written while
    it is idle, and so a client that disconnects cancels exactly its own
    consumer (never the shared build behind it).
    """

    def start_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream

    async def stream(self, events: AsyncIterator[tuple[int | None, ProgressEvent]]) -> None:
        queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1000)

        async def pump() -> None:
            try:
                async for item in events:
                    await queue.put(item)
            except BinderBuildError as exc:
                await queue.put((None, failed(exc.message, error_status(exc))))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("event stream crashed")
                await queue.put((None, failed(f"Internal error: {type(exc).__name__}", 500)))
            await queue.put(_DONE)

        producer = asyncio.create_task(pump())
        interval = self.ctx.settings.keepalive_interval
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), interval)
                except TimeoutError:
                    self.write(KEEPALIVE)
                    await self.flush()
                    continue
                if item is _DONE:
                    break
                event_id, ev = cast(tuple[int | None, ProgressEvent], item)
                self.write(encode_sse(ev, event_id))
                await self.flush()
                if ev.phase.is_final:
                    break
            self.write(NO_RECONNECT)
            await self.flush()
        except StreamClosedError:
            log.debug("client left the event stream")
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
        with contextlib.suppress(StreamClosedError):
            self.finish()

    def on_connection_close(self) -> None:
        # The write loop notices at its next write; nothing else to release.
        super().on_connection_close()


class BuildHandler(EventStreamHandler):
    async def get(self, *_route_args: str, **_route_kwargs: str) -> None:
        provider_id, spec = self.raw_provider_and_spec("build/")
        flag = self.get_argument("build_only", "false").lower()
        if flag not in _FLAG_VALUES:
            # A malformed request is refused before any stream opens.
            self.write_json(
                {"message": "build_only must be true or false.", "status_code": 400}, 400
            )
            return
        build_only = flag in _TRUE_VALUES
        accept = self.request.headers.get("Accept", "")
        if "text/event-stream" not in accept:
            # As BinderHub answers: the stream opens and its one event says
            # what is wrong, so a client that reads events (curl, scripts)
            # sees the reason instead of an empty HTTP error.
            self.start_stream()
            message = (
                "Missing Accept header: this endpoint streams Server-Sent Events, "
                "send 'Accept: text/event-stream'.\n"
            )
            self.write(encode_sse(failed(message, 400)))
            self.write(NO_RECONNECT)
            self.finish()
            return
        settings = self.ctx.settings
        if build_only and not settings.allow_build_only:
            self.write_json(
                {"message": "build_only is not enabled on this deployment.", "status_code": 400},
                400,
            )
            return
        if settings.require_build_only:
            build_only = True
        request = BuildRequest(
            provider_id=provider_id,
            spec=spec,
            build_only=build_only,
            client_ip=self.client_ip,
            user=await self.ctx.current_user_name(self),
            launch_host=self.launch_host,
        )
        # Errors here (unknown provider, bad spec, refused) are raised before
        # the stream starts, so they are plain HTTP answers (write_error).
        target = self.ctx.pipeline.validate(request)
        await self.ctx.admit(self, request)
        self.start_stream()
        await self.stream(_unnumbered(self.ctx.pipeline.run(target)))


async def _unnumbered(
    events: AsyncIterator[ProgressEvent],
) -> AsyncIterator[tuple[int | None, ProgressEvent]]:
    # The Binder protocol's /build stream carries no event ids.
    async for ev in events:
        yield None, ev
