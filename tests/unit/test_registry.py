"""RegistryClient against a small in-process fake registry (the bearer-token flow,
which the real registry package here cannot do without a token server), and
error handling that must never turn into "missing"."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import tornado.web
from tornado.httpserver import HTTPServer

from binderbuild.errors import RegistryError
from binderbuild.http import HttpClient
from binderbuild.models import ImageSpec
from binderbuild.registry import MANIFEST_TYPES, RegistryClient, parse_challenge, repository_path
from tests.realservices import free_port

IMAGE = ImageSpec("127.0.0.1:5000/binder-repo", "abc", "build-x")


class FakeRegistry:
    def __init__(self) -> None:
        self.status_override: int | None = None
        self.token_requests: list[str] = []
        self.manifest_accepts: list[str] = []
        self.images = {("binder-repo", "abc")}
        self.port = free_port()

    def app(self) -> tornado.web.Application:
        fake = self

        class Token(tornado.web.RequestHandler):
            def get(self) -> None:
                auth = self.request.headers.get("Authorization", "")
                fake.token_requests.append(self.get_argument("scope", ""))
                if auth != "Basic " + base64.b64encode(b"user:pass").decode():
                    self.set_status(401)
                    return
                self.write({"token": "tok-" + self.get_argument("scope"), "expires_in": 300})

        class Manifest(tornado.web.RequestHandler):
            def get(self, name: str, tag: str) -> None:
                if fake.status_override:
                    self.set_status(fake.status_override)
                    return
                if self.request.headers.get("Authorization") != f"Bearer tok-repository:{name}:pull":
                    self.set_status(401)
                    self.set_header(
                        "WWW-Authenticate",
                        f'Bearer realm="http://127.0.0.1:{fake.port}/token",service="fake",'
                        f'scope="repository:{name}:pull"',
                    )
                    return
                fake.manifest_accepts.append(self.request.headers.get("Accept", ""))
                if (name, tag) not in fake.images:
                    self.set_status(404)
                    self.write(json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN"}]}))
                    return
                self.set_header("Docker-Content-Digest", "sha256:feed")
                self.write("{}")

        return tornado.web.Application(
            [(r"/token", Token), (r"/v2/(.+)/manifests/([^/]+)", Manifest)]
        )


def run(coro_factory):
    async def main():
        fake = FakeRegistry()
        server = HTTPServer(fake.app())
        server.listen(fake.port, "127.0.0.1")
        http = HttpClient()
        try:
            return await coro_factory(fake, http)
        finally:
            http.close()
            server.stop()

    return asyncio.run(main())


def test_bearer_flow_exists_missing_and_token_reuse():
    async def scenario(fake, http):
        client = RegistryClient(http, f"http://127.0.0.1:{fake.port}", "user", "pass")
        assert await client.image_digest(IMAGE) == "sha256:feed"
        assert await client.image_exists(ImageSpec(IMAGE.repository, "other", "b")) is False
        assert fake.token_requests == ["repository:binder-repo:pull"]  # token cached
        assert all(MANIFEST_TYPES == a for a in fake.manifest_accepts)
        assert "application/vnd.oci.image.index.v1+json" in MANIFEST_TYPES

    run(scenario)


def test_wrong_credentials_are_an_error_not_missing():
    async def scenario(fake, http):
        client = RegistryClient(http, f"http://127.0.0.1:{fake.port}", "user", "wrong")
        with pytest.raises(RegistryError, match="token service"):
            await client.image_exists(IMAGE)

    run(scenario)


@pytest.mark.parametrize("status", [500, 502, 503, 403, 429])
def test_server_errors_are_errors_not_missing(status):
    async def scenario(fake, http):
        fake.status_override = status
        client = RegistryClient(http, f"http://127.0.0.1:{fake.port}", "user", "pass")
        with pytest.raises(RegistryError, match=str(status)):
            await client.image_exists(IMAGE)

    run(scenario)


def test_unreachable_registry_is_an_error():
    async def scenario(fake, http):
        client = RegistryClient(http, f"http://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(RegistryError, match="unreachable"):
            await client.image_exists(IMAGE)

    run(scenario)


def test_helpers():
    assert repository_path("127.0.0.1:5000/a/b") == "a/b"
    assert repository_path("gcr.io/p/b") == "p/b"
    assert repository_path("localhost/b") == "b"
    assert repository_path("binder-b") == "binder-b"
    assert repository_path("user/b") == "user/b"
    assert parse_challenge('Bearer realm="https://a/t",service="s",scope="x:y:pull"') == (
        "bearer",
        {"realm": "https://a/t", "service": "s", "scope": "x:y:pull"},
    )
