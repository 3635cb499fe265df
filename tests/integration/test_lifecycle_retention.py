"""History retention (issue 16): builds older than max_age_days go, logs past
the byte budget go oldest first (the build's outcome stays), and the builds
API says a pruned log was pruned (410 with a message) for the log and the
event stream, through a real service reading the store."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from binderbuild.history import BuildHistory, encode_events
from tests.api.helpers import call
from tests.api.test_history_store import EVENTS, record
from tests.conftest import service_config

DAY = 86400.0


def test_old_builds_and_logs_past_the_budget_are_pruned_and_the_api_says_so(
    start_service, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    now = time.time()
    one_log = len(encode_events(EVENTS))

    async def seed() -> tuple[int, bool, bool]:
        # Budget: two logs. Four builds, oldest first; one past max_age_days.
        store = BuildHistory(data, max_age_days=30, max_log_bytes=str(2 * one_log))
        for build_id, age in (
            ("ancient0000000000", 40 * DAY),
            ("old0000000000000a", 3 * DAY),
            ("mid0000000000000b", 2 * DAY),
            ("new0000000000000c", 1 * DAY),
        ):
            await store.record(record(build_id, finished=now - age), EVENTS)
        count = await store.count()
        pruned = await store.log_pruned("old0000000000000a")
        kept = await store.log_pruned("mid0000000000000b")
        await store.close()
        return count, pruned, kept

    count, old_pruned, mid_pruned = asyncio.run(seed())
    assert count == 3  # the 40-day-old build is gone
    assert old_pruned is True and mid_pruned is False

    service = start_service(
        service_config(
            None,
            f"c.BinderBuild.data_dir = {str(data)!r}\n"
            f"c.BuildHistory.max_log_bytes = '{2 * one_log}'\n",
        )
    )
    base = f"{service.url}/api/builds"
    assert call(f"{base}/ancient0000000000").status == 404
    status = call(f"{base}/old0000000000000a")
    assert status.status == 200 and status.json()["state"] == "succeeded", status.text
    for what in ("log", "events"):
        gone = call(f"{base}/old0000000000000a/{what}")
        assert gone.status == 410, (what, gone.text)
        assert "was pruned" in gone.json()["message"], gone.text
        assert gone.json()["status_code"] == 410
    log = call(f"{base}/new0000000000000c/log")
    assert log.status == 200 and "Built image." in log.text, log.text
