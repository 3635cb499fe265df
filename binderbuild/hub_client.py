"""JupyterHub REST API client of the launcher, with binderbuild's only retry loop.

Every hub call goes through ``HubClient.call``: transport failures, 429 and
502/503/504 (a restarting hub, proxy or ingress) are retried with exponential
backoff; what is left becomes ``HubError`` whose message names the hub's own
reason. Nothing above this module retries a hub call again (BinderHub's
nested retry loops once kept users waiting for 40 minutes behind a hung hub).

One deadline per operation: a call (all its attempts and the waits between
them) ends by the caller's deadline and by ``unresponsive_timeout`` after it
began, whichever comes first, and every attempt's own timeout is cut to the
time left. A hub that accepts connections and answers nothing therefore
costs a launch ``unresponsive_timeout`` seconds, not attempts x timeout.

A request that changes something (POST) is never sent twice while the first
may still reach the hub: an attempt that got no answer in time is left
running in the background (a hung hub executes the requests queued in its
socket when it resumes, so closing ours would not take it back) and the call
fails instead of retrying. The caller may pass an ``inflight`` set that
holds such requests until they end, so a cleanup can wait for them before it
removes what they create.

``follow_progress`` reads the hub's spawn progress event stream
(``GET /users/{name}/server/progress``), handing every event to a callback,
and notices a hub that went quiet (no event and no keepalive) within
``unresponsive_timeout``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from binderbuild.errors import HubError, TransportError
from binderbuild.http import HttpClient, HttpResponse

log = logging.getLogger("binderbuild.hub")

# Statuses that say "not now" rather than "no": the hub, its proxy or an
# ingress is restarting or overloaded.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

# Requests that may be repeated: a duplicate (say, one still queued in a
# frozen hub's socket) does no harm.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 6  # per request, the first one included
    delay: float = 1.0  # before the second attempt; doubles each time
    max_delay: float = 8.0

    def delays(self) -> Iterator[float]:
        delay = self.delay
        for _ in range(max(self.attempts - 1, 0)):
            yield min(delay, self.max_delay)
            delay *= 2


def hub_reason(resp: HttpResponse) -> str:
    """The hub's own explanation of an error answer (its JSON ``message``)."""
    try:
        data = resp.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("message"):
        return str(data["message"])
    text = resp.body.decode("utf-8", "replace").strip()
    if text and len(text) < 300 and "<" not in text:
        return text
    return f"HTTP {resp.status}"


def transport_reason(exc: TransportError) -> str:
    # TransportError messages start with the URL; clients get the reason only
    # (the hub's internal address is nobody's business).
    parts = exc.message.split(": ", 1)
    return parts[-1] if parts[-1] else exc.message


def _sent_and_unanswered(exc: TransportError) -> bool:
    """True when the request may have reached the hub and got no answer in
    time (Tornado's "Timeout during request"); False when it was never sent
    (refused, timeout while connecting or in the queue, name resolution)."""
    reason = transport_reason(exc)
    return "Timeout" in reason and "connecting" not in reason and "queue" not in reason


class _NoAnswer(Exception):
    """An attempt still running (left in flight) after its timeout."""


def user_path(name: str) -> str:
    # JupyterHub's own escaping of user names in URLs.
    return f"users/{quote(name, safe='@~')}"


def server_path(name: str, server_name: str) -> str:
    if server_name:
        return f"{user_path(name)}/servers/{quote(server_name, safe='')}"
    return f"{user_path(name)}/server"


