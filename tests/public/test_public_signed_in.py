"""Signed-in mode (run.sh --auth) behind the public origin: the OAuth round
trip between binderbuild and the hub uses the configured origin, whatever
Host a request names (issue 17). Its own stack, from the installed unit
with BINDERBUILD_AUTH=1 (nothing is built or launched here)."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.public.conftest import CertAuthority, PublicStack, make_test_ca

pytestmark = [pytest.mark.docker, pytest.mark.hub]

FORGED = "evil.example:4443"


@pytest.fixture(scope="module")
def signed_in_stack(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[PublicStack]:
    base = tmp_path_factory.mktemp("public-auth")
    ca: CertAuthority = make_test_ca(base / "ca")
    stack = PublicStack(base / "stack", ca, "127.0.0.1:9")
    stack.base.mkdir(parents=True, exist_ok=True)
    stack.install(BINDERBUILD_AUTH="1", BINDERBUILD_STORAGE_LIMIT="64M")
    stack.start()
    yield stack
    stack.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_login_round_trip_names_only_the_public_origin(signed_in_stack: PublicStack) -> None:
    s = signed_in_stack
    origin = s.origin
    callback = f"{origin}/oauth_callback"
    # binderbuild sends an anonymous visitor to the hub's authorize URL, with
    # its callback on the public origin, whatever Host the request named.
    for host in (f"127.0.0.2:{s.public_port}", FORGED):
        home = s.get("/", headers={"Host": host})
        assert home.status == 302, home.text
        location = home.headers["location"]
        assert location.startswith(f"{origin}/jupyter/hub/api/oauth2/authorize?"), location
        assert parse_qs(urlsplit(location).query)["redirect_uri"] == [callback]
        for cookie in home.header_values("set-cookie"):
            assert "secure" in cookie.lower(), cookie

    # The whole round trip in one cookie jar: sign in as the first admin, the
    # hub sends the browser back to binderbuild's callback, binderbuild's own
    # login cookie is Secure. Every redirect names the origin (or a path).
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=s.ca.context()),
        urllib.request.HTTPCookieProcessor(jar),
        _NoRedirect,
        urllib.request.ProxyHandler({}),
    )

    def fetch(url: str, data: bytes | None = None) -> tuple[int, str, str]:
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=30) as resp:
                return resp.status, resp.headers.get("Location", ""), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Location", ""), exc.read().decode(errors="replace")

    chain = []
    status, location, _ = fetch(f"{origin}/")
    assert status == 302
    authorize = location
    status, location, _ = fetch(authorize)
    chain.append(location)
    assert status == 302 and "/jupyter/hub/login" in location, (status, location)
    login_url = location if location.startswith("https://") else origin + location
    status, _, page = fetch(login_url)
    assert status == 200, page
    xsrf = next(c.value for c in jar if c.name == "_xsrf")
    password = (s.state / "singlemachine" / "hub-admin-password").read_text().strip()
    form = urlencode({"username": "admin", "password": password, "_xsrf": xsrf}).encode()
    status, location, page = fetch(login_url, form)
    assert status == 302, page[:2000]
    url = location if location.startswith("https://") else origin + location
    for _ in range(6):  # next -> authorize -> callback -> binderbuild
        chain.append(url)
        if url.startswith(callback):
            break
        status, location, page = fetch(url)
        assert status == 302, (url, status, page[:2000])
        url = location if location.startswith("https://") else origin + location
    assert url.startswith(callback + "?"), chain
    status, location, page = fetch(url)
    assert status == 302, page[:2000]
    for hop in [*chain, location]:
        assert hop.startswith(("/", f"{origin}/")), chain
    cookies = {c.name: c for c in jar}
    assert cookies, chain
    assert all(c.secure for c in cookies.values()), {n: c.secure for n, c in cookies.items()}
    # Signed in: binderbuild's home page answers.
    status, _, page = fetch(f"{origin}/")
    assert status == 200, page[:1000]


def test_storage_limit_reaches_the_hubs_spawner(signed_in_stack: PublicStack) -> None:
    """run.sh --auth passes BINDERBUILD_STORAGE_LIMIT to every server's storage."""
    config = signed_in_stack.state / "singlemachine" / "hub" / "jupyterhub_config.py"
    assert "c.BinderSpawnerMixin.storage_limit = '64M'" in config.read_text()
