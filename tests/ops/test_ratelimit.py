"""Rate limit, build tokens, API tokens, trusted proxies and banned networks,
against a real service process.

The requests ask for a branch that does not exist on the real git server:
each admitted request runs the pipeline for real and fails fast, so no
image is built.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import pytest

from binderbuild.tokens import BuildTokens
from tests.ops.helpers import build_url, http, new_repo, scrape, value
from tests.realservices import GitServer
from tests.service import BinderBuildService
from tests.sse import SSEResult, read_events

pytestmark = [pytest.mark.docker]

TOKEN_SECRET = secrets.token_hex(32)
API_TOKEN = f"api-{secrets.token_hex(16)}"


def config(limit: int, extra: str = "") -> str:
    return (
        "c.BinderBuild.allowed_internal_networks = ['127.0.0.0/8']\n"
        "c.BinderBuild.image_prefix = 'bbops-rl-'\n"
        f"c.RateLimiter.limit = {limit}\n"
        f"c.BinderBuild.build_token_secret = {TOKEN_SECRET!r}\n"
        f"c.BinderBuild.api_tokens = {{{API_TOKEN!r}: 'ci-bot'}}\n" + extra
    )


@pytest.fixture(scope="module")
def spec(git_server: GitServer) -> str:
    # A real repository, a branch it does not have: resolution fails quickly.
    return new_repo(git_server).spec(f"no-such-branch-{secrets.token_hex(3)}")


def build(service: BinderBuildService, spec: str, headers: dict[str, str] | None = None,
          **query: str) -> SSEResult:
    return read_events(build_url(service, spec, **query), headers=headers, timeout=60)


def assert_counted(result: SSEResult, limit: int, remaining: int) -> None:
    assert result.status == 200, result.body
    assert result.headers["x-ratelimit-limit"] == str(limit)
    assert result.headers["x-ratelimit-remaining"] == str(remaining)
    reset = int(result.headers["x-ratelimit-reset"])
    assert time.time() - 5 < reset <= time.time() + 3600 + 5
    # Admitted requests really ran: the missing branch is reported in the stream.
    assert result.final["phase"] == "failed"


def assert_refused(result: SSEResult, limit: int) -> None:
    assert result.status == 429, (result.status, result.body)
    assert result.headers["x-ratelimit-limit"] == str(limit)
    assert result.headers["x-ratelimit-remaining"] == "0"
    assert int(result.headers["retry-after"]) > 0
    body = result.json()
    assert body["status_code"] == 429
    assert "Rate limit exceeded" in body["message"]


def assert_not_counted(result: SSEResult) -> None:
    assert result.status == 200, result.body
    assert "x-ratelimit-limit" not in result.headers
    assert result.final["phase"] == "failed"


def test_limit_tokens_and_forged_forwarded_for(
    module_services: Callable[..., BinderBuildService], spec: str, docker_client
) -> None:
    service = module_services(config(3))
    before = scrape(service)
    for remaining in (2, 1, 0):
        assert_counted(build(service, spec), 3, remaining)

    assert_refused(build(service, spec), 3)
    # A client that is not a trusted proxy cannot choose the IP it is counted as.
    assert_refused(build(service, spec, {"X-Forwarded-For": "203.0.113.5"}), 3)
    assert_refused(build(service, spec, {"X-Forwarded-For": "203.0.113.6, 203.0.113.7"}), 3)

    # The launch page's build token (signed with the service's secret, bound to
    # this repository and this origin) is not counted.
    origin = f"http://127.0.0.1:{service.port}"
    token = BuildTokens(TOKEN_SECRET).issue("git", spec, origin)
    assert_not_counted(build(service, spec, build_token=token))
    # Same token presented from another site's page: counted, so refused.
    assert_refused(build(service, spec, {"Origin": "https://evil.example"}, build_token=token), 3)
    # A token for another repository, or signed with another key: counted.
    other = BuildTokens(TOKEN_SECRET).issue("git", spec + "x", origin)
    assert_refused(build(service, spec, build_token=other), 3)
    forged = BuildTokens(secrets.token_hex(32)).issue("git", spec, origin)
    assert_refused(build(service, spec, build_token=forged), 3)

    # API token holders are not rate limited; a wrong token is just anonymous.
    assert_not_counted(build(service, spec, {"Authorization": f"Bearer {API_TOKEN}"}))
    assert_refused(build(service, spec, {"Authorization": "Bearer wrong-token-123456"}), 3)

    after = scrape(service)
    refused = value(after, "binderbuild_request_refused_total", reason="rate_limit") - value(
        before, "binderbuild_request_refused_total", reason="rate_limit"
    )
    assert refused == 7


def test_forwarded_for_from_a_trusted_proxy_and_banned_networks(
    module_services: Callable[..., BinderBuildService], spec: str, docker_client
) -> None:
    service = module_services(
        config(
            2,
            "c.BinderBuild.trusted_proxies = ['127.0.0.1/32']\n"
            "c.BinderBuild.ban_networks = {'192.0.2.0/24': 'documentation-net'}\n",
        )
    )

    def via_proxy(client: str) -> SSEResult:
        return build(service, spec, {"X-Forwarded-For": client})

    assert_counted(via_proxy("198.51.100.1"), 2, 1)
    assert_counted(via_proxy("198.51.100.1"), 2, 0)
    assert_refused(via_proxy("198.51.100.1"), 2)
    # Another client behind the same proxy has its own budget.
    assert_counted(via_proxy("198.51.100.2"), 2, 1)
    # Whatever the client wrote to the left of what our proxy appended is
    # ignored: the rightmost untrusted address is the client.
    assert_refused(via_proxy("198.51.100.2, 198.51.100.1"), 2)
    # The proxy itself, without the header, is its own client.
    assert_counted(build(service, spec), 2, 1)

    before = scrape(service)
    banned = via_proxy("192.0.2.7")
    assert banned.status == 403
    assert banned.json()["status_code"] == 403
    assert "not accepted" in banned.json()["message"]
    # Refused at the door: no rate-limit bookkeeping, no other endpoint either.
    assert "x-ratelimit-limit" not in banned.headers
    health = http(f"{service.url}/health", headers={"X-Forwarded-For": "192.0.2.200"})
    assert health.status == 403
    after = scrape(service)
    assert value(after, "binderbuild_request_refused_total", reason="banned") - value(
        before, "binderbuild_request_refused_total", reason="banned"
    ) == 2
