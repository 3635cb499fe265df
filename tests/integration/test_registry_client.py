"""RegistryClient against the real registry: anonymous and htpasswd (basic) auth."""

from __future__ import annotations

import asyncio

import pytest

from binderbuild.errors import RegistryError
from binderbuild.http import HttpClient
from binderbuild.models import ImageSpec
from binderbuild.registry import RegistryClient
from tests.realservices import RegistryServer

pytestmark = pytest.mark.registry


def check(server: RegistryServer, username: str = "", password: str = "", tag: str = "missing"):
    async def main():
        http = HttpClient()
        try:
            client = RegistryClient(http, server.url, username, password, timeout=3)
            await client.check()
            return await client.image_exists(ImageSpec(f"{server.host}/nothing", tag, "b"))
        finally:
            http.close()

    return asyncio.run(main())


def test_anonymous_registry_answers_missing(registry):
    assert check(registry) is False


def test_basic_auth_registry(tmp_path):
    server = RegistryServer(tmp_path / "auth", htpasswd=("builder", "correct-horse-battery"))
    server.start()
    try:
        assert check(server, "builder", "correct-horse-battery") is False
        with pytest.raises(RegistryError, match="credentials|authentication"):
            check(server, "builder", "wrong")
        with pytest.raises(RegistryError, match="authentication"):
            check(server)
    finally:
        server.stop()


def test_stopped_registry_is_an_error(tmp_path):
    server = RegistryServer(tmp_path / "down")
    server.start()
    server.stop()
    with pytest.raises(RegistryError):
        check(server)
