"""Signing in through an OpenID Connect provider (oidc-provider on loopback):
the hub's GenericOAuthenticator configuration as binderbuild.hubconfig
renders it, binderbuild's pages sending visitors to the hub's login and back,
a launch for a member of the allowed group, and a clear refusal for an
account outside it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from binderbuild.hubconfig.auth import OAuthLogin, discover
from tests.auth.conftest import (
    Account,
    Browser,
    LoginHub,
    OIDCProvider,
    Page,
    binderbuild_config,
    new_secret,
    start_or_fail,
)
from tests.conftest import FixtureRepo
from tests.ops.helpers import new_repo
from tests.realservices import GitServer, free_port
from tests.service import BinderBuildService
from tests.sse import read_events

pytestmark = [pytest.mark.hub, pytest.mark.docker]

ALLOWED_GROUP = "binder-users"
MEMBER = Account("ada", new_secret(), (ALLOWED_GROUP, "physics"))
OUTSIDER = Account("bob", new_secret(), ("visitors",))


@dataclass
class SignedIn:
    provider: OIDCProvider
    hub: LoginHub
    service: BinderBuildService
    repo: FixtureRepo


@pytest.fixture(scope="module")
def signed_in(
    module_dir: Path, git_server: GitServer, docker_client: Any, cleanup_images: None
) -> Iterator[SignedIn]:
    port = free_port()
    hub = LoginHub(module_dir / "hub", service_url=f"http://127.0.0.1:{port}/")
    secret_file = module_dir / "client-secret"
    secret = new_secret()
    secret_file.write_text(secret + "\n")
    provider = OIDCProvider(
        module_dir / "oidc",
        clients=[
            {
                "client_id": "binder-hub",
                "client_secret": secret,
                "redirect_uris": [hub.oauth_callback],
            }
        ],
        users=[MEMBER, OUTSIDER],
    )
    service: BinderBuildService | None = None
    try:
        endpoints = discover(provider.issuer)
        hub.use_login(
            OAuthLogin(
                client_id="binder-hub",
                client_secret_file=str(secret_file),
                allowed_groups=(ALLOWED_GROUP,),
                login_service="Test provider",
                **endpoints,
            )
        )
        start_or_fail(hub)
        service = BinderBuildService(
            module_dir / "binderbuild", binderbuild_config(hub, port), port=port
        ).start()
        yield SignedIn(provider, hub, service, new_repo(git_server))
    finally:
        if service is not None:
            service.stop()
        hub.stop()
        hub.remove_containers(docker_client)
        provider.stop()


def sign_in_at_provider(browser: Browser, login_page: Page, user: Account) -> Page:
    """From the hub's login page: its button, the provider's form, back."""
    assert "/hub/login" in login_page.url, login_page.url
    button = re.search(r"""href=["']([^"']*oauth_login[^"']*)["']""", login_page.text)
    assert button, f"no sign-in button on the hub's login page:\n{login_page.text[:3000]}"
    form = browser.open(login_page.url.split("/hub/")[0] + _unescape(button.group(1)))
    assert form.status == 200 and "/interaction/" in form.url, (
        form.status,
        form.url,
        form.text[:500],
    )
    return browser.submit(form, {"username": user.username, "password": user.password})


def _unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_member_signs_in_through_the_provider_and_launches(signed_in: SignedIn) -> None:
    browser = Browser()
    page_url = f"{signed_in.service.url}/v2/git/{signed_in.repo.spec('main')}"
    # Anonymous: binderbuild's loading page sends the browser to the hub's login.
    login_page = browser.open(page_url)
    assert login_page.status == 200
    assert "Test provider" in login_page.text  # the login button names the provider
    landed = sign_in_at_provider(browser, login_page, MEMBER)
    # Provider -> hub (signed in) -> hub authorizes binderbuild -> the page again.
    assert landed.status == 200, (landed.url, landed.text[:1000])
    assert landed.url == page_url
    assert "service-binder" in browser.cookie_names()

    user = signed_in.hub.user(MEMBER.username)
    assert user is not None
    # Groups come from the provider's claim and become hub groups.
    assert ALLOWED_GROUP in user["groups"] and "physics" in user["groups"], user["groups"]

    # The home page is served, no longer redirected.
    home = browser.open(signed_in.service.url + "/")
    assert home.status == 200 and home.url == signed_in.service.url + "/"

    # Build and launch with the login cookie: a named server of this user.
    stream = browser.open(
        f"{signed_in.service.url}/build/git/{signed_in.repo.spec('main')}",
        headers={"Accept": "text/event-stream"},
    )
    assert stream.status == 200
    assert '"phase": "ready"' in stream.text or '"phase":"ready"' in stream.text, stream.text[
        -1500:
    ]
    ready = [line for line in stream.text.splitlines() if '"ready"' in line][-1]
    assert f"/user/{quote(MEMBER.username)}/" in ready, ready
    servers = signed_in.hub.user(MEMBER.username)["servers"]
    assert len(servers) == 1 and "" not in servers, servers


