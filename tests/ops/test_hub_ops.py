"""Operations around a real JupyterHub: launch metrics and events, hub login
for /build, the hub token kept out of logs, and /health following a hub
outage.

One hub (with its proxy and DockerSpawner) and one real build + launch for
the module; the outage test runs last because it stops the hub.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.conftest import FixtureRepo
from tests.hubservice import HubService, HubUnavailable
from tests.ops.helpers import Samples, build_url, http, new_repo, scrape, value, wait_for_health
from tests.realservices import GitServer, free_port
from tests.service import BinderBuildService
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.hub, pytest.mark.docker]

PREFIX = "bbops-hub-"


def start_hub(workdir: Path, **options) -> HubService:
    """A started hub for this module's images; fails the test if it cannot start."""
    try:
        return HubService(workdir, [PREFIX], **options).start()
    except HubUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def ops_hub(module_dir: Path, docker_client) -> Iterator[HubService]:
    hub = start_hub(module_dir / "hub")
    yield hub
    hub.stop()
    hub.remove_containers(docker_client)


def hub_service_config(hub: HubService, extra: str = "") -> str:
    return (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        f"c.BinderBuild.image_prefix = {PREFIX!r}\n"
        "c.DockerBuilder.build_network = 'none'\n"
        "c.BinderBuild.health_check_ttl = 1\n"
        # A hub that is down fails a launch quickly instead of after retries.
        "c.HubLauncher.retries = 1\n"
        "c.BinderBuild.json_logs = True\n" + hub.binderbuild_config() + extra
    )


def service_with_events(
    module_services: Callable[..., BinderBuildService],
    events_path: Path,
    hub: HubService,
    extra: str = "",
) -> BinderBuildService:
    """A module-lived service on `hub` that writes its launch events to `events_path`."""
    return module_services(
        hub_service_config(hub, extra + f"c.EventLog.sinks = ['file:{events_path}']\n")
    )


def read_events_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checks_by_service(health: dict) -> dict[str, dict]:
    return {c["service"]: c for c in health["checks"]}


@dataclass
class Launched:
    service: BinderBuildService
    events_path: Path
    repo: FixtureRepo
    before: Samples
    after: Samples
    result: SSEResult


@pytest.fixture(scope="module")
def launched(
    module_services: Callable[..., BinderBuildService],
    module_dir: Path,
    ops_hub: HubService,
    git_server: GitServer,
) -> Launched:
    events_path = module_dir / "hub-events.jsonl"
    service = service_with_events(module_services, events_path, ops_hub)
    repo = new_repo(git_server)
    before = scrape(service)
    result = read_events(build_url(service, repo.spec("main")), timeout=600)
    after = scrape(service)
    return Launched(service, events_path, repo, before, after, result)


def delta(a: Samples, b: Samples, name: str, **labels: str) -> float:
    return value(b, name, **labels) - value(a, name, **labels)


def test_launch_is_measured(launched: Launched) -> None:
    assert launched.result.final["phase"] == "ready", launched.result.events[-5:]
    assert launched.result.final["url"].startswith("http://127.0.0.1:")
    a, b = launched.before, launched.after
    assert delta(a, b, "binderbuild_launch_finished_total", status="success", provider="git") == 1
    assert delta(a, b, "binderbuild_launch_duration_seconds_count", status="success") == 1
    assert delta(a, b, "binderbuild_launch_duration_seconds_sum", status="success") > 0.5
    assert value(b, "binderbuild_launch_running_launches") == 0
    assert delta(a, b, "binderbuild_build_finished_total", status="success", provider="git") == 1
    # The launcher's calls to the hub are attributed to the hub.
    assert (
        delta(
            a,
            b,
            "binderbuild_upstream_request_duration_seconds_count",
            service="hub",
            provider="",
            code="2xx",
        )
        >= 2
    )


def test_launch_event(launched: Launched) -> None:
    events = read_events_file(launched.events_path)
    ours = [e for e in events if e["ref"] == launched.repo.sha]
    assert len(ours) == 1
    event = ours[0]
    assert event["status"] == "success"
    assert event["build_only"] is False and event["built"] is True
    assert event["durations"]["launch"] > 0.5
    assert event["durations"]["build"] > 1
    assert event["authenticated"] is False
    assert event["origin"] == f"127.0.0.1:{launched.service.port}"


def test_hub_token_stays_out_of_logs_events_and_metrics(
    launched: Launched, ops_hub: HubService
) -> None:
    texts = {
        "service log": launched.service.log(),
        "launch events": launched.events_path.read_text(),
        "metrics": http(f"{launched.service.url}/metrics").text,
        "health": http(f"{launched.service.url}/health").text,
    }
    assert "Server ready" in texts["service log"] or "launch" in texts["service log"]
    for what, text in texts.items():
        assert ops_hub.token not in text, f"the hub token appears in the {what}"


