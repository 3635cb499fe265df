"""``GET /build/{provider}/{spec}``: the Binder protocol's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
from asyncio import Future
from collections.abc import AsyncIterator

from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError

from binderbuild.builds import Build
from binderbuild.errors import BinderBuildError, error_status
from binderbuild.events import (
    KEEPALIVE,
    NO_RECONNECT,
    Phase,
    ProgressEvent,
    encode_sse,
    failed,
)
from binderbuild.handlers.base import BaseHandler
from binderbuild.logging_setup import set_request_id
from binderbuild.models import BuildRequest
from binderbuild.pipeline import JoinedRun

log = logging.getLogger("binderbuild.web")

# Values of ?build_only= (case-insensitive); anything else is a 400.
_TRUE_VALUES = frozenset({"true", "1", "yes"})
_FLAG_VALUES = _TRUE_VALUES | {"false", "0", "no"}


class _Keepalives:
    """One timer for every open stream of a loop: a stream that wrote nothing
    for ``interval`` seconds gets a keepalive comment. (One timer instead of
    a timeout per stream and per wait: 10,000 streams cost one callback every
    quarter interval.)"""

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float) -> None:
        self.loop = loop
        self.interval = interval
        self.streams: dict[EventStreamHandler, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, stream: EventStreamHandler) -> None:
        self.streams[stream] = None
        if self._timer is None:
            self._schedule()

    def discard(self, stream: EventStreamHandler) -> None:
        self.streams.pop(stream, None)
        if not self.streams and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self._timer = self.loop.call_later(max(0.01, self.interval / 4), self._tick)

    def _tick(self) -> None:
        self._timer = None
        due = self.loop.time() - self.interval
        for stream in list(self.streams):
            if stream._last_write <= due:
                stream._send_keepalive()
        if self.streams:
            self._schedule()


_keepalives: dict[tuple[asyncio.AbstractEventLoop, float], _Keepalives] = {}

# The tasks finishing joined streams after their build ended (kept referenced).
_after_builds: set[asyncio.Task[None]] = set()


class _SentHeaders(HTTPHeaders):
    """The response headers of every stream once they are written (Tornado
    reads a handler's headers only until then). Stays empty: a header set
    after the first write would not reach the client anyway."""

    def add(self, name: str, value: str, *args: object, **kwargs: object) -> None:
        pass

    def __setitem__(self, name: str, value: str) -> None:
        pass


_SENT = _SentHeaders()


def _keepalives_for(interval: float) -> _Keepalives:
    loop = asyncio.get_running_loop()
    shared = _keepalives.get((loop, interval))
    if shared is None:
        # Loops that are gone (tests run many) leave nothing behind.
        for key in [k for k in _keepalives if k[0].is_closed()]:
            del _keepalives[key]
        shared = _keepalives[(loop, interval)] = _Keepalives(loop, interval)
    return shared


class EventStreamHandler(BaseHandler):
    """Writes an async iterator of events as Server-Sent Events.

    The handler's own coroutine walks the iterator and writes each event: no
    task, queue or timeout per stream. Keepalives come from one shared timer
    (``_Keepalives``). A client that disconnects cancels exactly this
    handler's wait (the iterator's generators close, so the build it
    follows loses a follower at once), never the shared build behind it.

    What an open stream holds is kept small (10,000 streams following one
    build, docs/benchmarks.md): events without ids are walked as they come
    (no wrapper generator adding ids), and the response headers, written
    once, are dropped after the first write instead of living as long as
    the stream. A ``/build`` stream that joins a running build holds even
    less while it waits: no task or coroutine at all (``stream`` with a
    ``JoinedRun``; the build writes to it as a ``Build`` subscriber).
    """

    _last_write = 0.0
    # A joined run waiting for its build's end: set while the build writes
    # to this stream (no task of the handler runs then).
    _joined: JoinedRun | None = None
    _waiting = False  # suspended inside stream(): a client leaving may cancel it
    _client_left = False

    def start_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream

    async def _catch_up(self, build: Build) -> None:
        """Write the events ``build`` has so far. Each write is waited for (a
        long log to a slow client is not buffered whole); the final event
        ends the walk unwritten, as ``Pipeline.run`` does."""
        index = 0
        while index < len(build.events):
            ev = build.events[index]
            if ev.phase in (Phase.BUILT, Phase.FAILED) and build.state.finished:
                break
            await self._send(encode_sse(ev))
            index += 1

    def deliver(self, data: bytes) -> None:
        """A live event of the followed build (``Build`` fan-out)."""
        if not self._client_left:
            self._push(data)

    def build_ended(self) -> None:
        """The followed build finished: the rest of the run (``failed``, or
        ``ready``/the launch) in a task of its own, under this request's id."""
        if self._joined is not None:
            contextvars.copy_context().run(self._after_build)

    def _detach(self) -> JoinedRun:
        """Stop following the joined build (its end came, or the client left),
        under this request's id for what follows."""
        joined, self._joined = self._joined, None
        assert joined is not None
        joined.build.unsubscribe(self)
        joined.build.unwatch()
        set_request_id(getattr(self.request, "_binderbuild_request_id", None))
        return joined

    def _after_build(self) -> None:
        joined = self._detach()
        task = asyncio.get_running_loop().create_task(
            self.stream(self.ctx.pipeline.after_join(joined))
        )
        _after_builds.add(task)
        task.add_done_callback(_after_builds.discard)

    def _abandon_joined(self) -> None:
        """The client of a waiting joined stream left: report and close it."""
        joined = self._detach()
        _keepalives_for(self.ctx.settings.keepalive_interval).discard(self)
        log.debug("client left the event stream")
        self.ctx.pipeline.abandon_join(joined, asyncio.CancelledError())
        with contextlib.suppress(StreamClosedError):
            self.finish()

    async def stream(
        self,
        events: AsyncIterator[tuple[int | None, ProgressEvent]]
        | AsyncIterator[ProgressEvent]
        | None,
        joined: JoinedRun | None = None,
    ) -> None:
        """Write ``events``: ``(id, event)`` pairs, or events without ids.

        Or, with ``joined`` (and no ``events``), a run that joined a running
        build: the build's events so far, then its live events as the build
        hands them out (this handler is a ``Build`` subscriber: no
        generator, queue or task per stream while the build runs), then the
        rest of the run (``Pipeline.after_join``)."""
        keepalives = _keepalives_for(self.ctx.settings.keepalive_interval)
        self._task = asyncio.current_task()
        self._last_write = keepalives.loop.time()
        keepalives.add(self)
        self._waiting = True
        detached = False
        try:
            final = False
            try:
                if joined is not None:
                    # Follow the build in this frame (no coroutine of its
                    # own while it waits): catch up, then wait for its end
                    # while the build writes its live events here (deliver).
                    build = joined.build
                    build.watch()
                    try:
                        await self._catch_up(build)
                    except BaseException as exc:  # the client left, or the service stops
                        build.unwatch()
                        self.ctx.pipeline.abandon_join(joined, exc)
                        raise
                    if not build.state.finished:
                        # No await between the last catch-up write and
                        # subscribing: no event can fall between them. The
                        # handler then returns without finishing: while the
                        # build runs, no task, coroutine or future is kept
                        # for this stream; the build writes its events here
                        # (deliver), and its end (build_ended) or the client
                        # leaving (_left) takes over.
                        self._joined = joined
                        self._auto_finish = False
                        build.subscribe(self)
                        detached = True
                        return
                    build.unwatch()
                    events = self.ctx.pipeline.after_join(joined)
                    joined = None
                assert events is not None
                async for item in events:
                    if final:
                        continue  # nothing follows a final event on the wire
                    if isinstance(item, ProgressEvent):
                        ev, event_id = item, None
                    else:
                        event_id, ev = item
                    await self._send(encode_sse(ev, event_id))
                    final = ev.phase.is_final
                    # Keep walking after the final event: the iterator (the
                    # pipeline) then ends by itself, as a finished run.
            except BinderBuildError as exc:
                await self._send(encode_sse(failed(exc.message, error_status(exc))))
            except (StreamClosedError, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.exception("event stream crashed")
                await self._send(encode_sse(failed(f"Internal error: {type(exc).__name__}", 500)))
            await self._send(NO_RECONNECT)
        except StreamClosedError:
            log.debug("client left the event stream")
        except asyncio.CancelledError:
            if not self._client_left:
                raise  # cancelled by someone else (shutdown): not ours to swallow
            log.debug("client left the event stream")
        finally:
            self._waiting = False
            if not detached:
                keepalives.discard(self)
        if not detached:
            with contextlib.suppress(StreamClosedError):
                self.finish()

    async def _send(self, data: bytes) -> None:
        self.write(data)
        self._last_write = self._keepalive_loop_time()
        flushed = self.flush()
        if self._headers is not _SENT:
            # Written with this first flush; nothing reads them again.
            self._headers = _SENT
        await flushed

    def _keepalive_loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    def _send_keepalive(self) -> None:
        if self._client_left:
            return
        self._push(KEEPALIVE)

    def _push(self, data: bytes) -> None:
        """Write without waiting for the flush (keepalives, a build's live
        events); a failed flush means the client left."""
        self._last_write = self._keepalive_loop_time()
        try:
            self.write(data)
            flushed = self.flush()
        except StreamClosedError:
            self._left()
            return
        if self._headers is not _SENT:
            self._headers = _SENT
        flushed.add_done_callback(self._keepalive_flushed)

    def _keepalive_flushed(self, fut: Future[None]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._left()

    def _left(self) -> None:
        if not self._client_left:
            self._client_left = True
            if self._joined is not None:
                contextvars.copy_context().run(self._abandon_joined)
            elif self._waiting and self._task is not None:
                self._task.cancel()

    def on_connection_close(self) -> None:
        # Stop waiting for events nobody will read.
        self._left()
        super().on_connection_close()


PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class BuildHandler(EventStreamHandler):
    async def get(self, *_route_args: str, **_route_kwargs: str) -> None:
        # The spec is read from the path below; the route's decoded copies of
        # the (long) URL would otherwise live as long as the stream.
        del _route_args, _route_kwargs
        self.path_args, self.path_kwargs = [], {}
        provider_id, spec = self.raw_provider_and_spec("build/")
        flag = self.get_argument("build_only", "false").lower()
        if flag not in _FLAG_VALUES:
            # A malformed request is refused before any stream opens.
            self.write_json(
                {"message": "build_only must be true or false.", "status_code": 400}, 400
            )
            return
        build_only = flag in _TRUE_VALUES
        # A resource profile of the hub's spawner (docs/persistent-servers.md):
        # the spawner decides whether it exists and is allowed.
        profile = self.get_argument("profile", "")
        if profile and not PROFILE_NAME.fullmatch(profile):
            self.write_json({"message": "Invalid profile name.", "status_code": 400}, 400)
            return
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
            profile=profile,
        )
        # Errors here (unknown provider, bad spec, refused) are raised before
        # the stream starts, so they are plain HTTP answers (write_error).
        target = self.ctx.pipeline.validate(request)
        await self.ctx.admit(self, request)
        self.start_stream()
        # The Binder protocol's /build stream carries no event ids.
        joined = self.ctx.pipeline.try_join(target)
        if joined is not None:
            # A build that already runs: follow it without a generator chain
            # per stream (10,000 viewers of one build, docs/benchmarks.md).
            await self.stream(None, joined)
            return
        await self.stream(self.ctx.pipeline.run(target))