def test_outsider_is_refused_with_a_clear_message_and_cannot_launch(signed_in: SignedIn) -> None:
    browser = Browser()
    page_url = f"{signed_in.service.url}/v2/git/{signed_in.repo.spec('main')}"
    refused = sign_in_at_provider(browser, browser.open(page_url), OUTSIDER)
    # The provider knows bob; the hub refuses him, naming the allowed group.
    assert refused.status == 403, (refused.status, refused.url)
    assert "/hub/oauth_callback" in refused.url
    assert "not in a group allowed" in refused.text, refused.text[:3000]
    assert ALLOWED_GROUP in refused.text
    assert signed_in.hub.user(OUTSIDER.username) is None
    assert "service-binder" not in browser.cookie_names()

    # binderbuild never got a login for him: launching is refused.
    launch = read_events(
        f"{signed_in.service.url}/build/git/{signed_in.repo.spec('main')}",
        headers={"Cookie": "; ".join(f"{c.name}={c.value}" for c in browser.jar)},
    )
    assert launch.status == 403
    assert "Log in" in launch.json()["message"]
    # And the page still sends him to the login.
    again = browser.open(page_url)
    assert "/hub/login" in again.url


def test_wrong_password_stays_at_the_provider(signed_in: SignedIn) -> None:
    browser = Browser()
    login_page = browser.open(signed_in.service.url + "/")
    wrong = Account(MEMBER.username, "not-" + MEMBER.password, MEMBER.groups)
    answer = sign_in_at_provider(browser, login_page, wrong)
    assert answer.status == 401
    assert "Wrong user name or password" in answer.text
    assert "service-binder" not in browser.cookie_names()


def test_member_signs_in_and_lands_in_her_server_in_chromium(signed_in: SignedIn) -> None:
    """The same sign-in in a real browser, to the end: her notebook server."""
    import json
    import os
    import shutil
    import subprocess

    from tests.e2e.conftest import CHROMIUM, E2E, _result

    node = shutil.which("node")
    assert node, "node is not installed: run scripts/setup.sh"
    assert (E2E / "node_modules" / "playwright-core" / "package.json").is_file(), (
        "playwright-core is missing in tests/e2e: run scripts/setup.sh"
    )
    assert os.access(CHROMIUM, os.X_OK), f"Chromium is missing at {CHROMIUM}: run scripts/setup.sh"
    artifacts = Path(__file__).resolve().parent.parent.parent / "test-artifacts" / "auth"
    artifacts.mkdir(parents=True, exist_ok=True)
    params = {
        "url": f"{signed_in.service.url}/v2/git/{signed_in.repo.spec('main')}",
        "username": MEMBER.username,
        "password": MEMBER.password,
        "serverPrefix": f"{signed_in.hub.url}user/{MEMBER.username}/",
        "artifacts": str(artifacts),
    }
    script = Path(__file__).resolve().parent / "js" / "signin_launch.mjs"
    proc = subprocess.run(
        [node, str(script), json.dumps(params)],
        cwd=E2E,
        capture_output=True,
        text=True,
        timeout=480,
        stdin=subprocess.DEVNULL,
    )
    result = _result("signin_launch", proc.returncode, proc.stdout, proc.stderr)
    assert "Sign in with Test provider" in result["loginText"]
    assert result["providerPage"].startswith(signed_in.provider.issuer + "/interaction/")
    assert result["backAt"].startswith(params["url"])
    assert result["finalUrl"].startswith(params["serverPrefix"])
    # A named server of hers (not a temporary user): /user/ada/<server>/...
    assert result["finalUrl"][len(params["serverPrefix"]) :].split("/")[0], result["finalUrl"]
