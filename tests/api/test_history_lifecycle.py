"""The history store's lifecycle parts (issue 16): last use per image, a
database written before the usage table existed, and age retention that
keeps each image's latest successful build."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from binderbuild.history import DB_NAME, BuildHistory
from tests.api.test_history_store import EVENTS, record


def test_last_used_round_trip_keeps_the_newest_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = BuildHistory(tmp_path)
        assert await store.last_used() == {}
        await store.record_usage({"img-a:1": 100.0, "img-b:1": 200.0})
        # An older time (a batch flushed late) never moves last_used back.
        await store.record_usage({"img-a:1": 50.0, "img-b:1": 300.0})
        assert await store.last_used() == {"img-a:1": 100.0, "img-b:1": 300.0}
        await store.close()
        reopened = BuildHistory(tmp_path)
        assert await reopened.last_used() == {"img-a:1": 100.0, "img-b:1": 300.0}
        await reopened.close()

    asyncio.run(scenario())


def test_a_database_from_before_usage_tracking_opens_and_gains_the_table(tmp_path: Path) -> None:
    # The schema as shipped before issue 16: the builds table only.
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.executescript(
        """
        CREATE TABLE builds (
            id TEXT PRIMARY KEY, provider TEXT NOT NULL, repo TEXT NOT NULL,
            build_name TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
            finished REAL NOT NULL, record TEXT NOT NULL, events BLOB NOT NULL
        );
        PRAGMA user_version=1;
        """
    )
    old = record("old", finished=time.time())
    db.execute(
        "INSERT INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (old.id, old.provider, old.repo, old.build_name, old.state, old.created,
         old.finished, old.to_json(), b"x\x9c\x03\x00\x00\x00\x00\x01"),
    )
    db.commit()
    db.close()

    async def scenario() -> None:
        store = BuildHistory(tmp_path)
        assert await store.get("old") == old
        await store.record_usage({"img:1": 1.0})
        assert await store.last_used() == {"img:1": 1.0}
        await store.close()

    asyncio.run(scenario())
    # Still readable by the version that wrote it (no schema bump for an added table).
    assert sqlite3.connect(tmp_path / DB_NAME).execute("PRAGMA user_version").fetchone()[0] == 1


def test_age_retention_can_keep_the_latest_success_per_image(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = BuildHistory(tmp_path, max_age_days=1, keep_latest_success=True)
        now = time.time()
        day = 86400
        # Image x: two old successes and an old failure; only the newest success stays.
        await store.record(record("x-old", build_name="build-x", finished=now - 9 * day), EVENTS)
        await store.record(record("x-new", build_name="build-x", finished=now - 5 * day), EVENTS)
        await store.record(
            record("x-fail", build_name="build-x", state="failed", finished=now - 4 * day),
            EVENTS,
        )
        # Image y: an old failure only: dropped. A recent build of y: kept.
        await store.record(
            record("y-fail", build_name="build-y", state="failed", finished=now - 3 * day),
            EVENTS,
        )
        await store.record(record("y-recent", build_name="build-y", finished=now - 60), EVENTS)
        assert await store.get("x-old") is None
        assert await store.get("x-fail") is None
        assert await store.get("y-fail") is None
        kept = await store.get("x-new")
        assert kept is not None and await store.events("x-new") == EVENTS
        assert (await store.latest_success("build-x")).id == "x-new"
        assert await store.get("y-recent") is not None
        assert await store.count() == 2
        await store.close()

    asyncio.run(scenario())
