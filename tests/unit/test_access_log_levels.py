"""The access log keeps ERROR for crashes: a 5xx that is one of binderbuild's
own answers (a repository unreachable, a dependency down) is a WARNING."""

from __future__ import annotations

import logging

import pytest
import tornado.testing

from binderbuild.errors import ProviderError, RegistryError
from binderbuild.handlers.base import BaseHandler
from binderbuild.operations import BinderBuildWebApp


class _Unreachable(BaseHandler):
    def get(self) -> None:
        raise ProviderError("Could not reach the repository at https://example.org/r.")


class _RegistryDown(BaseHandler):
    def get(self) -> None:
        # Answered without raising, as a stream handler does.
        self.send_binder_error(RegistryError("The container registry is unreachable."))


class _Crash(BaseHandler):
    def get(self) -> None:
        raise RuntimeError("a bug")


class AccessLogLevels(tornado.testing.AsyncHTTPTestCase):
    def get_app(self) -> BinderBuildWebApp:
        return BinderBuildWebApp(
            [("/unreachable", _Unreachable), ("/registry", _RegistryDown), ("/crash", _Crash)]
        )

    def level_of(self, path: str, status: int) -> int:
        with self._caplog.at_level(logging.INFO, logger="tornado.access"):
            self._caplog.clear()
            assert self.fetch(path).code == status
        access = [r for r in self._caplog.records if r.name == "tornado.access"]
        assert len(access) == 1, access
        return access[0].levelno

    @pytest.fixture(autouse=True)
    def _use_caplog(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog

    def test_own_answers_are_warnings(self) -> None:
        assert self.level_of("/unreachable", 502) == logging.WARNING
        assert self.level_of("/registry", 503) == logging.WARNING

    def test_a_crash_stays_an_error(self) -> None:
        assert self.level_of("/crash", 500) == logging.ERROR
