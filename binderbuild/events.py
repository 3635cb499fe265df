"""Progress events and their one wire encoding (Server-Sent Events).

The phases and field names are the Binder protocol's
(see docs/api.md); nothing else in the code formats events for the wire.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Phase(enum.StrEnum):
    WAITING = "waiting"
    FETCHING = "fetching"
    BUILDING = "building"
    PUSHING = "pushing"
    BUILT = "built"
    LAUNCHING = "launching"
    READY = "ready"
    FAILED = "failed"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        return self in (Phase.READY, Phase.FAILED)


_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a build or launch, as clients see it.

    ``fields`` holds the phase-specific keys of the protocol (``imageName``,
    ``url``, ``token``, ``status_code``, ``progress`` ...).
    """

    phase: Phase
    message: str = ""
    fields: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"phase": self.phase.value, "message": self.message}
        data.update(self.fields)
        return data

    def with_fields(self, **extra: Any) -> ProgressEvent:
        merged = dict(self.fields)
        merged.update(extra)
        return ProgressEvent(self.phase, self.message, MappingProxyType(merged))


def event(phase: Phase, message: str = "", **fields: Any) -> ProgressEvent:
    return ProgressEvent(phase, message, MappingProxyType(fields) if fields else _EMPTY)


def failed(message: str, status_code: int | None = None) -> ProgressEvent:
    if status_code is None:
        return event(Phase.FAILED, message)
    return event(Phase.FAILED, message, status_code=status_code)


# A comment line: EventSource ignores it, proxies see traffic and keep the
# connection open.
KEEPALIVE = b":keepalive\n\n"

# Sent just before the server closes a finished stream: EventSource clients
# reconnect automatically when a stream ends, which for /build would start the
# whole process again. A reconnection delay of ~24 days makes the automatic
# reconnect moot while clients that close on ready/failed are unaffected.
NO_RECONNECT = b"retry: 2147483647\n\n"


def encode_sse(ev: ProgressEvent, event_id: int | str | None = None) -> bytes:
    """Encode one event as an SSE frame: optional ``id:`` then ``data: <json>``."""
    data = json.dumps(ev.payload(), separators=(", ", ": "))
    # json.dumps never emits raw newlines, so one data line is always enough.
    prefix = f"id: {event_id}\n" if event_id is not None else ""
    return f"{prefix}data: {data}\n\n".encode()
