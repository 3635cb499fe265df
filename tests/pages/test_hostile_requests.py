"""Requests an attacker would send to the pages (issue 11, finding 5): each
gets a clear answer and leaves no traceback in the service log, and nothing
from the request's Host header ends up in the URLs a page hands out."""

from __future__ import annotations

from tests.pages.conftest import get
from tests.service import BinderBuildService


def test_undecodable_path_is_a_400_page_without_traceback(
    pages_service: BinderBuildService,
) -> None:
    before = len(pages_service.log())
    resp = get(f"{pages_service.url}/v2/git/%9f/HEAD")
    assert resp.status == 400
    assert resp.headers["content-type"].startswith("text/html")
    new_log = pages_service.log()[before:]
    assert "Traceback" not in new_log and "Uncaught exception" not in new_log, new_log


def test_host_header_is_not_reflected_into_share_urls(pages_service: BinderBuildService) -> None:
    resp = get(
        f"{pages_service.url}/v2/gh/binder-examples/requirements/HEAD",
        headers={"Host": "evil.example:8585"},
    )
    assert resp.status == 200
    assert "evil.example" not in resp.text
    config = resp.page_config()
    assert "evil.example" not in str(config)


def test_loopback_host_header_still_gives_working_urls(pages_service: BinderBuildService) -> None:
    # Opening the service at its own loopback address keeps working links.
    resp = get(f"{pages_service.url}/v2/gh/binder-examples/requirements/HEAD")
    assert resp.status == 200
    assert f"127.0.0.1:{pages_service.port}/v2/gh/binder-examples/requirements/HEAD" in resp.text
