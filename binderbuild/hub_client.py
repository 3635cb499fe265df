"""JupyterHub REST API client of the launcher, with binderbuild's only retry loop.

Every hub call goes through ``HubClient.call``: transport failures, 429 and
502/503/504 (a restarting hub, proxy or ingress) are retried with exponential
backoff, never past the caller's deadline; what is left becomes ``HubError``
whose message names the hub's own reason. Nothing above this module retries
a hub call again (BinderHub's nested retry loops once kept users waiting for
40 minutes behind a hung hub).

``follow_progress`` reads the hub's spawn progress event stream
(``GET /users/{name}/server/progress``), handing every event to a callback.
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


def user_path(name: str) -> str:
    # JupyterHub's own escaping of user names in URLs.
    return f"users/{quote(name, safe='@~')}"


def server_path(name: str, server_name: str) -> str:
    if server_name:
        return f"{user_path(name)}/servers/{quote(server_name, safe='')}"
    return f"{user_path(name)}/server"


class _StreamEnd(Exception):
    """Raised inside the chunk callback to stop reading a progress stream."""


class HubClient:
    def __init__(
        self,
        http: HttpClient,
        api_url: str,
        token: str,
        *,
        retry: RetryPolicy | None = None,
        request_timeout: float = 20.0,
        stream_http: HttpClient | None = None,
    ) -> None:
        self.http = http
        # Progress streams stay open for the whole spawn: they get their own
        # client so they never queue behind (or block) short API calls.
        self.stream_http = stream_http or http
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.retry = retry or RetryPolicy()
        self.request_timeout = request_timeout
        self._headers = {"Authorization": f"token {token}", "Accept": "application/json"}

    def _attempt_timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.request_timeout
        return max(min(self.request_timeout, deadline - time.monotonic()), 0.1)

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
    ) -> HttpResponse:
        """One hub API call with the retry loop. Returns the final response
        (any status the caller must interpret); raises HubError when the hub
        stayed unreachable or kept answering "not now".

        ``conflict_ok_on_retry``: a 409 on a retry means the earlier attempt
        did reach the hub (creating a user twice), so it is returned as 200.
        ``retry_500=False``: a 500 carries a real answer (a spawn that
        failed), so it is returned instead of retried.
        """
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
            try:
                resp = await self.http.request(
                    method,
                    url,
                    headers=hdrs,
                    json_body=json_body,
                    timeout=self._attempt_timeout(deadline),
                )
            except TransportError as exc:
                problem = f"JupyterHub is not reachable ({transport_reason(exc)})"
            else:
                if resp.status == 409 and attempt > 1 and conflict_ok_on_retry:
                    # An earlier attempt did get through: report it as done.
                    return dataclasses.replace(resp, status=200)
                if resp.status not in RETRY_STATUSES and not (resp.status == 500 and retry_500):
                    return resp
                problem = f"JupyterHub answered {resp.status}: {hub_reason(resp)}"
                retry_after = _retry_after(resp)
            delay = next(delays, None)
            if delay is None:
                raise HubError(f"{problem}; gave up after {attempt} attempts.")
            if retry_after is not None:
                delay = max(delay, retry_after)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise HubError(f"{problem}; no time left to try again.")
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
        caller decides whether to look again.
        """
        url = self.api_url + path
        buffer = bytearray()
        outcome = ProgressOutcome()
        abandoned = False

        def on_chunk(chunk: bytes) -> None:
            if abandoned:
                # The only way to make Tornado drop a request (it logs this).
                raise _StreamEnd()
            if outcome.final is not None:
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
        try:
            while True:
                remaining = max(deadline - time.monotonic(), 0.1)
                try:
                    resp = await self.stream_http.stream(
                        url,
                        on_chunk,
                        headers=self._headers,
                        timeout=remaining,
                        connect_timeout=min(self.request_timeout, remaining),
                    )
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
                if delay is None or time.monotonic() + delay >= deadline:
                    raise HubError(f"{problem}; gave up following the server's progress.")
                log.warning("hub progress %s: %s; retrying in %.1fs", path, problem, delay)
                await asyncio.sleep(delay)
        finally:
            # When our caller is cancelled, Tornado keeps the request open
            # until the next chunk arrives (the hub sends a keepalive every
            # few seconds); on_chunk then aborts it.
            abandoned = True


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
    return str(data.get("message", "")) if isinstance(data, dict) else ""


def _retry_after(resp: HttpResponse) -> float | None:
    value = resp.header("Retry-After")
    try:
        return min(float(value), 60.0) if value else None
    except ValueError:
        return None
