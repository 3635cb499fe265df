"""repo2docker's output as both backends read it: events from log lines, and
the failure message built from an exit code or a status plus the log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from binderbuild.builders.r2d_log import (
    R2dLogReader,
    exit_failure,
    parse_log_line,
    status_failure,
)
from binderbuild.errors import BuildFailed
from binderbuild.events import Phase
from binderbuild.secrets import Scrubber


def line(phase: str, message: str, **extra: Any) -> str:
    return json.dumps({"phase": phase, "message": message, **extra})


def reader_of(*lines: str, scrubber: Scrubber | None = None) -> R2dLogReader:
    log = R2dLogReader(scrubber)
    for text in lines:
        log.read(text)
    return log


# --- parse_log_line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_phase", "phase"),
    [
        ("fetching", Phase.FETCHING),
        ("building", Phase.BUILDING),
        ("BUILDING", Phase.BUILDING),
        ("pushing", Phase.PUSHING),
        ("built", Phase.BUILDING),
        ("running", Phase.BUILDING),
        ("launching", Phase.BUILDING),
        ("failed", Phase.BUILDING),
        ("failure", Phase.BUILDING),
        ("something-new", Phase.UNKNOWN),
        ("", Phase.UNKNOWN),
    ],
)
def test_phases_of_json_lines(raw_phase: str, phase: Phase) -> None:
    ev, is_failure = parse_log_line(line(raw_phase, "Step 1/3\n"))
    assert ev.phase is phase
    assert ev.message == "Step 1/3\n"
    assert is_failure is (raw_phase.lower() in ("failed", "failure"))


def test_unstructured_lines_are_unknown_events_with_a_line_break() -> None:
    for raw in ("plain text from a subprocess", "[1, 2]", "42", '"a string"', "{broken"):
        ev, is_failure = parse_log_line(raw)
        assert (ev.phase, ev.message, is_failure) == (Phase.UNKNOWN, raw + "\n", False)


def test_push_progress_is_kept_only_for_pushing() -> None:
    progress = {"layer-1": "Pushing", "layer-2": "Pushed"}
    ev, _ = parse_log_line(line("pushing", "", progress=progress))
    assert ev.phase is Phase.PUSHING and dict(ev.fields) == {"progress": progress}
    ev, _ = parse_log_line(line("building", "", progress=progress))
    assert dict(ev.fields) == {}
    ev, _ = parse_log_line(line("pushing", "", progress="50%"))
    assert dict(ev.fields) == {}


def test_missing_message_is_empty() -> None:
    ev, _ = parse_log_line(json.dumps({"phase": "building"}))
    assert ev.message == ""


# --- R2dLogReader -------------------------------------------------------------------


def test_reader_yields_the_events_of_its_lines() -> None:
    log = R2dLogReader()
    events = [
        log.read(line("fetching", "Cloning into '/tmp/repo'...\n")),
        log.read(line("building", "Step 1/3 : FROM base\n")),
        log.read("not json"),
    ]
    assert [(e.phase, e.message) for e in events] == [
        (Phase.FETCHING, "Cloning into '/tmp/repo'...\n"),
        (Phase.BUILDING, "Step 1/3 : FROM base\n"),
        (Phase.UNKNOWN, "not json\n"),
    ]
    assert log.tail == ("Cloning into '/tmp/repo'...", "Step 1/3 : FROM base", "not json")
    assert log.failures == ()
    assert log.last_failure == ""
    assert log.reason == "not json"


def test_reader_scrubs_before_parsing_and_remembering() -> None:
    log = R2dLogReader(Scrubber(["s3cret-token"]))
    ev = log.read(line("failed", "push to https://user:pw@reg/x failed: s3cret-token\n"))
    assert ev.message == "push to https://***@reg/x failed: ***\n"
    assert log.last_failure == "push to https://***@reg/x failed: ***"


def test_reader_keeps_the_last_five_messages_and_skips_blank_ones() -> None:
    log = reader_of(*(line("building", f"step {i}\n") for i in range(8)), line("building", "  \n"))
    assert log.tail == ("step 3", "step 4", "step 5", "step 6", "step 7")
    assert log.reason == "step 7"


def test_the_last_failure_line_is_the_reason() -> None:
    log = reader_of(
        line("failed", "first failure\n"),
        line("failure", "Error during build: exit 1\n"),
        line("building", "Removing intermediate container\n"),
        line("failed", "   \n"),  # blank: neither a failure nor a message
    )
    assert log.failures == ("first failure", "Error during build: exit 1")
    assert log.last_failure == "Error during build: exit 1"
    assert log.reason == "Error during build: exit 1"
    assert log.tail[-1] == "Removing intermediate container"


def test_an_empty_log_gives_no_reason() -> None:
    log = R2dLogReader()
    assert (log.tail, log.failures, log.last_failure, log.reason) == ((), (), "", "")


# --- the failure classifier -------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "lines", "message"),
    [
        (1, (), "repo2docker exited with code 1"),
        # Killed from outside (issue 12): said in words, not as a number.
        (137, (), "The builder was killed (SIGKILL, exit code 137) before the build finished."),
        (-9, (), "The builder was killed (SIGKILL) before the build finished."),
        (
            1,
            (line("building", "Step 2/3\n"), line("failed", "Error: the command failed\n")),
            "repo2docker exited with code 1: Error: the command failed",
        ),
        (
            # No failure line (a traceback): the last message is the reason.
            1,
            (line("building", "Step 2/3\n"), "ValueError: bad spec"),
            "repo2docker exited with code 1: ValueError: bad spec",
        ),
        (
            137,
            (line("failed", "Killed\n"), line("building", "cleanup\n")),
            "The builder was killed (SIGKILL, exit code 137) before the build finished: Killed",
        ),
    ],
)
def test_exit_codes_become_build_failures(code: int, lines: tuple[str, ...], message: str) -> None:
    failure = exit_failure(code, reader_of(*lines))
    assert isinstance(failure, BuildFailed)
    assert failure.message == message
    assert str(failure) == message


@pytest.mark.parametrize(
    ("status", "lines", "message"),
    [
        ("The build exited with code 1.", (), "The build exited with code 1."),
        (
            "The build ran out of memory (limit 2Gi).",
            (line("failed", "Killed\n"),),
            "The build ran out of memory (limit 2Gi): Killed",
        ),
        (
            "The build exited with code 1.",
            (line("failed", "The command '/bin/sh -c false' returned a non-zero code: 1\n"),),
            "The build exited with code 1: The command '/bin/sh -c false' returned a non-zero code: 1",
        ),
        (
            # The status already says it: not repeated.
            "The build exited with code 1: Step 3 failed",
            (line("failed", "Step 3 failed\n"),),
            "The build exited with code 1: Step 3 failed",
        ),
        (
            # Only failure lines count, not the last message.
            "The build pod was evicted: low on disk.",
            (line("building", "Step 2/3\n"),),
            "The build pod was evicted: low on disk.",
        ),
    ],
)
def test_statuses_become_build_failures(status: str, lines: tuple[str, ...], message: str) -> None:
    failure = status_failure(status, reader_of(*lines))
    assert isinstance(failure, BuildFailed)
    assert failure.message == message


# --- failure reasons people understand (issue 12) ----------------------------------

STEP_137 = "The command '/bin/sh -c python3 -c \"x = bytearray(1 << 30)\"' returned a non-zero code: 137"


@pytest.mark.parametrize(
    ("code", "lines", "kwargs", "message"),
    [
        (
            # A build step killed under the build containers' memory limit.
            1,
            (line("building", "Step 5/9\n"), line("failed", STEP_137 + "\n")),
            {"memory_limit": 512 << 20},
            f"The build ran out of memory (limit 512 MiB): {STEP_137}",
        ),
        (
            # The same step without a limit: killed, not "out of memory".
            1,
            (line("failed", STEP_137 + "\n"),),
            {},
            f"A build step was killed (SIGKILL, exit code 137): {STEP_137}",
        ),
        (
            # The sandbox container, killed by the kernel for its memory limit.
            137,
            (line("fetching", "Cloning\n"),),
            {"memory_limit": 2 << 30, "oom_killed": True},
            "The build ran out of memory (limit 2 GiB).",
        ),
        (
            # OOM of a child (git): the container exits 1 but was OOM killed.
            1,
            (line("failed", "fatal: early EOF\n"),),
            {"memory_limit": 1536 << 20, "oom_killed": True},
            "The build ran out of memory (limit 1.5 GiB): fatal: early EOF",
        ),
        (
            1,
            (line("failed", "failed to copy files: write /var/lib/docker/tmp/x: no space left on device\n"),),
            {},
            "The build failed: the build host is out of disk space: failed to copy files: "
            "write /var/lib/docker/tmp/x: no space left on device",
        ),
        (
            1,
            (
                line("pushing", "Pushing 127.0.0.1:5000/b:1\n"),
                line("failed", "Pushing 127.0.0.1:5000/b:1 failed: unknown: filesystem: no space left on device\n"),
            ),
            {},
            "The registry ran out of disk space while the image was pushed: Pushing "
            "127.0.0.1:5000/b:1 failed: unknown: filesystem: no space left on device",
        ),
        (
            -15,
            (line("building", "Step 2/3\n"),),
            {},
            "The builder was killed (SIGTERM) before the build finished.",
        ),
    ],
)
def test_failures_are_said_in_words(
    code: int, lines: tuple[str, ...], kwargs: dict[str, Any], message: str
) -> None:
    failure = exit_failure(code, reader_of(*lines), **kwargs)
    assert isinstance(failure, BuildFailed)
    assert failure.message == message


def test_memory_sizes_read_as_people_write_them() -> None:
    from binderbuild.builders.r2d_log import human_bytes

    assert human_bytes(512 << 20) == "512 MiB"
    assert human_bytes(2 << 30) == "2 GiB"
    assert human_bytes(1536 << 20) == "1.5 GiB"
    assert human_bytes(1000) == "1000 bytes"
