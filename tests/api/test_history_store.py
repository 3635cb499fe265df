"""The SQLite history store on its own: round trip, reopening, retention."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from binderbuild.errors import ConfigError
from binderbuild.events import Phase, event
from binderbuild.history import DB_NAME, BuildHistory, BuildRecord


def record(
    build_id: str, repo: str = "owner/repo", finished: float | None = None, **kw
) -> BuildRecord:
    now = time.time()
    base = BuildRecord(
        id=build_id,
        provider="gh",
        spec=f"{repo}/main",
        repo=repo,
        unresolved_ref="main",
        resolved_ref="a" * 40,
        resolved_spec=f"{repo}/{'a' * 40}",
        repo_url=f"https://github.com/{repo}",
        ref_url=f"https://github.com/{repo}/tree/{'a' * 40}",
        image=f"binder-{build_id}:{'a' * 40}",
        build_name=f"build-{build_id}",
        state="succeeded",
        phase="built",
        failure=None,
        failure_type=None,
        forced=False,
        found_existing=False,
        created=(finished or now) - 10,
        started=(finished or now) - 9,
        finished=finished or now,
        event_count=3,
    )
    return replace(base, **kw)


T0 = time.time()

EVENTS = [
    event(Phase.WAITING, "Build starting.\n"),
    event(Phase.BUILDING, "Step 1/2 : FROM base \u2713\n"),
    event(Phase.BUILT, "Built image.\n", imageName="binder-x:aaa"),
]


def test_round_trip_and_reopen(tmp_path: Path) -> None:
    async def write() -> None:
        store = BuildHistory(tmp_path)
        await store.record(record("b1", finished=T0), EVENTS)
        await store.record(
            record(
                "b2",
                finished=T0 + 1,
                state="failed",
                phase="failed",
                failure="boom",
                failure_type="BuildFailed",
            ),
            EVENTS[:2],
        )
        await store.record(record("other", repo="someone/else", finished=T0), EVENTS)
        await store.close()

    async def read() -> None:
        store = BuildHistory(tmp_path)  # a new process would do the same
        assert await store.get("b1") == record("b1", finished=T0)
        events = await store.events("b1")
        assert events == EVENTS and events[2].fields["imageName"] == "binder-x:aaa"
        failed = await store.get("b2")
        assert failed is not None and failed.failure == "boom" and failed.state == "failed"
        assert [r.id for r in await store.list_for_repo("gh", "owner/repo")] == ["b2", "b1"]
        assert [r.id for r in await store.list_for_repo("gh", "someone/else")] == ["other"]
        assert (await store.latest_success("build-b1")).id == "b1"
        assert await store.latest_success("build-b2") is None
        assert await store.get("nope") is None and await store.events("nope") is None
        await store.close()

    asyncio.run(write())
    asyncio.run(read())


def test_retention_by_count_and_age(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = BuildHistory(tmp_path, max_builds=3, max_age_days=1)
        now = time.time()
        await store.record(record("ancient", finished=now - 3 * 86400), EVENTS)
        assert await store.get("ancient") is None  # older than max_age_days
        for i in range(5):
            await store.record(record(f"b{i}", finished=now - 100 + i), EVENTS)
        assert await store.count() == 3
        kept = {r.id for r in await store.list_for_repo("gh", "owner/repo")}
        assert kept == {"b2", "b3", "b4"}  # the newest three
        await store.close()

    asyncio.run(scenario())


def test_unusable_locations_are_config_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="Cannot open the build history"):
        BuildHistory(blocker / "sub")

    newer = tmp_path / "newer"
    newer.mkdir()
    db = sqlite3.connect(newer / DB_NAME)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(ConfigError, match="newer binderbuild"):
        BuildHistory(newer)
