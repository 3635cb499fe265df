"""The launch event log: one JSON object per ``/build`` request, one per line.

Operators feed these lines to their analytics (mybinder.org publishes
BinderHub's equivalent as open data). Each pipeline run ends in exactly one
event, written by a ``Pipeline`` observer, whatever the outcome. The schema
is ``LAUNCH_EVENT_SCHEMA`` below (JSON Schema, documented in
docs/operations.md); fields are only ever added, and a change that removes or
re-types a field bumps ``version``.

Where events go is pluggable: ``EventLog.sinks`` lists ``stdout``,
``file:/path/to/launches.jsonl`` or the import string of an ``EventSink``
subclass. BinderHub's ``EventLog.handlers_maker`` (a callable returning
``logging.Handler`` objects) keeps working.

Nothing secret gets in: specs and URLs are passed through the scrubber
(credentials in git URLs, configured tokens), client IPs and user names are
not recorded.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

from traitlets import Any as AnyTrait
from traitlets import List, Unicode
from traitlets.config import LoggingConfigurable
from traitlets.utils.importstring import import_item

from binderbuild.errors import BinderBuildError, BuildFailed, ConfigError, error_code
from binderbuild.http import redact_url
from binderbuild.logging_setup import current_request_id
from binderbuild.logging_setup import scrub as scrub_text
from binderbuild.pipeline import RunOutcome, RunReport
from binderbuild.secrets import Scrubber

log = logging.getLogger("binderbuild.eventlog")

LAUNCH_SCHEMA_ID = "binderbuild.launch"
LAUNCH_SCHEMA_VERSION = 1

_NULLABLE_STRING = {"type": ["string", "null"]}
_SECONDS = {"type": "number", "minimum": 0}

LAUNCH_EVENT_SCHEMA: Mapping[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": LAUNCH_SCHEMA_ID,
    "title": "binderbuild launch event",
    "description": "One event per /build request, written when the request ends.",
    "type": "object",
    "required": [
        "schema",
        "version",
        "timestamp",
        "provider",
        "spec",
        "ref",
        "status",
        "build_only",
        "built",
        "durations",
    ],
    "properties": {
        "schema": {"const": LAUNCH_SCHEMA_ID},
        "version": {"const": LAUNCH_SCHEMA_VERSION},
        "timestamp": {
            "type": "string",
            "description": "When the request ended, ISO 8601, UTC.",
        },
        "provider": {"type": "string", "description": "Provider prefix, e.g. gh, git."},
        "spec": {"type": "string", "description": "The spec as requested (scrubbed)."},
        "ref": {**_NULLABLE_STRING, "description": "Resolved commit / record id; null if resolution failed."},
        "resolved_spec": {**_NULLABLE_STRING, "description": "Spec with the ref replaced by `ref`."},
        "repo_url": {**_NULLABLE_STRING, "description": "What the builder fetches, without credentials."},
        "image": {**_NULLABLE_STRING, "description": "Image name; null if not known yet."},
        "status": {
            "enum": ["success", "failure", "abandoned"],
            "description": "success: ready was sent; failure: failed was sent; "
            "abandoned: the client went away first.",
        },
        "build_only": {"type": "boolean"},
        "built": {
            "type": "boolean",
            "description": "This request waited for a build (its own or a shared one).",
        },
        "durations": {
            "type": "object",
            "description": "Seconds per completed stage; stages not reached, or "
            "that failed, are 0. total is their sum.",
            "required": ["resolve", "registry", "build", "launch", "total"],
            "properties": {
                "resolve": _SECONDS,
                "registry": _SECONDS,
                "build": _SECONDS,
                "launch": _SECONDS,
                "total": _SECONDS,
            },
            "additionalProperties": False,
        },
        "error": {
            "type": ["object", "null"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
        "origin": {**_NULLABLE_STRING, "description": "Host the request came to (BinderHub's origin)."},
        "request_id": _NULLABLE_STRING,
        "authenticated": {"type": "boolean"},
        "launch": {
            "enum": ["warm", "cold", None],
            "description": "warm: the server came from a warm pool (started before the "
            "request); cold: it was started for this request; null: no server was "
            "handed out (build only, failure, abandoned). Added in version 1 (fields "
            "are only ever added).",
        },
    },
    "additionalProperties": False,
}


class EventSink(abc.ABC):
    """Where events are written. ``emit`` is called on the event loop: keep it quick."""

    @abc.abstractmethod
    def emit(self, record: Mapping[str, Any]) -> None:
        """Write one event."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections at shutdown."""


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"


