"""The recording format, its replay client, and the --record/refresh path.

Recording is exercised for real against a GitHub-shaped API served by Tornado
on 127.0.0.1 (the hosted API is not reachable here): what ``record`` writes
must replay to the same resolution, tokens must never be written, and
``refresh`` must bring a file up to date, conditional requests included.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import tornado.web
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from traitlets.config import Config

from binderbuild.http import HttpRequestSpec, HttpResponse, TransportError
from binderbuild.providers.github import GitHubRepoProvider
from binderbuild.providers.recording import (
    ReplayHttpClient,
    ReplayMiss,
    interaction_from,
    main,
    record,
    refresh,
)


class FakeGitHub:
    """State of the loopback API: the branch's SHA and its ETag."""

    def __init__(self) -> None:
        self.sha = "1111111111111111111111111111111111111111"
        self.etag = '"etag-one"'
        self.authorization: list[str] = []


class CommitsHandler(tornado.web.RequestHandler):
    def initialize(self, state: FakeGitHub) -> None:
        self.state = state

    def get(self, owner: str, repo: str, ref: str) -> None:
        self.state.authorization.append(self.request.headers.get("Authorization", ""))
        self.set_header("X-RateLimit-Limit", "60")
        self.set_header("X-RateLimit-Remaining", "42")
        if self.request.headers.get("If-None-Match") == self.state.etag:
            self.set_status(304)
            return
        self.set_header("Content-Type", "application/vnd.github.sha; charset=utf-8")
        self.set_header("ETag", self.state.etag)
        self.set_header("Set-Cookie", "session=should-not-be-recorded")
        self.write(self.state.sha)


@contextlib.asynccontextmanager
async def fake_github() -> AsyncIterator[tuple[str, FakeGitHub]]:
    """Serve the fake API in the running loop (async fixtures need a plugin)."""
    state = FakeGitHub()
    app = tornado.web.Application(
        [(r"/repos/([^/]+)/([^/]+)/commits/(.+)", CommitsHandler, {"state": state})]
    )
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets(sockets)
    try:
        yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}", state
    finally:
        server.stop()


def github_config(base: str, token: str = "") -> Config:
    config = Config()
    config.GitHubRepoProvider.api_base_url = base
    if token:
        config.GitHubRepoProvider.access_token = token
    return config


async def test_replay_prefers_the_most_specific_match() -> None:
    url = "https://api.example/x"
    client = ReplayHttpClient(
        [
            {"request": {"url": url}, "response": {"status": 200, "body": "plain"}},
            {
                "request": {"url": url, "headers": {"If-None-Match": '"e"'}},
                "response": {"status": 304},
            },
        ]
    )
    plain = await client.request("GET", url)
    conditional = await client.request("GET", url, headers={"if-none-match": '"e"'})
    assert (plain.status, plain.body) == (200, b"plain")
    assert conditional.status == 304
    with pytest.raises(ReplayMiss, match="No recorded answer for GET https://api.example/y"):
        await client.request("GET", "https://api.example/y")
    with pytest.raises(ReplayMiss):
        await client.request("POST", url)


async def test_replay_errors_and_time_templates() -> None:
    client = ReplayHttpClient(
        [
            {
                "request": {"url": "https://a.example/t"},
                "error": "HTTP 599: Timeout during request",
            },
            {
                "request": {"url": "https://a.example/r"},
                "response": {
                    "status": 403,
                    "headers": {"X-RateLimit-Reset": "${now+600}"},
                    "json": {"m": 1},
                },
            },
        ]
    )
    with pytest.raises(TransportError, match="Timeout"):
        await client.request("GET", "https://a.example/t")
    resp = await client.request("GET", "https://a.example/r")
    assert 590 <= int(resp.header("x-ratelimit-reset")) - time.time() <= 601
    assert resp.json() == {"m": 1}


