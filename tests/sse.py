"""A minimal, strict Server-Sent Events client for tests (http.client, no magic)."""

from __future__ import annotations

import http.client
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class SSEResult:
    status: int
    headers: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    ids: list[str | None] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    body: str = ""  # for non-stream answers
    elapsed_first: dict[str, float] = field(default_factory=dict)  # phase -> seconds to first

    @property
    def phases(self) -> list[str]:
        return [e["phase"] for e in self.events]

    @property
    def final(self) -> dict[str, Any]:
        assert self.events, f"no events (status {self.status}, body {self.body!r})"
        return self.events[-1]

    def json(self) -> Any:
        return json.loads(self.body)


def read_events(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 600.0,
    stop_after: int | None = None,
) -> SSEResult:
    """GET url and read events until the stream ends, a final event, or stop_after events."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    hdrs = {"Accept": "text/event-stream"}
    hdrs.update(headers or {})
    started = time.monotonic()
    conn.request("GET", path, headers=hdrs)
    resp = conn.getresponse()
    result = SSEResult(resp.status, {k.lower(): v for k, v in resp.getheaders()})
    if resp.status != 200 or "text/event-stream" not in result.headers.get("content-type", ""):
        result.body = resp.read().decode(errors="replace")
        conn.close()
        return result
    event_id: str | None = None
    data: list[str] = []
    try:
        while True:
            raw = resp.readline()
            if not raw:
                break
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    ev = json.loads("\n".join(data))
                    result.events.append(ev)
                    result.ids.append(event_id)
                    result.elapsed_first.setdefault(ev["phase"], time.monotonic() - started)
                    data, event_id = [], None
                    if ev["phase"] in ("ready", "failed"):
                        # read what follows the final event (retry:), briefly
                        conn.sock.settimeout(2)  # type: ignore[union-attr]
                    if stop_after is not None and len(result.events) >= stop_after:
                        break
                continue
            if line.startswith(":"):
                result.comments.append(line[1:])
            elif line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("retry:"):
                result.retry = int(line[6:].strip())
            else:
                raise AssertionError(f"unexpected SSE line: {line!r}")
    except TimeoutError:
        if not result.events or result.events[-1]["phase"] not in ("ready", "failed"):
            raise
    finally:
        conn.close()
    return result
