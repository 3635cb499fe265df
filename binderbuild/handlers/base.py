"""Shared handler behaviour: the services, client identity, and the one place
where errors become HTTP answers.

A handler raises ``BinderBuildError`` subclasses and never catches them to
answer: ``write_error`` turns any error that escapes a handler into its
class's status (``errors.error_status``) with a JSON body
``{"message", "status_code"}`` (pages render the same as HTML). Tornado calls
it for every uncaught exception, so there is no per-handler try/except.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tornado.web import HTTPError, RequestHandler

from binderbuild.errors import BinderBuildError, error_status, retry_after

if TYPE_CHECKING:
    from binderbuild.services import Services

log = logging.getLogger("binderbuild.web")


class BaseHandler(RequestHandler):
    # Set when the answer is one of binderbuild's own errors (a dependency
    # down, a repository unreachable): the access log then says WARNING, not
    # ERROR, for its 5xx (BinderBuildWebApp.log_request). A crash keeps ERROR.
    answered_known_error = False

    @property
    def ctx(self) -> Services:
        return self.settings["binderbuild"]  # type: ignore[no-any-return]  # Tornado settings are untyped

    def raw_provider_and_spec(self, route_prefix: str) -> tuple[str, str]:
        """(provider, spec) from the *raw* request path.

        Tornado percent-decodes path arguments, which would turn the %2F of a
        url-encoded git URL into '/' and make the spec ambiguous. Binder specs
        are defined on the raw path, as BinderHub reads them.
        ``route_prefix`` is the part after base_url, e.g. "build/".
        """
        prefix = self.ctx.settings.base_url + route_prefix
        path = self.request.path
        if not path.startswith(prefix):
            raise HTTPError(404)
        provider_id, _, spec = path[len(prefix) :].partition("/")
        return provider_id, spec

    @property
    def client_ip(self) -> str:
        return self.ctx.client_ip(self.request)

    @property
    def public_origin(self) -> str:
        """``scheme://host[:port]`` of the URLs this service hands out.

        From ``launch_host`` when configured. Otherwise the request's Host
        header is believed only when it names a loopback address (someone
        opening the service on the machine it runs on); any other Host gets
        the service's own listening address, so a forged Host header never
        reaches a share link, badge or OpenGraph URL."""
        configured = self.ctx.settings.launch_host
        if configured:
            parts = urlsplit(configured)
            return f"{parts.scheme}://{parts.netloc}"
        if is_loopback_host(self.request.host):
            return f"{self.request.protocol}://{self.request.host}"
        return self.ctx.settings.listen_origin

    @property
    def launch_host(self) -> str:
        return self.ctx.settings.launch_host or f"{self.public_origin}{self.ctx.settings.base_url}"

    def set_default_headers(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        for name, value in self.settings.get("extra_headers", {}).items():
            self.set_header(name, value)

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(data))

    def send_binder_error(self, exc: BinderBuildError) -> None:
        """Answer with ``exc``'s status and message (also used by handlers that
        must answer an error without raising, e.g. inside a stream)."""
        status = error_status(exc)
        self.answered_known_error = True
        self._error_headers(exc)
        self.write_json({"message": exc.message, "status_code": status}, status)

    def _error_headers(self, exc: BinderBuildError) -> None:
        for name, value in exc.response_headers().items():
            self.set_header(name, value)
        if (after := retry_after(exc)) is not None:
            self.set_header("Retry-After", str(int(after) + 1))

    def error_answer(self, status_code: int, kwargs: dict[str, Any]) -> tuple[int, str]:
        """(status, message) of the error Tornado is about to answer."""
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if isinstance(exc, BinderBuildError):
            status = error_status(exc)
            self.answered_known_error = True
            self.set_status(status)
            self._error_headers(exc)
            return status, exc.message
        if isinstance(exc, HTTPError) and exc.log_message:
            return status_code, exc.log_message
        return status_code, self._reason

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # A BinderBuildError is an answer, not a crash: one line, no traceback.
        if isinstance(value, BinderBuildError):
            log.info(
                "%s %s -> %s: %s",
                self.request.method,
                self.request.path,
                error_status(value),
                value.message,
            )
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        status_code, message = self.error_answer(status_code, kwargs)
        if status_code == 405:
            # RFC 9110: a 405 names the methods the resource supports.
            allowed = [
                method
                for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
                if getattr(type(self), method.lower()) is not getattr(RequestHandler, method.lower())
            ]
            self.set_header("Allow", ", ".join(allowed))
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"message": message, "status_code": status_code}))


def is_loopback_host(host: str) -> bool:
    """Whether a Host header value (``name[:port]``) names this machine's
    loopback interface."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    if name.startswith("[") and "]" in name:
        name = name[1 : name.index("]")]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