def test_interaction_from_keeps_no_credentials() -> None:
    spec = HttpRequestSpec(
        "GET",
        "https://api.example/x",
        {"Authorization": "Bearer top-secret", "Accept": "application/json", "PRIVATE-TOKEN": "pt"},
    )
    resp = HttpResponse(
        status=200,
        headers={"Content-Type": "application/json", "Set-Cookie": "s=1", "ETag": '"e"'},
        body=b'{"a": 1}',
    )
    item = interaction_from(spec, resp)
    text = json.dumps(item)
    assert "top-secret" not in text and "PRIVATE-TOKEN" not in text and "Set-Cookie" not in text
    assert item["request"]["headers"] == {"Accept": "application/json"}
    assert item["response"]["json"] == {"a": 1}
    binary = interaction_from(spec, HttpResponse(status=200, headers={}, body=b"\xff\xfe"))
    assert "body_base64" in binary["response"]


async def test_record_then_replay_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "github" / "recorded.json"
    token = "ghp_recording_token_must_not_be_saved"
    async with fake_github() as (base, state):
        outcome = await record(
            "gh", "owner/repo/main", out, twice=True, config=github_config(base, token)
        )
    assert outcome == f"resolved to {state.sha}"
    assert state.authorization == [f"Bearer {token}"] * 2
    text = out.read_text()
    assert token not in text and "should-not-be-recorded" not in text
    statuses = [i["response"]["status"] for i in json.loads(text)["interactions"]]
    assert statuses == [200, 304]

    provider = GitHubRepoProvider(http=ReplayHttpClient(out), api_base_url=base)
    first = await provider.resolve("owner/repo/main")
    second = await provider.resolve("owner/repo/main")
    assert first.resolved_ref == second.resolved_ref == state.sha
    assert provider.http.requests[1].headers["If-None-Match"] == state.etag


async def test_record_keeps_failures(tmp_path: Path) -> None:
    out = tmp_path / "down.json"
    config = github_config("http://127.0.0.1:9")  # discard port: nothing listens
    outcome = await record("gh", "owner/repo/main", out, config=config)
    assert outcome.startswith("ProviderError: GitHub could not be reached")
    assert "error" in json.loads(out.read_text())["interactions"][0]


async def test_refresh_updates_answers_and_etags(tmp_path: Path) -> None:
    out = tmp_path / "refresh.json"
    async with fake_github() as (base, state):
        await record("gh", "owner/repo/main", out, twice=True, config=github_config(base))
        data = json.loads(out.read_text())
        data["interactions"].append(
            {"synthetic": True, "request": {"url": f"{base}/hand-made"}, "error": "kept as is"}
        )
        out.write_text(json.dumps(data))
        state.sha, state.etag = "2222222222222222222222222222222222222222", '"etag-two"'
        await refresh([out])
    items = json.loads(out.read_text())["interactions"]
    assert items[0]["response"]["body"] == state.sha
    assert items[1]["request"]["headers"]["If-None-Match"] == state.etag
    assert items[1]["response"]["status"] == 304
    assert items[2] == {
        "synthetic": True,
        "request": {"url": f"{base}/hand-made"},
        "error": "kept as is",
    }


def test_cli_record_with_config_file(tmp_path: Path, capsys) -> None:
    config = tmp_path / "cfg.py"
    # Port 9 (discard): the CLI path runs and records the failure.
    config.write_text("c.GitHubRepoProvider.api_base_url = 'http://127.0.0.1:9'\n")
    out = tmp_path / "cli.json"
    assert main(["record", "gh", "owner/repo/main", str(out), "--config", str(config)]) == 0
    assert "could not be reached" in capsys.readouterr().out
    assert json.loads(out.read_text())["interactions"][0]["request"]["url"].startswith(
        "http://127.0.0.1:9/repos/owner/repo/commits/main"
    )


def test_every_fixture_file_is_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "fixtures" / "recordings"
    files = sorted(root.glob("*/*.json"))
    assert len(files) >= 10
    for path in files:
        data = json.loads(path.read_text())
        assert data["comment"], path
        for item in data["interactions"]:
            assert item["request"]["url"].startswith("https://"), path
            assert ("response" in item) != ("error" in item), path
            sent = {k.lower() for k in item["request"].get("headers", {})}
            assert not sent & {"authorization", "private-token", "cookie"}, path
