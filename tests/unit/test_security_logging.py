"""Scrubbing log lines must stay linear in the line's length.

Tornado's access log prints the request path, which a stranger chooses (up to
Tornado's 64 KB header limit), and every log line passes through the
scrubber on the event loop. A pattern that backtracks quadratically turns one
request into seconds of a frozen service.
"""

from __future__ import annotations

import logging
import time

import pytest

from binderbuild.logging_setup import TextFormatter, scrub
from binderbuild.secrets import Scrubber

LONG = 64_000


@pytest.mark.parametrize("unit", ["a.", "a-", "ab+", "x.y-", "a"])
def test_long_hostile_request_paths_are_scrubbed_quickly(unit):
    path = "/build/git/" + unit * (LONG // len(unit))
    record = logging.LogRecord("tornado.access", logging.WARNING, "p", 1, "404 GET %s", (path,), None)
    formatter = TextFormatter(Scrubber(["s3cr3t-value"]))
    started = time.perf_counter()
    formatter.format(record)
    elapsed = time.perf_counter() - started
    # Linear work on 64 KB is milliseconds; the quadratic pattern took ~8 s.
    assert elapsed < 0.5, f"scrubbing a {LONG}-byte path took {elapsed:.2f}s"


def test_credentials_in_encoded_clone_urls_are_still_scrubbed():
    scrubber = Scrubber()
    line = "GET /build/git/https%3A%2F%2Fuser%3Apa55word%40example.org%2Fr.git/HEAD (1.2.3.4)"
    assert "pa55word" not in scrub(scrubber, line)
    assert "user" not in scrub(scrubber, line)
    after_dash = "x-https%3A%2F%2Ftok3n%40example.org%2Fr"
    assert "tok3n" not in scrub(scrubber, after_dash)