def test_auth_enabled_accepts_a_real_hub_user_token(
    module_services: Callable[..., BinderBuildService],
    module_dir: Path,
    ops_hub: HubService,
    launched: Launched,
) -> None:
    events_path = module_dir / "auth-events.jsonl"
    service = service_with_events(
        module_services, events_path, ops_hub, "c.BinderBuild.auth_enabled = True\n"
    )
    user = f"opsuser-{secrets.token_hex(3)}"
    status, _ = ops_hub.api("POST", f"users/{user}")
    assert status == 201, status
    status, token_model = ops_hub.api("POST", f"users/{user}/tokens", {"note": "ops test"})
    assert status == 201, (status, token_model)
    user_token = token_model["token"]
    try:
        url = build_url(service, launched.repo.spec("main"), build_only="true")
        anonymous = read_events(url)
        assert anonymous.status == 403
        forged = read_events(url, headers={"Authorization": f"token {secrets.token_hex(16)}"})
        assert forged.status == 403

        as_user = read_events(url, headers={"Authorization": f"token {user_token}"})
        assert as_user.status == 200, as_user.body
        assert as_user.final["phase"] == "ready"
        events = read_events_file(events_path)
        assert [e["authenticated"] for e in events] == [True]
        # The user's token is no more logged than the service's.
        assert user_token not in service.log()
    finally:
        ops_hub.delete_user(user)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


def test_browser_logs_in_through_the_hub_and_then_builds(
    module_dir: Path, launched: Launched, docker_client
) -> None:
    """The whole OAuth dance a browser does, with a real hub (DummyAuthenticator):
    launch page -> hub login -> hub authorize -> binderbuild callback -> page,
    then /build with the login cookie."""
    port = free_port()
    callback = f"http://127.0.0.1:{port}/oauth_callback"
    hub = start_hub(
        module_dir / "oauth-hub",
        auth_enabled=True,
        extra=(
            "c.JupyterHub.authenticator_class = 'dummy'\n"
            "c.JupyterHub.services[0].update(oauth_client_id='service-binder', "
            f"oauth_redirect_uri={callback!r}, oauth_no_confirm=True)\n"
            "c.JupyterHub.load_roles.append("
            "{'name': 'user', 'scopes': ['self', 'access:services']})\n"
        ),
    )
    service = BinderBuildService(
        module_dir / "oauth-bb",
        hub_service_config(
            hub,
            "c.BinderBuild.auth_enabled = True\n"
            # The public URL: the OAuth callback the hub redirects to is under it.
            f"c.BinderBuild.launch_host = 'http://127.0.0.1:{port}/'\n",
        ),
        port=port,
    ).start()
    try:
        jar = CookieJar()
        browser = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPCookieProcessor(jar)
        )
        page_url = f"{service.url}/v2/git/{launched.repo.spec('main')}"
        # Not logged in: the page sends the browser to the hub's login.
        login_page = browser.open(page_url, timeout=30)
        assert "/hub/login" in login_page.url, login_page.url
        html = login_page.read().decode()
        xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', html)
        assert xsrf, "no _xsrf field in the hub's login form"
        user = f"oauthuser-{secrets.token_hex(3)}"
        form = urlencode({"username": user, "password": "any", "_xsrf": xsrf.group(1)}).encode()
        # Log in: hub -> authorize -> binderbuild's callback -> the page again.
        landed = browser.open(urllib.request.Request(login_page.url, data=form), timeout=60)
        assert landed.status == 200
        assert landed.url == page_url, landed.url
        assert any(c.name == "service-binder" for c in jar), [c.name for c in jar]

        # The login cookie authenticates /build.
        build_only = build_url(service, launched.repo.spec("main"), build_only="true")
        request = urllib.request.Request(build_only, headers={"Accept": "text/event-stream"})
        with browser.open(request, timeout=120) as resp:
            assert resp.status == 200
            body = resp.read().decode()
        assert '"phase": "ready"' in body or '"phase":"ready"' in body, body[-500:]
        # Without the cookie it is refused.
        anonymous = http(build_only, headers={"Accept": "text/event-stream"})
        assert anonymous.status == 403
        assert any(user in line for line in service.log().splitlines())
    finally:
        service.stop()
        hub.stop()
        hub.remove_containers(docker_client)


def test_health_follows_a_hub_outage_and_failed_launches_are_counted(
    launched: Launched, ops_hub: HubService
) -> None:
    service = launched.service
    healthy = wait_for_health(service, 200).json()
    hub_check = checks_by_service(healthy)["hub"]
    assert hub_check["ok"] is True and hub_check["required"] is True

    ops_hub.stop()
    try:
        down = wait_for_health(service, 503, timeout=15).json()
        checks = checks_by_service(down)
        assert checks["hub"]["ok"] is False
        assert checks["build-backend"]["ok"] is True
        assert http(f"{service.url}/versions").status == 200

        # A launch while the hub is down fails, with its reason, and is counted.
        before = scrape(service)
        result = read_events(build_url(service, launched.repo.spec("main")), timeout=120)
        assert result.final["phase"] == "failed", result.events[-3:]
        after = scrape(service)
        assert (
            delta(
                before, after, "binderbuild_launch_finished_total", status="failure", provider="git"
            )
            == 1
        )
        assert value(after, "binderbuild_launch_running_launches") == 0
    finally:
        ops_hub.start()
    back = wait_for_health(service, 200, timeout=30).json()
    assert checks_by_service(back)["hub"]["ok"] is True
