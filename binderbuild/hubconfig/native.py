"""jupyterhub-nativeauthenticator as the embedded hub runs it (hub side only).

NativeAuthenticator 1.3 (its latest release) predates JupyterHub 6, which
took two things from under its login page: the ``statsd`` client its login
handler times every attempt with (every login failed with a 500), and the
signature of ``LoginHandler._render`` that JupyterHub's own error rendering
calls (an error on the login form failed again while being reported). This
module's :class:`NativeAuthenticator` is the package's, with a login handler
that has neither problem; its options stay ``c.NativeAuthenticator.*``.

Imported by the hub only (``jupyterhub_config.py`` names it), never by
binderbuild's service.
"""

from __future__ import annotations

from typing import Any

from jupyterhub.handlers.base import BaseHandler
from nativeauthenticator import NativeAuthenticator as _Native  # type: ignore[import-untyped]
from nativeauthenticator import handlers as _handlers


class _NoStats:
    """Stands in for the statsd client JupyterHub 6 no longer has."""

    def timer(self, name: str) -> _NoStats:
        return self

    def start(self) -> _NoStats:
        return self

    def stop(self, send: bool = True) -> None:
        return None

    def incr(self, name: str, count: int = 1) -> None:
        return None


class LoginHandler(_handlers.LoginHandler):  # type: ignore[misc]
    statsd = _NoStats()

    def render_template(self, name: str, **ns: Any) -> Any:
        # JupyterHub renders a failed form submission (a stale XSRF token) as
        # the login form through _render(..., sync=True), which the package's
        # _render does not accept: show the hub's error page instead.
        if name == "error.html":
            return BaseHandler.render_template(self, name, **ns)
        return super().render_template(name, **ns)


class NativeAuthenticator(_Native):  # type: ignore[misc]
    """NativeAuthenticator with the login handler above."""

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        handlers: list[tuple[str, Any]] = super().get_handlers(app)
        return [(path, LoginHandler if path == r"/login" else h) for path, h in handlers]
