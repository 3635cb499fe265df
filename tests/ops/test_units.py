"""Pure pieces of the operations modules, without services: the rate-limit
window, client-IP resolution, scrubbing, secret collection, log formats,
event sinks, URL attribution."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from traitlets.config import Config

from binderbuild.auth import ApiTokens, api_only
from binderbuild.clientip import BannedNetworks, ClientIPResolver
from binderbuild.errors import ConfigError
from binderbuild.eventlog import EventLog, FileSink, make_sink
from binderbuild.logging_setup import JsonFormatter, TextFormatter, scrub, set_request_id
from binderbuild.metrics import Upstream, UpstreamClassifier
from binderbuild.operations import collect_secrets
from binderbuild.ratelimit import RateLimiter
from binderbuild.secrets import Scrubber


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_admits_limit_then_frees_one_slot_at_a_time() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, wall_clock=clock)
    limiter.limit, limiter.period_seconds = 3, 60
    states = []
    for t in (1000, 1020, 1040):
        clock.now = t
        states.append(limiter.hit("a"))
    assert [s.remaining for s in states] == [2, 1, 0]
    assert all(s.allowed for s in states)
    clock.now = 1045
    refused = limiter.hit("a")
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after == pytest.approx(15)
    assert refused.reset == 1060
    # Another key has its own window.
    assert limiter.hit("b").allowed
    # The first request leaves the window: exactly one slot frees.
    clock.now = 1060.5
    assert limiter.hit("a").allowed
    assert not limiter.hit("a").allowed


def test_refused_requests_do_not_extend_the_window() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, wall_clock=clock)
    limiter.limit, limiter.period_seconds = 1, 60
    assert limiter.hit("a").allowed
    for step in range(5):
        clock.now += 10
        assert not limiter.hit("a").allowed, step
    clock.now = 1061
    assert limiter.hit("a").allowed


def test_idle_clients_are_forgotten() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, wall_clock=clock)
    limiter.limit, limiter.period_seconds, limiter.clean_seconds = 5, 60, 10
    for ip in ("a", "b", "c"):
        limiter.hit(ip)
    clock.now += 120
    limiter.hit("d")
    assert set(limiter._hits) == {"d"}


@pytest.mark.parametrize(
    ("trusted", "peer", "xff", "expected"),
    [
        ([], "127.0.0.1", "203.0.113.9", "127.0.0.1"),  # no proxies trusted
        (["10.0.0.0/8"], "127.0.0.1", "203.0.113.9", "127.0.0.1"),  # peer not trusted
        (["10.0.0.0/8"], "10.0.0.2", "203.0.113.9", "203.0.113.9"),
        (["10.0.0.0/8"], "10.0.0.2", "6.6.6.6, 203.0.113.9", "203.0.113.9"),  # spoofed left part
        (["10.0.0.0/8"], "10.0.0.2", "203.0.113.9, 10.0.0.7", "203.0.113.9"),  # two proxies
        (["10.0.0.0/8"], "10.0.0.2", "garbage, 10.0.0.7", "10.0.0.7"),
        (["10.0.0.0/8"], "10.0.0.2", "", "10.0.0.2"),
        (["10.0.0.0/8"], "::ffff:10.0.0.2", "[2001:db8::1]:443", "2001:db8::1"),
    ],
)
def test_client_ip(trusted: list[str], peer: str, xff: str, expected: str) -> None:
    headers = {"X-Forwarded-For": xff} if xff else {}
    assert ClientIPResolver(trusted).resolve(peer, headers) == expected


def test_banned_networks() -> None:
    banned = BannedNetworks({"192.0.2.0/24": "docs", "2001:db8::/32": ""})
    assert banned.match("192.0.2.55") == "docs"
    assert banned.match("::ffff:192.0.2.1") == "docs"
    assert banned.match("2001:db8::5") == "2001:db8::/32"
    assert banned.match("198.51.100.1") is None
    assert banned.match("not-an-ip") is None
    assert not BannedNetworks({})


def test_api_tokens() -> None:
    from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

    tokens = ApiTokens({"tok-aaaaaaaa": "ci", "tok-bbbbbbbb": "bot"})

    def request(auth: str) -> HTTPServerRequest:
        return HTTPServerRequest(
            start_line=RequestStartLine("GET", "/", "HTTP/1.1"),
            headers=HTTPHeaders({"Authorization": auth, "Host": "127.0.0.1"}),
        )

    assert tokens.caller(request("Bearer tok-bbbbbbbb")) == "bot"
    assert tokens.caller(request("token tok-aaaaaaaa")) == "ci"
    assert tokens.caller(request("Bearer tok-aaaaaaab")) is None
    assert tokens.caller(request("Basic dXNlcjpwYXNz")) is None
    assert ApiTokens({}).caller(request("Bearer x")) is None


def test_api_only_keeps_api_routes() -> None:
    handlers = [
        ("/b/build/(.+)", object),
        ("/b/versions", object),
        ("/b/health", object),
        ("/b/metrics", object),
        ("/b/api/repoproviders", object),
        ("/b/v2/(.+)", object),
        ("/b/", object),
        ("/b/badge\\.svg", object),
    ]
    kept = [h[0] for h in api_only(handlers, "/b/")]
    assert kept == [h[0] for h in handlers[:5]]


def test_scrub_urls_tokens_and_configured_secrets() -> None:
    scrubber = Scrubber(["configured-secret-1"])
    line = (
        "GET /build/git/https%3A%2F%2Fuser%3Apw-123456%40host%2Fr.git/main"
        "?build_token=eyJhbGc.x.y&other=1 configured-secret-1 https://u:p@h/x"
    )
    out = scrub(scrubber, line)
    for secret in ("pw-123456", "eyJhbGc", "configured-secret-1", "u:p@"):
        assert secret not in out
    assert "other=1" in out and "%2Fr.git/main" in out
    # An encoded '@' in a path is not a credential.
    path = "https%3A%2F%2Fhost%2Fa%40b"
    assert scrub(scrubber, path) == path


def test_collect_secrets_from_config_and_objects() -> None:
    from binderbuild.app import BinderBuild

    app = BinderBuild()
    config = Config()
    config.BinderBuild.api_tokens = {"apitok-123456": "ci-robot"}
    config.BinderBuild.hub_api_token = "hubtok-123456"
    config.BinderBuild.extra_log_secrets = ["extra-123456"]
    config.RepoProvider.git_credentials = "username=bb\\npassword=gitpw-123456"
    config.GitHubRepoProvider.spec_config = [
        {"pattern": "x", "config": {"access_token": "ghtok-123456"}}
    ]
    config.BinderBuild.build_token_expires_seconds = 600
    app.update_config(config)
    found = collect_secrets(app)
    for secret in ("apitok-123456", "hubtok-123456", "extra-123456", "gitpw-123456", "ghtok-123456"):
        assert secret in found
    assert "ci-robot" not in found  # API token names are for the logs


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("binderbuild.test", logging.INFO, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_formatter_scrubs_fields_and_keeps_ids() -> None:
    formatter = JsonFormatter(Scrubber(['sec"ret-123']))
    record = _record('token sec"ret-123 used', build_id="b1", request_id="r1", image="i")
    data = json.loads(formatter.format(record))
    assert data["message"] == "token *** used"
    assert (data["build_id"], data["request_id"], data["image"]) == ("b1", "r1", "i")
    assert data["level"] == "INFO" and data["logger"] == "binderbuild.test"


def test_text_formatter_shows_ids_and_scrubs_tracebacks() -> None:
    formatter = TextFormatter(Scrubber(["secret-in-traceback"]))
    try:
        raise RuntimeError("boom secret-in-traceback")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "binderbuild.x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    record.request_id, record.build_id = "r9", "b9"
    line = formatter.format(record)
    assert "req=r9 build=b9" in line
    assert "secret-in-traceback" not in line and "RuntimeError" in line


def test_file_sink_survives_rotation(tmp_path: Path) -> None:
    path = tmp_path / "events" / "launches.jsonl"
    sink = FileSink(str(path))
    sink.emit({"n": 1})
    os.rename(path, tmp_path / "rotated.jsonl")
    sink.emit({"n": 2})
    sink.close()
    assert [json.loads(x)["n"] for x in (tmp_path / "rotated.jsonl").read_text().splitlines()] == [1]
    assert [json.loads(x)["n"] for x in path.read_text().splitlines()] == [2]


def test_event_log_sinks_from_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        make_sink("no.such.module.Sink")
    with pytest.raises(ConfigError):
        make_sink("file:")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = EventLog(handlers_maker=lambda _log: [handler])
    log.emit({"schema": "x"})
    assert json.loads(stream.getvalue()) == {"schema": "x"}
    log.close()


def test_upstream_attribution() -> None:
    classifier = UpstreamClassifier(
        ["http://127.0.0.1:5000"], ["http://127.0.0.1:8000/"], {"api.github.com": "gh"}
    )
    assert classifier.classify("http://127.0.0.1:5000/v2/x") == (Upstream.REGISTRY, "")
    assert classifier.classify("http://127.0.0.1:8000/hub/api/users") == (Upstream.HUB, "")
    assert classifier.classify("https://api.github.com/repos/a/b") == (Upstream.PROVIDER, "gh")
    assert classifier.classify("http://127.0.0.1:9999/") == (Upstream.OTHER, "")


def test_request_id_reaches_log_records() -> None:
    from binderbuild.logging_setup import ContextFilter

    token = set_request_id("rid-1")
    try:
        record = _record("hello")
        assert ContextFilter().filter(record)
        assert record.request_id == "rid-1"
    finally:
        set_request_id(None)
        del token


def _launch_request():
    from binderbuild.models import LaunchRequest, ResolvedRef

    ref = ResolvedRef("git", "s/main", "main", "0" * 40, "s/" + "0" * 40, "u", "u", "u")
    return LaunchRequest("img:1", ref, "v2/git/s/main", "v2/git/s/0", "http://h/")


def test_instrumented_launcher_records_each_outcome_once_and_promptly() -> None:
    """The wrapper's generator semantics: success is recorded when the result
    arrives (the pipeline stops iterating right after it), a consumer that
    goes away is 'abandoned', an error is 'failure', and the in-progress
    gauge always returns to 0."""
    import asyncio

    from binderbuild.errors import HubError
    from binderbuild.events import Phase, event
    from binderbuild.launcher import Launcher
    from binderbuild.metrics import InstrumentedLauncher, Metrics
    from binderbuild.models import LaunchResult

    closed: list[bool] = []

    class Steps(Launcher):
        def __init__(self, outcome: str) -> None:
            self.outcome = outcome

        async def launch(self, request):  # type: ignore[override]
            try:
                yield event(Phase.LAUNCHING, "starting")
                if self.outcome == "error":
                    raise HubError("hub down")
                await asyncio.sleep(0 if self.outcome == "ok" else 10)
                yield LaunchResult("http://h/user/x/", "tok", "x")
            finally:
                closed.append(True)

    metrics = Metrics()

    def count(status: str) -> float:
        return metrics.registry.get_sample_value(
            "binderbuild_launch_finished_total", {"status": status, "provider": "git"}
        ) or 0.0

    async def consume(outcome: str, stop_after_first: bool = False) -> None:
        launcher = InstrumentedLauncher(Steps(outcome), metrics)
        gen = launcher.launch(_launch_request())
        try:
            async for item in gen:
                if isinstance(item, LaunchResult):
                    # Recorded before the consumer even stops iterating.
                    assert count("success") == 1
                    assert metrics.launch_running._value.get() == 0
                    return
                assert metrics.launch_running._value.get() == 1
                if stop_after_first:
                    break
        except HubError:
            pass
        finally:
            await gen.aclose()

    asyncio.run(consume("ok"))
    asyncio.run(consume("error"))
    asyncio.run(consume("slow", stop_after_first=True))
    assert (count("success"), count("failure"), count("abandoned")) == (1, 1, 1)
    assert metrics.launch_running._value.get() == 0
    assert metrics.registry.get_sample_value(
        "binderbuild_launch_duration_seconds_count", {"status": "success"}
    ) == 1
    # The inner launcher was closed every time (its cleanup ran).
    assert closed == [True, True, True]
