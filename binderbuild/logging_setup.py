"""Service logs: one handler, text or JSON lines, ids on every line, no secrets.

- Every record gets the id of the HTTP request it was logged under
  (``request_id``, from a context variable the web application sets per
  request) and, inside a build, the build's id (``build_id``, which
  ``BuildManager`` passes as ``extra`` through a ``LoggerAdapter``).
- ``log_format = "json"`` writes one JSON object per line for log
  pipelines; "text" is the human format.
- Secrets are scrubbed in the *formatter*, on the finished line, tracebacks
  included. A filter on a logger would only see records logged on that very
  logger (not its children) and only the message, not the traceback.
- ``?token=`` / ``?build_token=`` query values are blanked too: Tornado's
  access log prints request URIs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from binderbuild.secrets import Scrubber

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "binderbuild_request_id", default=None
)

# Loggers whose records reach our handler. Children ("binderbuild.builds",
# "tornado.access") propagate to these.
LOGGERS = ("binderbuild", "tornado")

_QUERY_TOKEN = re.compile(r"(?i)([?&;](?:(?:build_)?token|code)=)[^&\s;#\"']+")
# user:password@ in a *percent-encoded* URL: git specs carry the clone URL
# encoded in the request path, which the access log prints as is. The scheme
# is bounded (URL schemes are short): unbounded, every letter after a "." or
# "-" was a new start that scanned the rest of the run, and one 64 KB request
# path ("a.a.a...") held the event loop for seconds while its access-log line
# was scrubbed.
_ENCODED_URL_CREDENTIALS = re.compile(
    r"(?i)(\b[a-z][a-z0-9+.-]{0,31}%3A%2F%2F)[^/\s@%]*(?:%(?!40|2f)[0-9a-f]{2}[^/\s@%]*)*%40"
)
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Attributes every LogRecord has; anything else was passed as ``extra``.
_STANDARD = set(vars(logging.LogRecord("n", logging.INFO, "p", 1, "m", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


def current_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


def new_request_id(incoming: str | None = None) -> str:
    """The id for a request: a proxy's ``X-Request-Id`` when it is a sane
    token (so one id follows the request across services), else a new one."""
    if incoming and _REQUEST_ID_OK.match(incoming):
        return incoming
    return secrets.token_hex(8)


def scrub(scrubber: Scrubber, text: str) -> str:
    """``Scrubber.scrub`` plus what only appears in URLs we log: token query
    parameters and credentials in percent-encoded URLs."""
    text = scrubber.scrub(text)
    text = _ENCODED_URL_CREDENTIALS.sub(r"\1***%40", text)
    return _QUERY_TOKEN.sub(r"\1***", text)


class _Scrubbing:
    scrubber: Scrubber

    def scrub(self, text: str) -> str:
        return scrub(self.scrubber, text)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` from the current context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in vars(record).items()
        if k not in _STANDARD and not k.startswith("_") and v is not None
    }


class TextFormatter(_Scrubbing, logging.Formatter):
    """``[I 2026-01-01 12:00:00.000 binderbuild.builds req=ab12 build=cd34] message``."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__("%(message)s")
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        body = super().format(record)
        ids = ""
        if request_id := getattr(record, "request_id", None):
            ids += f" req={request_id}"
        if build_id := getattr(record, "build_id", None):
            ids += f" build={build_id}"
        stamp = datetime.fromtimestamp(record.created).strftime("%Y-%m-%d %H:%M:%S")
        line = f"[{record.levelname[:1]} {stamp}.{int(record.msecs):03d} {record.name}{ids}] {body}"
        return self.scrub(line)


class JsonFormatter(_Scrubbing, logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, extras."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or Scrubber()

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, dict):
            return {str(k): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        return self.scrub(str(value))

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        data.update(_extras(record))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        # Scrub each value before encoding: a secret containing a quote or a
        # backslash would not appear verbatim in the encoded JSON.
        return json.dumps(self._clean(data), ensure_ascii=False)


def make_formatter(log_format: str, scrubber: Scrubber | None = None) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(scrubber)
    if log_format == "text":
        return TextFormatter(scrubber)
    raise ValueError(f"log_format must be 'text' or 'json', not {log_format!r}")


def _is_ours(handler: logging.Handler) -> bool:
    return bool(getattr(handler, "_binderbuild", False))


def configure_logging(
    level: int | str,
    log_format: str = "text",
    *,
    scrubber: Scrubber | None = None,
    app_logger: logging.Logger | None = None,
    stream: Any = None,
    loggers: Iterable[str] = LOGGERS,
) -> logging.Handler:
    """Send binderbuild's, Tornado's and the application's records to one
    stderr handler. Idempotent: calling it again replaces the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    # A marker on our own handler, so a second call can find and replace it.
    handler._binderbuild = True  # type: ignore[attr-defined]  # ad-hoc marker attribute
    handler.setFormatter(make_formatter(log_format, scrubber))
    handler.addFilter(ContextFilter())
    targets = [logging.getLogger(name) for name in loggers]
    if app_logger is not None:
        targets.append(app_logger)
    for logger in targets:
        # Replace whatever handler an earlier setup installed (traitlets gives
        # the application logger its own): one format for every line.
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
    return handler


def attach_scrubber(scrubber: Scrubber, extra_loggers: Iterable[logging.Logger] = ()) -> None:
    """Make our handlers' formatters use ``scrubber`` (created after logging
    was configured, once every secret option is known)."""
    loggers = [logging.getLogger(name) for name in LOGGERS] + list(extra_loggers)
    for logger in loggers:
        for handler in logger.handlers:
            formatter = handler.formatter
            if _is_ours(handler) and isinstance(formatter, _Scrubbing):
                formatter.scrubber = scrubber
