"""Access control against a real service: CORS, API-only mode, API tokens and
the hub login requirement (auth_enabled)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

import pytest

from tests.ops.helpers import build_url, http, new_repo
from tests.realservices import GitServer, free_port
from tests.service import BinderBuildService
from tests.sse import read_events

pytestmark = [pytest.mark.docker]

API_TOKEN = f"api-{secrets.token_hex(16)}"
ORIGIN = "https://frontend.example"


def base_config(extra: str = "") -> str:
    return (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbops-acc-'\n"
        f"c.BinderBuild.api_tokens = {{{API_TOKEN!r}: 'ci-bot'}}\n" + extra
    )


@pytest.fixture(scope="module")
def missing_ref_spec(git_server: GitServer) -> str:
    return new_repo(git_server).spec(f"no-such-branch-{secrets.token_hex(3)}")


def test_api_only_mode_and_cors(
    module_services: Callable[..., BinderBuildService], missing_ref_spec: str, docker_client
) -> None:
    service = module_services(
        base_config(
            "c.BinderBuild.enable_api_only_mode = True\n"
            f"c.BinderBuild.cors_allow_origin = {ORIGIN!r}\n"
        )
    )
    for path in ("/versions", "/health", "/metrics", "/api/repoproviders"):
        resp = http(service.url + path)
        assert resp.status == 200, (path, resp.status, resp.text)
        assert resp.headers.get("access-control-allow-origin") == ORIGIN, path
    for path in ("/", "/v2/git/x/main", "/badge.svg", "/about", "/repo/a/b"):
        resp = http(service.url + path)
        assert resp.status == 404, (path, resp.status)
        assert resp.json()["status_code"] == 404
    stream = read_events(build_url(service, missing_ref_spec), timeout=60)
    assert stream.status == 200
    assert stream.headers.get("access-control-allow-origin") == ORIGIN
    assert stream.final["phase"] == "failed"


def test_pages_and_no_cors_by_default(
    module_services: Callable[..., BinderBuildService], docker_client
) -> None:
    service = module_services(base_config())
    home = http(service.url + "/")
    assert home.status == 200
    assert home.headers["content-type"].startswith("text/html")
    assert "access-control-allow-origin" not in http(service.url + "/versions").headers


def test_auth_enabled_requires_a_hub_user_or_an_api_token_for_builds(
    module_services: Callable[..., BinderBuildService], missing_ref_spec: str, docker_client
) -> None:
    # The hub is configured but not running: identifying a hub token fails,
    # which must be a refusal, never a pass.
    dead_hub = f"http://127.0.0.1:{free_port()}/"
    service = module_services(
        base_config(
            "c.BinderBuild.auth_enabled = True\n"
            f"c.BinderBuild.hub_url = {dead_hub!r}\n"
            f"c.BinderBuild.hub_api_token = {secrets.token_hex(16)!r}\n"
        )
    )
    anonymous = read_events(build_url(service, missing_ref_spec, build_only="true"))
    assert anonymous.status == 403
    assert "Log in" in anonymous.json()["message"]

    unknown_hub_token = read_events(
        build_url(service, missing_ref_spec, build_only="true"),
        headers={"Authorization": f"token {secrets.token_hex(16)}"},
    )
    assert unknown_hub_token.status == 403

    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    launch = read_events(build_url(service, missing_ref_spec), headers=bearer)
    assert launch.status == 403
    assert "build_only" in launch.json()["message"]
    build = read_events(build_url(service, missing_ref_spec, build_only="true"), headers=bearer)
    assert build.status == 200
    assert build.final["phase"] == "failed"  # admitted: the missing branch is reported

    # The OAuth callback is served (and refuses a call without an OAuth code).
    callback = http(service.url + "/oauth_callback")
    assert callback.status == 400