class StdoutSink(EventSink):
    """JSON lines on standard output (container platforms collect it)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream

    def emit(self, record: Mapping[str, Any]) -> None:
        stream = self.stream or sys.stdout
        stream.write(_json_line(record))
        stream.flush()


class FileSink(EventSink):
    """JSON lines appended to a file.

    Reopens the file when it was moved or deleted (logrotate without
    copytruncate), so rotation needs no signal to the service.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._inode: int | None = None
        self._open()

    def _open(self) -> None:
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        self._inode = os.fstat(self._file.fileno()).st_ino

    def _rotated(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def emit(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            if self._file is None or self._rotated():
                if self._file is not None:
                    self._file.close()
                self._open()
            assert self._file is not None
            self._file.write(_json_line(record))
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


class LoggingSink(EventSink):
    """Events as log records on ``logging.Handler`` objects (BinderHub's
    ``EventLog.handlers_maker``): the record's message is the JSON line."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        self.logger = logging.getLogger("binderbuild.events.launch")
        # Events are data, not diagnostics: keep them out of the service log.
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        for handler in handlers:
            if handler not in self.logger.handlers:
                self.logger.addHandler(handler)

    def emit(self, record: Mapping[str, Any]) -> None:
        self.logger.info(_json_line(record).rstrip("\n"))

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            handler.close()
            self.logger.removeHandler(handler)


def make_sink(spec: str) -> EventSink:
    """``stdout``, ``file:PATH`` or the import string of an EventSink class."""
    if spec == "stdout":
        return StdoutSink()
    if spec.startswith("file:"):
        path = spec[len("file:") :]
        if not path:
            raise ConfigError("EventLog.sinks: 'file:' needs a path, e.g. file:/var/log/launches.jsonl")
        return FileSink(path)
    try:
        klass = import_item(spec)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"EventLog.sinks: cannot import {spec!r}: {exc}") from None
    if not (isinstance(klass, type) and issubclass(klass, EventSink)):
        raise ConfigError(f"EventLog.sinks: {spec!r} is not an EventSink subclass")
    return klass()


class EventLog(LoggingConfigurable):
    """Writes one launch event per pipeline run to the configured sinks."""

    sinks = List(
        Unicode(),
        config=True,
        help="""Where launch events go: 'stdout', 'file:/path/launches.jsonl', or the
        import string of a binderbuild.eventlog.EventSink subclass. Empty (the
        default): no event log.""",
    )
    handlers_maker = AnyTrait(
        None,
        allow_none=True,
        config=True,
        help="""BinderHub compatibility: a callable taking the EventLog and returning
        a list of logging.Handler objects; each event is logged to them as one
        JSON line.""",
    )

    def __init__(self, scrubber: Scrubber | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scrubber = scrubber or Scrubber()
        self._sinks: list[EventSink] = [make_sink(s) for s in self.sinks]
        if self.handlers_maker is not None:
            if not callable(self.handlers_maker):
                raise ConfigError("EventLog.handlers_maker must be callable")
            self._sinks.append(LoggingSink(list(self.handlers_maker(self))))

    @property
    def enabled(self) -> bool:
        return bool(self._sinks)

    def add_sink(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def emit(self, record: Mapping[str, Any]) -> None:
        for sink in self._sinks:
            try:
                sink.emit(record)
            except Exception:
                # One broken sink (full disk) must not hide events from the others.
                log.exception("event sink %s failed", type(sink).__name__)

    def launch_event(self, report: RunReport) -> dict[str, Any]:
        request, ref, image = report.request, report.ref, report.image
        timings, error = report.timings, report.error
        status = report.outcome.value

        def scrub(text: str) -> str:
            return scrub_text(self.scrubber, text)

        durations = {
            "resolve": timings.resolve,
            "registry": timings.registry,
            "build": timings.build,
            "launch": timings.launch,
        }
        durations["total"] = sum(durations.values())
        error_field: dict[str, str] | None = None
        if error is not None and report.outcome is RunOutcome.FAILURE:
            message = error.message if isinstance(error, BinderBuildError) else type(error).__name__
            error_field = {"type": error_code(error), "message": scrub(message)}
        origin = urlsplit(request.launch_host).netloc if request.launch_host else ""
        return {
            "schema": LAUNCH_SCHEMA_ID,
            "version": LAUNCH_SCHEMA_VERSION,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "provider": request.provider_id,
            "spec": scrub(request.spec),
            "ref": ref.resolved_ref if ref else None,
            "resolved_spec": scrub(ref.resolved_spec) if ref else None,
            "repo_url": scrub(redact_url(ref.repo_url)) if ref else None,
            "image": image.name if image else None,
            "status": status,
            "build_only": request.build_only,
            # The pipeline times a stage only once it completes, so a failed
            # build shows up through its error rather than its duration.
            "built": timings.build > 0 or isinstance(error, BuildFailed),
            "durations": {k: round(max(0.0, v), 3) for k, v in durations.items()},
            "error": error_field,
            "origin": origin or None,
            "request_id": current_request_id(),
            "authenticated": request.user is not None,
            "launch": None if report.warm is None else ("warm" if report.warm else "cold"),
        }

    def observe_run(self, report: RunReport) -> None:
        """A ``Pipeline`` observer."""
        if self._sinks:
            self.emit(self.launch_event(report))

    def close(self) -> None:
        for sink in self._sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing event sink %s failed", type(sink).__name__)