class HubClient:
    def __init__(
        self,
        http: HttpClient,
        api_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 20.0,
        unresponsive_timeout: float = 30.0,
        linger_timeout: float = 3600.0,
        stream_http: HttpClient | None = None,
    ) -> None:
        self.http = http
        # Progress streams stay open for the whole spawn, and unanswered POSTs
        # are left to finish: they get their own client so they never queue
        # behind (or block) short API calls.
        self.stream_http = stream_http or http
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout
        self.unresponsive_timeout = unresponsive_timeout
        # How long a POST left in flight may wait for the hub's answer.
        self.linger_timeout = linger_timeout
        self._headers = {"Authorization": f"token {token}", "Accept": "application/json"}
        self._detached: set[asyncio.Task[HttpResponse]] = set()

    def operation_deadline(self, deadline: float | None) -> float:
        """The deadline of one hub operation starting now: the caller's,
        and at most ``unresponsive_timeout`` away."""
        bound = time.monotonic() + self.unresponsive_timeout
        return bound if deadline is None else min(deadline, bound)

    def _attempt_timeout(self, deadline: float) -> float:
        """One attempt's timeout: ``request_timeout``, cut to the time left."""
        return max(min(self.request_timeout, deadline - time.monotonic()), 0.1)

    async def _attempt(
        self,
        method: str,
        url: str,
        hdrs: dict[str, str],
        json_body: Any,
        timeout: float,
        inflight: set[asyncio.Task[HttpResponse]] | None,
    ) -> HttpResponse:
        if method in IDEMPOTENT_METHODS:
            return await self.http.request(
                method, url, headers=hdrs, json_body=json_body, timeout=timeout
            )
        # Left running when it takes too long or our caller goes away: its
        # answer is the only sure sign that the hub has handled it.
        task = asyncio.ensure_future(
            self.stream_http.request(
                method, url, headers=hdrs, json_body=json_body, timeout=self.linger_timeout
            )
        )
        for holder in (self._detached, inflight):
            if holder is not None:
                holder.add(task)
                task.add_done_callback(holder.discard)
        task.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            raise _NoAnswer()
        return task.result()

    async def close(self) -> None:
        """Stop waiting for requests left in flight."""
        for task in list(self._detached):
            task.cancel()

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        deadline: float | None = None,
        headers: dict[str, str] | None = None,
        conflict_ok_on_retry: bool = False,
        retry_500: bool = True,
        attempts: int | None = None,
        inflight: set[asyncio.Task[HttpResponse]] | None = None,
    ) -> HttpResponse:
        """One hub API call with the retry loop. Returns the final response
        (any status the caller must interpret); raises HubError when the hub
        stayed unreachable, kept answering "not now" or did not answer within
        ``unresponsive_timeout`` (and the caller's ``deadline``).

        ``conflict_ok_on_retry``: a 409 on a retry means the earlier attempt
        did reach the hub (creating a user twice), so it is returned as 200.
        ``retry_500=False``: a 500 carries a real answer (a spawn that
        failed), so it is returned instead of retried.
        ``inflight``: a POST that got no answer in time stays in this set
        until it ends (see the module's docstring).
        """
        started = time.monotonic()
        op_deadline = self.operation_deadline(deadline)
        url = self.api_url + path
        hdrs = dict(self._headers)
        hdrs.update(headers or {})
        delays = (
            self.retry.delays()
            if attempts is None
            else RetryPolicy(attempts, self.retry.delay, self.retry.max_delay).delays()
        )
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            unanswered = False
            try:
                resp = await self._attempt(
                    method, url, hdrs, json_body, self._attempt_timeout(op_deadline), inflight
                )
            except _NoAnswer:
                # Still in flight: sending it again would queue a duplicate.
                raise HubError(
                    f"JupyterHub did not answer {method} {path.split('?')[0]} within "
                    f"{time.monotonic() - started:.0f} seconds."
                ) from None
            except TransportError as exc:
                unanswered = _sent_and_unanswered(exc)
                problem = f"JupyterHub is not reachable ({transport_reason(exc)})"
            else:
                if resp.status == 409 and attempt > 1 and conflict_ok_on_retry:
                    # An earlier attempt did get through: report it as done.
                    return dataclasses.replace(resp, status=200)
                if resp.status not in RETRY_STATUSES and not (resp.status == 500 and retry_500):
                    return resp
                problem = f"JupyterHub answered {resp.status}: {hub_reason(resp)}"
                retry_after = _retry_after(resp)
            if unanswered:
                problem = (
                    f"JupyterHub did not answer within {time.monotonic() - started:.0f} seconds"
                )
            delay = next(delays, None)
            if delay is None:
                raise HubError(f"{problem}; gave up after {attempt} attempts.")
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay >= op_deadline:
                if op_deadline == deadline:
                    raise HubError(f"{problem}; no time left to try again.")
                raise HubError(
                    f"{problem}; gave up after {self.unresponsive_timeout:g} seconds "
                    "(HubLauncher.hub_unresponsive_timeout)."
                )
            log.warning("hub %s %s: %s; retrying in %.1fs", method, path, problem, delay)
            await asyncio.sleep(delay)

    async def get_json(self, path: str, deadline: float | None = None) -> Any:
        resp = await self.call(
            "GET",
            path,
            deadline=deadline,
            headers={"Accept": "application/jupyterhub-pagination+json"},
        )
        if resp.status != 200:
            raise HubError(f"JupyterHub refused GET {path.split('?')[0]}: {hub_reason(resp)}")
        try:
            return resp.json()
        except ValueError:
            raise HubError(f"JupyterHub answered GET {path} with invalid JSON.") from None

    async def follow_progress(
        self,
        path: str,
        on_event: Callable[[dict[str, Any]], None],
        *,
        deadline: float,
    ) -> ProgressOutcome:
        """Read the progress stream at ``path`` until it ends.

        Each event (a JSON object) goes to ``on_event``; the first one with
        ``ready`` or ``failed`` ends the read and is returned as ``final``.
        Connecting is retried like ``call``. A stream cut in the middle (the
        hub went away) is not retried here: the outcome says so and the
        caller decides whether to look again. A stream that stays quiet (the
        hub sends a keepalive every few seconds) makes this ask the hub
        whether it is alive; one that does not answer within
        ``unresponsive_timeout`` of the stream's last word raises HubError.
        """
        url = self.api_url + path
        buffer = bytearray()
        outcome = ProgressOutcome()
        abandoned = False
        heard = [time.monotonic()]  # when the hub last said anything

        def on_chunk(chunk: bytes) -> None:
            heard[0] = time.monotonic()
            if abandoned or outcome.final is not None:
                return  # the hub closes the stream right after its final event
            outcome.received = True
            buffer.extend(chunk)
            while (end := buffer.find(b"\n\n")) >= 0:
                block = bytes(buffer[:end])
                del buffer[: end + 2]
                data = [ln[5:].strip() for ln in block.split(b"\n") if ln.startswith(b"data:")]
                if not data:
                    continue  # keepalive
                try:
                    ev = json.loads(b"\n".join(data))
                except ValueError:
                    continue
                if not isinstance(ev, dict):
                    continue
                if ev.get("ready") or ev.get("failed"):
                    outcome.final = ev
                    return
                on_event(ev)

        delays = self.retry.delays()
        connect_deadline = self.operation_deadline(deadline)
        try:
            while True:
                remaining = max(deadline - time.monotonic(), 0.1)
                heard[0] = time.monotonic()
                # Never cancelled (see the end of this method).
                fetch = asyncio.ensure_future(
                    self.stream_http.stream(
                        url,
                        on_chunk,
                        headers=self._headers,
                        timeout=remaining,
                        connect_timeout=self._attempt_timeout(connect_deadline),
                    )
                )
                fetch.add_done_callback(_retrieve)
                try:
                    resp = await self._watch(fetch, heard, deadline)
                except TransportError as exc:
                    if outcome.final is not None:
                        outcome.status = 200
                        return outcome
                    if outcome.received:
                        outcome.cut = transport_reason(exc)
                        return outcome
                    problem = f"JupyterHub is not reachable ({transport_reason(exc)})"
                else:
                    if resp.status not in RETRY_STATUSES:
                        outcome.status = resp.status
                        if resp.status != 200:
                            # Not an event stream: the body was a JSON error.
                            outcome.error = _json_message(bytes(buffer)) or f"HTTP {resp.status}"
                        return outcome
                    problem = f"JupyterHub answered {resp.status}"
                    buffer.clear()
                delay = next(delays, None)
                if delay is None or time.monotonic() + delay >= connect_deadline:
                    raise HubError(f"{problem}; gave up following the server's progress.")
                log.warning("hub progress %s: %s; retrying in %.1fs", path, problem, delay)
                await asyncio.sleep(delay)
        finally:
            # Whether our caller is done or cancelled, the request is left to
            # end by itself, its chunks ignored: Tornado has no way to drop a
            # request it is reading (raising from the streaming callback, or
            # cancelling the fetch, logs an ERROR with a traceback). It ends
            # when the hub ends the spawn (ready, failed, or stopped by the
            # cleanup of this launch) or at the launch's deadline.
            abandoned = True

    async def _watch(
        self, fetch: asyncio.Task[HttpResponse], heard: list[float], deadline: float
    ) -> HttpResponse:
        """Wait for a progress request, asking the hub whether it is alive
        whenever its stream stays quiet for half of ``unresponsive_timeout``."""
        quiet = self.unresponsive_timeout / 2
        while True:
            wake = min(heard[0] + quiet, deadline)
            done, _ = await asyncio.wait({fetch}, timeout=max(wake - time.monotonic(), 0.05))
            if done:
                return fetch.result()
            if time.monotonic() - heard[0] < quiet:
                continue
            if time.monotonic() >= deadline:
                continue  # the caller's own deadline ends this
            if await self._alive(heard[0] + self.unresponsive_timeout):
                heard[0] = time.monotonic()
                continue
            if fetch.done():
                return fetch.result()
            raise HubError(
                f"JupyterHub did not answer within {self.unresponsive_timeout:g} seconds "
                "(HubLauncher.hub_unresponsive_timeout) while the server was starting."
            )

    async def _alive(self, by: float) -> bool:
        """Whether the hub answers its API (any status) before ``by``."""
        try:
            await self.http.request(
                "GET",
                self.api_url,
                headers=self._headers,
                timeout=max(by - time.monotonic(), 0.5),
            )
        except TransportError:
            return False
        return True


@dataclass(slots=True)
class ProgressOutcome:
    status: int = 0  # HTTP status of the progress request, 0 when cut
    final: dict[str, Any] | None = None  # the ready/failed event
    error: str = ""  # the hub's message when the status was not 200
    cut: str = ""  # why a started stream ended early (transport error)
    received: bool = False


def _json_message(body: bytes) -> str:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return ""
    # JupyterHub answers {"status": 404, "message": null} for a missing server.
    return str(data.get("message") or "") if isinstance(data, dict) else ""


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a background request's outcome as seen (no "never retrieved" log)."""
    if not task.cancelled():
        task.exception()


def _retry_after(resp: HttpResponse) -> float | None:
    value = resp.header("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
