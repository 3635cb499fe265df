"""GET /api/builds/{id}/log: every event's message on its own line (issue 12:
the last log line ran into 'Build failed: ...')."""

from __future__ import annotations

from binderbuild.events import Phase, event
from binderbuild.handlers.api import log_text


def test_a_message_without_newline_does_not_run_into_the_next() -> None:
    events = [
        event(Phase.BUILDING, "Step 1/2\n"),
        event(Phase.BUILDING, "partial output without newline"),
        event(Phase.FAILED, "Build failed: repo2docker exited with code 1\n"),
    ]
    assert log_text(events).splitlines() == [
        "Step 1/2",
        "partial output without newline",
        "Build failed: repo2docker exited with code 1",
    ]


def test_messages_keep_their_own_newlines_and_empty_ones_add_nothing() -> None:
    events = [event(Phase.BUILDING, "a\nb\n"), event(Phase.WAITING, ""), event(Phase.BUILT, "done\n")]
    assert log_text(events) == "a\nb\ndone\n"
