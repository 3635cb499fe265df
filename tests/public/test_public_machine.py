"""A single machine others can use (issue 17), for real and on loopback.

One stack for the module, run from the unit scripts/install.sh writes (see
conftest.py): the public mode on https://127.0.0.2:<port> with a test CA.
The tests run in file order; the last two stop and start the stack (an
upgrade from a newer checkout, then backup - wipe - restore) and check that
what the first ones made (users, build history, images) comes back.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

from tests.api.helpers import wait_for
from tests.e2e.conftest import _node, _result, browser_env  # noqa: F401  (fixture)
from tests.public.conftest import PUBLIC_IP, ROOT, PublicStack, Unit
from tests.realservices import GitServer, dockerfile_repo_files, make_repo

pytestmark = [
    pytest.mark.docker,
    pytest.mark.hub,
    pytest.mark.registry,
    pytest.mark.browser,
    pytest.mark.slow,
]

NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# Public binderbuild"]}],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}
FORGED = "evil.example:4443"
# A URL starts with a host name or address (the page's provider patterns,
# regular expressions like "https://\\S+", are not URLs).
URL_RE = re.compile(r"(?:https?|wss?)://[A-Za-z0-9\[][^\s\"'<>()\]\\]*")


@pytest.fixture(scope="module")
def repo(git_server: GitServer) -> str:
    marker = secrets.token_hex(6)
    files = dockerfile_repo_files(marker)
    files["public.ipynb"] = json.dumps(NOTEBOOK)
    name = f"public-{marker}"
    make_repo(git_server.root, name, files)
    return git_server.git_url(name)


def refused(port: int, ip: str = PUBLIC_IP) -> bool:
    with socket.socket() as s:
        s.settimeout(3)
        try:
            s.connect((ip, port))
        except ConnectionRefusedError:
            return True
        return False


def service_urls(text: str) -> list[str]:
    """The absolute URLs in a text that name this machine (a loopback
    address, or the forged host): the ones that must use the public origin.
    Documentation links and provider examples name other hosts."""
    own = []
    for url in URL_RE.findall(text):
        host = (urlsplit(url).hostname or "").lower()
        if host.startswith("127.") or host in ("localhost", "::1") or "evil.example" in host:
            own.append(url)
    return own


# ------------------------------------------------------------ the unit


def test_unit_passes_systemd_analyze_verify(public_stack: PublicStack) -> None:
    unit = public_stack.unit
    assert unit is not None
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit.path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
    s = unit.settings
    assert s["Restart"] == ["on-failure"]
    assert "docker.service" in s["After"][0] and s["Requires"] == ["docker.service"]
    assert s["WantedBy"] == ["multi-user.target"]
    assert unit.exec_start[:2] == ["/bin/bash", str(ROOT / "scripts" / "run.sh")]
    assert unit.environment["BINDERBUILD_VAR"] == str(public_stack.state)
    assert unit.environment["BINDERBUILD_LOG_TO"] == "journal"
    # Logs go to the journal: every component's lines on the unit's output.
    out = public_stack.text()
    assert "jupyterhub: " in out and "binderbuild: " in out and "proxy: " in out


# ------------------------------------------------------------ one origin, one port


def test_only_the_public_port_answers_on_the_public_address(public_stack: PublicStack) -> None:
    s = public_stack
    for name, port in {
        "binderbuild": s.port,
        "hub API": s.hub_api_port,
        "proxy API": s.proxy_api_port,
        "registry": s.registry_port,
        "hub port (unused in public mode)": s.hub_port,
    }.items():
        assert refused(port), f"{name} ({port}) answers on {PUBLIC_IP}"
    assert not refused(s.public_port)
    # ...and the internal parts are there, on loopback.
    assert not refused(s.port, "127.0.0.1") and not refused(s.registry_port, "127.0.0.1")
    assert not refused(s.proxy_api_port, "127.0.0.1")


def test_plain_http_redirects_to_the_configured_origin(public_stack: PublicStack) -> None:
    import http.client

    for host in (f"{PUBLIC_IP}:{public_stack.http_port}", FORGED):
        conn = http.client.HTTPConnection(PUBLIC_IP, public_stack.http_port, timeout=10)
        conn.request("GET", "/v2/gh/a/b/HEAD?labpath=x", headers={"Host": host})
        resp = conn.getresponse()
        assert resp.status == 301
        assert resp.getheader("Location") == f"{public_stack.origin}/v2/gh/a/b/HEAD?labpath=x"
        conn.close()


def test_https_answers_with_hsts_and_secure_cookies(public_stack: PublicStack) -> None:
    home = public_stack.get("/")
    assert home.status == 200
    assert home.headers.get("strict-transport-security") == "max-age=600"
    # Nobody logs in to an anonymous Binder (403), but the hub sets its _xsrf cookie.
    login = public_stack.get("/jupyter/hub/login")
    assert login.headers.get("strict-transport-security") == "max-age=600"
    cookies = login.header_values("set-cookie")
    assert cookies, login.raw_headers
    for cookie in cookies:
        assert "secure" in cookie.lower(), cookie


# ------------------------------------------------------------ the browser


def test_launch_in_chromium_ends_in_jupyterlab_on_the_same_origin(
    public_stack: PublicStack,
    repo: str,
    browser_env: Path,  # noqa: F811
) -> None:
    s = public_stack
    params = {
        "origin": s.origin,
        "repo": repo,
        "ref": "main",
        "path": "public.ipynb",
        "spki": s.ca.spki_sha256,
        "artifacts": str(browser_env),
    }
    try:
        proc = subprocess.run(
            [_node(), str(Path(__file__).parent / "js" / "public_launch.mjs"), json.dumps(params)],
            cwd=ROOT / "tests" / "e2e",
            capture_output=True,
            text=True,
            timeout=700,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the browser did not finish: {exc.stderr!r}\n{s.logs()}", pytrace=False)
    r = _result("public_launch", proc.returncode, proc.stdout, proc.stderr + s.logs())
    final: str = r["finalUrl"]
    assert final.startswith(f"{s.origin}/jupyter/user/"), r
    s.users.add(final.split("/jupyter/user/", 1)[1].split("/")[0])
    assert "public.ipynb" in r["title"] or "public.ipynb" in final, r
    enc = quote(repo, safe="")
    assert r["loadingUrl"] == f"{s.origin}/v2/git/{enc}/main?labpath=public.ipynb"
    assert r["share"]["launchUrl"].startswith(f"{s.origin}/v2/git/{enc}/main"), r["share"]
    for snippet in (r["share"]["badgeMarkdown"], r["share"]["badgeRst"]):
        urls = service_urls(snippet)
        assert urls and all(u.startswith(f"{s.origin}/") for u in urls), snippet
    # Every URL of this machine the pages show, and every URL the browser
    # asked for, is on the one origin, over HTTPS or WSS.
    shown = service_urls(" ".join(r["homeUrls"] + r["loadingUrls"]))
    assert shown, r["loadingUrls"]
    foreign = [u for u in shown if not u.startswith(f"{s.origin}/")]
    assert not foreign, foreign
    asked = [
        u
        for u in r["requested"]
        if not u.startswith(
            (f"{s.origin}/", f"wss://{PUBLIC_IP}:{s.public_port}/", "data:", "blob:")
        )
    ]
    assert not asked, asked
    assert all(u.startswith(f"{s.origin}/") for u in r["navigations"]), r["navigations"]
    # Every cookie on the origin is Secure (the hub's, the server's, binderbuild's).
    assert r["cookies"], r
    assert all(c["secure"] for c in r["cookies"]), r["cookies"]


# ------------------------------------------------------------ stream, API, badge; forged Host


def test_stream_api_badge_on_the_origin_whatever_the_host_header(
    public_stack: PublicStack, repo: str
) -> None:
    s = public_stack
    origin = s.origin
    events = s.events(s.launch_path(repo), headers={"Host": FORGED})
    ready = events[-1]
    assert ready["phase"] == "ready", events
    for key in ("url", "binder_launch_host"):
        assert ready[key].startswith(f"{origin}/"), ready
    assert ready["url"].startswith(f"{origin}/jupyter/user/")
    for value in ready.values():
        for url in service_urls(str(value)):
            assert url.startswith(f"{origin}/"), (url, ready)
    # The server answers on the origin with its token.
    server = s.get(ready["url"][len(origin) :] + f"api/status?token={ready['token']}")
    assert server.status == 200, server.text

    enc = quote(repo, safe="")
    for host in (f"{PUBLIC_IP}:{s.public_port}", FORGED, "127.0.0.1"):
        for path in ("/", f"/v2/git/{enc}/main", "/about"):
            page = s.get(path, headers={"Host": host})
            assert page.status == 200, (path, page.status)
            assert "evil.example" not in page.text
            own = service_urls(page.text)
            assert own or path == "/about", (host, path)  # OpenGraph, share links, badges
            for url in own:
                assert url.startswith(f"{origin}/"), (host, path, url)
        builds = s.get(
            f"/api/builds?provider=git&repo={quote(enc, safe='')}", headers={"Host": host}
        )
        assert builds.status == 200, builds.text
        assert "evil.example" not in builds.text
        for url in service_urls(builds.text):
            assert url.startswith(f"{origin}/"), url
        # A redirect (legacy launch URL) goes to the origin too.
        legacy = s.get("/repo/a/b", headers={"Host": host})
        if legacy.status in (301, 302):
            assert legacy.headers["location"].startswith(("/", f"{origin}/")), legacy.headers
    image = s.get(f"/api/images/git/{enc}/main")
    assert image.status == 200, image.text
    badge = s.get("/badge_logo.svg")
    assert badge.status == 200 and badge.headers["content-type"].startswith("image/svg+xml")


def test_a_killed_component_is_started_again(public_stack: PublicStack) -> None:
    s = public_stack
    for name, path in (("binderbuild", "/versions"), ("jupyterhub", "/jupyter/hub/api/")):
        before = s.pid(name)
        assert before, name
        os.kill(before, signal.SIGKILL)
        wait_for(
            f"{name} to be started again",
            lambda: s.pid(name) not in (0, before) and s._answers(path),  # noqa: B023
            120,
        )
        assert f"{name} exited (status 137); restarting it in" in s.text()


# ------------------------------------------------------------ upgrade, backup


def history_of(s: PublicStack, repo: str) -> list[dict[str, Any]]:
    r = s.get(f"/api/builds?provider=git&spec={quote(quote(repo, safe='') + '/main', safe='')}")
    assert r.status == 200, r.text
    body = r.json()
    return list(body["builds"] if isinstance(body, dict) else body)


def assert_state_kept(s: PublicStack, repo: str, builds_before: list[str], users: set[str]) -> None:
    assert [b["id"] for b in history_of(s, repo)] == builds_before
    enc = quote(repo, safe="")
    assert s.get(f"/api/images/git/{enc}/main").status == 200, "the image is gone from the registry"
    for user in users:
        assert s.hub_api("GET", f"users/{quote(user)}").status == 200, f"hub user {user} is gone"
    # A launch uses the kept image: no build.
    events = s.events(s.launch_path(repo))
    phases = [e["phase"] for e in events]
    assert phases[-1] == "ready" and "building" not in phases, phases
    assert events[-1]["url"].startswith(f"{s.origin}/jupyter/user/")


def newer_checkout(base: Path) -> Path:
    """Another checkout of the project (its scripts copied, the rest linked)."""
    new = base / "binderbuild-next"
    (new / "var").mkdir(parents=True)
    shutil.copytree(ROOT / "scripts", new / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("binderbuild", "templates", "static", "docs", ".venv", "pyproject.toml"):
        (new / name).symlink_to(ROOT / name)
    (new / "var" / "node").symlink_to(ROOT / "var" / "node")
    return new


def test_upgrade_keeps_users_history_and_images(
    public_stack: PublicStack, repo: str, tmp_path: Path
) -> None:
    s = public_stack
    builds = [b["id"] for b in history_of(s, repo)]
    assert builds, "no build in the history"
    users = set(s.users)
    s.stop()
    # The operator's settings and configuration survive the install.
    env_file = s.config_dir / "binderbuild.env"
    env_file.write_text(env_file.read_text() + "BINDERBUILD_RATE_LIMIT=31\n")
    config = (s.config_dir / "config.py").read_text()
    new = newer_checkout(tmp_path)
    unit = s.install(new)
    assert unit.exec_start[1] == str(new / "scripts" / "run.sh")
    assert isinstance(unit, Unit)
    assert "BINDERBUILD_RATE_LIMIT=31\n" in env_file.read_text()
    assert (s.config_dir / "config.py").read_text() == config
    s.start()
    generated = (s.state / "singlemachine" / "binderbuild_config.py").read_text()
    assert 'int("31")' in generated, "the kept setting did not reach the stack"
    assert_state_kept(s, repo, builds, users)


def backup_sh(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "backup.sh"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_backup_wipe_restore_brings_back_users_history_and_images(
    public_stack: PublicStack, repo: str, tmp_path: Path
) -> None:
    s = public_stack
    builds = [b["id"] for b in history_of(s, repo)]
    users = set(s.users)
    archive = tmp_path / "backup.tar"
    # While the stack runs: the databases by SQLite's backup API, the
    # registry read-only meanwhile, and writable again afterwards.
    done = backup_sh("create", "--state", str(s.state), "--out", str(archive), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "registry read-only" in done.stdout and "writable again" in done.stdout, done.stdout
    assert s._answers("/versions")
    s.stop()
    shutil.rmtree(s.state)
    # restore refuses a directory with state in it unless told.
    s.state.mkdir()
    (s.state / "something").write_text("x")
    refused_restore = backup_sh("restore", str(archive), "--state", str(s.state), timeout=60)
    assert refused_restore.returncode != 0 and "not empty" in refused_restore.stderr
    shutil.rmtree(s.state)
    done = backup_sh("restore", str(archive), "--state", str(s.state), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    s.start()
    assert_state_kept(s, repo, builds, users)
