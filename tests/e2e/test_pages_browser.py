"""The home and loading pages in real headless Chromium, against binderbuild
running for real (no hub: the default configuration builds only)."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import service_config
from tests.e2e.conftest import InteractiveScenario
from tests.e2e.repos import HOSTILE_STEPS, SLOW_STEPS, with_steps
from tests.e2e.tcpproxy import TcpProxy
from tests.realservices import GitServer, dockerfile_repo_files, make_repo
from tests.service import BinderBuildService
from tests.sse import read_events

pytestmark = [pytest.mark.browser, pytest.mark.docker]

VECTORS = json.loads((Path(__file__).parent.parent / "pages" / "redirect_vectors.json").read_text())["cases"]


def _repo(git_server: GitServer, files: dict[str, str]) -> str:
    name = f"e2e-{secrets.token_hex(5)}"
    make_repo(git_server.root, name, files)
    return git_server.git_url(name)


@pytest.fixture(scope="module")
def good_repo(git_server: GitServer) -> str:
    return _repo(git_server, dockerfile_repo_files(secrets.token_hex(6)))


@pytest.fixture(scope="module")
def loading_repo(git_server: GitServer) -> str:
    """Built by the loading page test itself, so its log shows a whole build."""
    return _repo(git_server, dockerfile_repo_files(secrets.token_hex(6)))


@pytest.fixture(scope="module")
def hostile_repo(git_server: GitServer) -> str:
    return _repo(git_server, with_steps(secrets.token_hex(6), HOSTILE_STEPS))


@pytest.fixture(scope="module")
def slow_repo(git_server: GitServer) -> str:
    return _repo(git_server, with_steps(secrets.token_hex(6), SLOW_STEPS))


def v2(service_url: str, repo: str, ref: str = "main", query: str = "") -> str:
    return f"{service_url}/v2/git/{quote(repo, safe='')}/{ref}" + (f"?{query}" if query else "")


def test_home_page(browser_env: Path, e2e_service: BinderBuildService, good_repo: str, scenario: Any) -> None:
    r = scenario(
        "home",
        {"url": e2e_service.url + "/", "repo": good_repo, "ref": "main", "path": "index.ipynb",
         "artifacts": str(browser_env), "launch": True},
    )
    assert "git" in r["providers"]
    assert r["repoLabel"] == "Git repository URL"
    # Validation while typing, with the provider's own rule, tied to the field.
    assert r["invalid"]["ariaInvalid"] == "true"
    assert r["invalid"]["errorVisible"] is True
    assert "not a valid Git repository" in r["invalid"]["error"]
    assert "repository-error" in r["invalid"]["describedBy"]
    assert r["invalid"]["launchUrl"] == ""
    assert r["invalid"]["copyDisabled"] is True
    assert "not a valid branch" in r["badRef"]
    assert "inside the server" in r["badPath"]
    # Valid input: launch URL and both badge snippets, live.
    launch = f"{e2e_service.url}/v2/git/{quote(good_repo, safe='')}/main?labpath=index.ipynb"
    badge = f"{e2e_service.url}/badge_logo.svg"
    assert r["valid"]["ariaInvalid"] == "false"
    assert r["valid"]["errorVisible"] is False
    assert r["valid"]["launchUrl"] == launch
    assert r["valid"]["markdown"] == f"[![Binder]({badge})]({launch})"
    assert r["valid"]["rst"] == f".. image:: {badge}\n   :target: {launch}"
    assert r["urlpathLaunchUrl"] == launch.replace("labpath=", "urlpath=")
    assert r["clipboardLaunch"] == launch
    assert r["clipboardMarkdown"] == r["valid"]["markdown"]
    assert r["copyStatus"] == "Markdown badge copied."
    # Keyboard order follows the form; focus is visible.
    assert r["tabOrder"][:7] == ["provider", "repository", "ref", "path-type", "path", "launch", "launch-url"]
    assert r["focusOutline"] == "solid"
    # Contrast (WCAG AA: 4.5:1 for text).
    for name, ratio in r["contrast"].items():
        assert ratio >= 4.5, (name, ratio)
    # A phone-sized screen scrolls only vertically; the launch button spans it.
    assert r["phone"]["scrollWidth"] <= r["phone"]["innerWidth"]
    assert r["phone"]["launchWidth"] > 300
    # The launch button (pressed with Enter) opens the loading page on this site.
    assert r["launchedTo"] == launch
    assert r["errors"] == []
    assert (browser_env / "home.png").stat().st_size > 10_000


def test_loading_page_build_only(
    browser_env: Path, e2e_service: BinderBuildService, loading_repo: str, scenario: Any
) -> None:
    url = v2(e2e_service.url, loading_repo, query="labpath=index.ipynb")
    r = scenario(
        "loading",
        {"url": url, "until": "image-built", "artifacts": str(browser_env), "showLog": True,
         "screenshot": "loading.png", "phoneScreenshot": "loading-phone.png"},
    )
    assert r["state"] == "image-built"
    assert r["phaseText"] == "Image built."
    assert re.fullmatch(r"bbtest-local-[a-z0-9.-]+:[0-9a-f]{40}", r["imageName"]), r["imageName"]
    assert "there is no server to open" in r["resultText"]
    # Build only: the page stays where it is.
    assert r["location"] == url
    assert r["progress"] == "100"
    # (The page script sets the progress icon before the observer starts.)
    assert [f.rsplit("/", 1)[1] for f in r["favicons"]] == ["favicon-progress.svg", "favicon-ready.svg"]
    assert r["states"][-1] == "image-built"
    assert r["logVisible"] is True and r["toggleExpanded"] == "true"
    assert any("is ready" in line for line in r["logTail"]), r["logTail"]
    assert any(line.startswith("Step 1/") for line in r["logHead"]), r["logHead"]
    assert r["failureVisible"] is False
    assert r["title"].startswith("Image built")
    assert r["phone"]["scrollWidth"] <= r["phone"]["innerWidth"]
    assert r["errors"] == []


def test_failing_build_shows_reason_and_inert_log(
    browser_env: Path, e2e_service: BinderBuildService, hostile_repo: str, scenario: Any
) -> None:
    url = v2(e2e_service.url, hostile_repo)
    r = scenario("loading", {"url": url, "until": "failed", "artifacts": str(browser_env),
                             "screenshot": "loading-failed.png"})
    assert r["state"] == "failed"
    assert r["failureVisible"] is True
    assert r["failureHeading"] == "Build failed"
    # The real reason: repo2docker's exit and the failing step's own code.
    assert "repo2docker exited with code" in r["failureMessage"]
    assert "non-zero code: 3" in r["failureMessage"]
    assert r["failureStatus"] == "500"
    assert r["favicons"][-1].endswith("/favicon-failed.svg")
    # The log stays (and is shown) after the failure.
    assert r["logVisible"] is True
    assert any("hostile-end" in line for line in r["logTail"]), r["logTail"]
    log = r["logText"]
    # Markup in the log is text: shown literally, never parsed or run.
    assert "<script>window.__pwned=1</script>" in log
    assert '<img src=x onerror="window.__pwned=2">' in log
    assert r["pwned"] is None
    assert set(r["elementsInLog"]) <= {"div", "span"}, r["elementsInLog"]
    # Colours are rendered; every other escape sequence is gone.
    assert r["redAlert"], "red-alert is not in a styled span"
    assert any("ansi-fg-9" in s["className"] and "ansi-bold" in s["className"] for s in r["redAlert"])
    assert r["redAlert"][0]["color"] == "rgb(255, 143, 143)"
    assert "red-alert after-osc after-clear" in log
    # The escapes' payloads appear only in the echo of the Dockerfile step
    # ("Step N/M : RUN printf ..."), never from the output itself.
    output = [line for line in log.split("\n") if "RUN printf" not in line]
    assert not [line for line in output if "pwned-title" in line or "evil.example" in line], output[-50:]
    assert "pwned-title" not in r["title"]
    assert "click-me" in output, output[-50:]
    assert r["logHasControlChars"] is False
    # 3,000 lines all there; the 200,000-character line cut with a note.
    for n in ("1", "1500", "3000"):
        assert f"\n{n}\n" in log
    assert r["logLines"] > 3000
    assert r["longestLine"] < 10_100
    assert any("more characters not shown" in note for note in r["truncatedNotes"]), r["truncatedNotes"]
    assert r["scrollWidth"] <= r["innerWidth"]
    assert r["errors"] == []


def test_log_view_stays_responsive(browser_env: Path, e2e_service: BinderBuildService, scenario: Any) -> None:
    r = scenario("logstress", {"url": e2e_service.url + "/about"})
    assert r["totalLines"] == 100_000 + 1 + 50_000 + 1
    assert r["domLines"] == 5000
    assert r["omitted"] == "… 145,002 earlier lines not shown"
    assert r["lastLine"] == "the end"
    assert r["longest"] < 10_100
    assert r["truncated"] == []  # the long line scrolled out of the kept 5,000
    # The page stayed responsive: no task blocked the heartbeat for long.
    print("log view under load:", {k: r[k] for k in ("elapsedMs", "maxGapMs", "domSize")})
    assert r["maxGapMs"] < 1000, r
    assert r["elapsedMs"] < 120_000, r
    assert r["errors"] == []


def test_redirect_rules_in_chromium(browser_env: Path, e2e_service: BinderBuildService, scenario: Any) -> None:
    server = "http://127.0.0.1:8000/user/someone-abc/"
    r = scenario("redirect", {"url": e2e_service.url + "/about", "server": server, "vectors": VECTORS})
    assert len(r["results"]) == len(VECTORS)
    for vector, got in zip(VECTORS, r["results"], strict=True):
        assert got["origin"] == "http://127.0.0.1:8000", got
        assert got["protocol"] == "http:", got
        assert got["pathname"].startswith("/user/someone-abc/"), got
        assert got["ignored"] == (vector["expect"] is None), got
        if vector["expect"] is None:
            assert got["url"] == server + "?token=tok", got
    assert r["errors"] == []


def test_reconnect_after_dropped_connection(
    browser_env: Path, e2e_service: BinderBuildService, slow_repo: str
) -> None:
    proxy = TcpProxy(e2e_service.port).start()
    try:
        page = InteractiveScenario(
            "reconnect",
            {"url": v2(proxy.url, slow_repo), "cutAfter": "tick-4", "artifacts": str(browser_env)},
        )
        page.wait_for("cut", timeout=240)
        dropped = proxy.drop_all()
        page.answer()
        r = page.result(timeout=240)
    finally:
        proxy.stop()
    assert dropped >= 1
    assert r["state"] == "image-built"
    assert "reconnecting" in r["states"], r["states"]
    assert r["connections"] == "2"
    # Every line exactly once: the replay after reconnecting was skipped.
    for i in range(1, 16):
        assert r["logLines"].count(f"tick-{i}") == 1, (i, r["logLines"])
    assert sum("Step 1/" in line for line in r["logLines"]) == 1
    # One stream before the cut, one after: the page made no other /build request.
    builds = [path for path in proxy.requests if "/build/" in path]
    assert len(builds) == 2, proxy.requests
    assert all("build_token=" in path for path in builds)
    # The only error is the cut itself, as Chromium reports it.
    assert all("ERR_INCOMPLETE_CHUNKED_ENCODING" in e for e in r["errors"]), r["errors"]


@pytest.fixture(scope="module")
def limited_service(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Any:
    """binderbuild admitting one unauthenticated /build request per hour per address."""
    service = BinderBuildService(
        tmp_path_factory.mktemp("e2e-limited"), service_config(None, "c.RateLimiter.limit = 1")
    ).start()
    yield service
    service.stop()


def test_build_token_passes_the_rate_limit_and_refusals_are_explained(
    browser_env: Path, limited_service: BinderBuildService, loading_repo: str, scenario: Any
) -> None:
    build = f"{limited_service.url}/build/git/{quote(loading_repo, safe='')}/main"
    assert read_events(build, timeout=300).status == 200
    refused = read_events(build, timeout=60)
    assert refused.status == 429, "the limit of one request is not in force"
    url = v2(limited_service.url, loading_repo)
    # The page's own stream carries its build token: not counted, not refused.
    ok = scenario("loading", {"url": url, "until": "image-built", "artifacts": str(browser_env)})
    assert ok["state"] == "image-built"
    assert ok["errors"] == []
    # Without a valid token the page is refused; it says why, with the server's words.
    bad = scenario(
        "loading",
        {"url": url, "until": "failed", "artifacts": str(browser_env), "corruptToken": True, "expectLog": False},
    )
    assert bad["state"] == "failed"
    assert bad["failureStatus"] == "429"
    assert "Rate limit exceeded" in bad["failureMessage"], bad["failureMessage"]
    assert bad["failureHeading"] == "Could not prepare the repository"


def test_reconnect_with_an_expired_build_token(
    browser_env: Path, tmp_path: Path, docker_client: Any, git_server: GitServer
) -> None:
    """Tokens live three seconds and the address has used its one request: the
    reconnect is refused (429), the page fetches a fresh token and goes on."""
    repo = _repo(git_server, with_steps(secrets.token_hex(6), SLOW_STEPS))
    extra = "c.RateLimiter.limit = 1\nc.BinderBuild.build_token_expires_seconds = 3"
    service = BinderBuildService(tmp_path / "svc", service_config(None, extra)).start()
    proxy = TcpProxy(service.port).start()
    try:
        # Use up the address's one request (a repository that does not exist: no build).
        assert read_events(f"{service.url}/build/git/{quote(git_server.git_url('none'), safe='')}/main",
                           timeout=60).status == 200
        page = InteractiveScenario("reconnect", {"url": v2(proxy.url, repo), "cutAfter": "tick-4"})
        page.wait_for("cut", timeout=240)
        proxy.drop_all()
        page.answer()
        r = page.result(timeout=240)
    finally:
        proxy.stop()
        service.stop()
    assert r["state"] == "image-built", r["states"]
    assert r["connections"] == "2"
    for i in range(1, 16):
        assert r["logLines"].count(f"tick-{i}") == 1, (i, r["logLines"])
    builds = [path for path in proxy.requests if "/build/" in path]
    tokens = [re.search(r"build_token=([^&]+)", path).group(1) for path in builds]  # type: ignore[union-attr]
    # First stream; the browser's own reconnect (refused); the page's probe
    # (refused); the stream with a fresh token.
    assert len(builds) == 4, builds
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]
    assert any("/v2/" in path for path in proxy.requests[1:]), proxy.requests


def test_replayed_streams_are_skipped_or_redrawn(
    browser_env: Path, e2e_service: BinderBuildService, scenario: Any
) -> None:
    """Scripted streams: the second repeats the first and goes on (repeats
    skipped); the third differs after one event (history cut and redrawn)."""

    def ev(phase: str, message: str, **fields: str) -> dict[str, str]:
        return {"phase": phase, "message": message, **fields}

    streams = [
        [ev("waiting", "In the queue\n"), ev("building", "one\n"), ev("building", "tw")],
        [ev("waiting", "In the queue\n"), ev("building", "one\n"), ev("building", "tw"),
         ev("building", "o\nthree\n")],
        [ev("waiting", "In the queue\n"), ev("building", "one\n"),
         ev("ready", "Image x:1 is ready.\n", imageName="x:1")],
    ]
    r = scenario("replay", {"url": v2(e2e_service.url, "git://127.0.0.1:9/r.git"), "streams": streams})
    assert r["served"] == 3
    assert r["connections"] == "3"
    assert r["state"] == "image-built"
    assert r["logLines"] == ["In the queue", "one", "Image x:1 is ready."], r["logLines"]
    # Only the third stream made the page redraw; the second one's repeats were skipped.
    assert r["clears"] == 1, r["clears"]
    assert r["errors"] == []
