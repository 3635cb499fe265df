"""The Tornado application and the secret-option sweep.

``collect_secrets`` finds every secret-named option value so the composition
root (``binderbuild.services``) can hand them to the scrubber.
``BinderBuildWebApp`` is the Tornado application: it gives every request an
id (logged on every line, echoed as ``X-Request-Id``) and refuses banned
networks before any handler runs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import tornado.escape
import tornado.log
import tornado.web
from tornado import httputil
from traitlets.config import Configurable

from binderbuild.logging_setup import new_request_id, set_request_id
from binderbuild.metrics import Refusal

if TYPE_CHECKING:
    from binderbuild.services import Services

log = logging.getLogger("binderbuild.operations")

# Option names whose values are secrets wherever they appear (any class).
SECRET_NAME = re.compile(r"(?i)(password|passwd|secret|token|credential|api_key|apikey|private_key)")
# key=value lines (git credentials) whose value is the secret part.
_SECRET_LINE = re.compile(r"(?im)^\s*(?:password|token|secret)\s*=\s*(\S.*?)\s*$")


def _secret_strings(value: Any) -> Iterable[str]:
    """The strings of a secret option's value (keys too: api_tokens maps
    token -> name)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        if value:
            yield value
            # key=value lines (git credentials), also with BinderHub's literal "\\n".
            for match in _SECRET_LINE.finditer(value.replace("\\n", "\n")):
                yield match.group(1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secret_strings(key)
            yield from _secret_strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _secret_strings(item)


def _walk_config(value: Any) -> Iterable[str]:
    """Secret values anywhere in a config tree, also nested (per-spec
    ``spec_config`` entries carry their own access tokens)."""
    if hasattr(value, "items"):
        for key, item in value.items():
            if str(key) in _SECRET_KEYS_ONLY and hasattr(item, "keys"):
                yield from (str(k) for k in item.keys() if k)
            elif SECRET_NAME.search(str(key)) and str(key) not in _NOT_SECRET:
                yield from _secret_strings(item)
            else:
                yield from _walk_config(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk_config(item)


def collect_secrets(app: Any, configurables: Iterable[Any] = ()) -> set[str]:
    """Every value of a secret-named option: in the loaded config (any
    section, nested, also options no class defines yet) and on the live
    objects (values that came from environment variables or defaults), plus
    what providers declare through ``secret_values()``."""
    found: set[str] = set(_walk_config(getattr(app, "config", {}) or {}))
    for obj in [app, *configurables]:
        if isinstance(obj, Configurable):
            for name in obj.trait_names(config=True):
                value = getattr(obj, name, None)
                if name in _SECRET_KEYS_ONLY and isinstance(value, dict):
                    found.update(str(k) for k in value if k)
                elif SECRET_NAME.search(name) and name not in _NOT_SECRET:
                    found.update(_secret_strings(value))
        declared = getattr(obj, "secret_values", None)
        if callable(declared):
            found.update(v for v in declared() if isinstance(v, str) and v)
    return found


# Secret-sounding option names that hold no secret.
_NOT_SECRET = {
    "build_token_expires_seconds",
    "build_token_check_origin",
}
# {token: caller name}: the names are meant for the logs.
_SECRET_KEYS_ONLY = {"api_tokens"}


class _RequestIdTransform(tornado.web.OutputTransform):
    """Echo the request id so a user's report can be matched to the log."""

    def __init__(self, request: httputil.HTTPServerRequest) -> None:
        super().__init__(request)
        self.request_id = getattr(request, "_binderbuild_request_id", None)

    def transform_first_chunk(
        self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        if self.request_id:
            headers["X-Request-Id"] = self.request_id
        return status_code, headers, chunk


class _RefusedHandler(tornado.web.RequestHandler):
    """Answers requests from banned networks without running anything else."""

    def initialize(self, message: str) -> None:
        self.message = message

    def prepare(self) -> None:
        self.set_status(403)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(tornado.escape.json_encode({"message": self.message, "status_code": 403}))


class BinderBuildWebApp(tornado.web.Application):
    """Tornado application with request ids and network bans at the door."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_transform(_RequestIdTransform)

    def log_request(self, handler: tornado.web.RequestHandler) -> None:
        # A 5xx that is one of binderbuild's own answers (a dependency down, a
        # repository unreachable, /health reporting an outage) is the
        # service working as it should: WARNING, as Tornado logs a 4xx, so
        # ERROR lines mean a crash. Every other answer is logged as Tornado does.
        status = handler.get_status()
        known = getattr(handler, "answered_known_error", False) or (
            status == 503 and handler.request.path.endswith("/health")
        )
        if status < 500 or not known:
            super().log_request(handler)
            return
        tornado.log.access_log.warning(
            "%d %s %.2fms",
            status,
            handler._request_summary(),
            1000.0 * handler.request.request_time(),
        )

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> tornado.web._HandlerDelegate:
        # Runs in the connection's task before the handler's task is created,
        # so the handler (and everything it starts) inherits this context.
        request_id = new_request_id(request.headers.get("X-Request-Id"))
        request._binderbuild_request_id = request_id  # type: ignore[attr-defined]  # read by the output transform
        set_request_id(request_id)
        services: Services | None = self.settings.get("binderbuild")
        if services is not None and services.banned_networks:
            ip = services.client_ip(request)
            label = services.banned_networks.match(ip)
            if label is not None:
                log.warning("refused request from banned network %s (%s)", label, ip)
                services.metrics.refused(Refusal.BANNED)
                return self.get_handler_delegate(
                    request,
                    _RefusedHandler,
                    {"message": "Requests from your network are not accepted here."},
                )
        return super().find_handler(request, **kwargs)

