"""TTLCache with a fake clock: entries expire at their TTL, never by sleeping."""

from __future__ import annotations

from binderbuild.cache import FOREVER, TTLCache
from tests.unit.fakes import FakeClock


def test_entries_expire_after_their_ttl() -> None:
    clock = FakeClock(start=1000.0)
    cache: TTLCache[str, int] = TTLCache(clock=clock.now)
    cache.set("short", 1, 10.0)
    cache.set("long", 2, 60.0)
    cache.set("forever", 3, FOREVER)
    clock.advance(9.99)
    assert (cache.get("short"), cache.get("long"), cache.get("forever")) == (1, 2, 3)
    clock.advance(0.02)
    assert cache.get("short") is None
    assert len(cache) == 2  # the expired entry was dropped, not just hidden
    assert cache.get("long") == 2
    clock.advance(50.0)
    assert cache.get("long") is None
    clock.advance(10 * 365 * 86400.0)
    assert cache.get("forever") == 3
    assert (cache.hits, cache.misses) == (5, 2)


def test_setting_again_restarts_the_ttl() -> None:
    clock = FakeClock()
    cache: TTLCache[str, str] = TTLCache(clock=clock.now)
    cache.set("k", "old", 10.0)
    clock.advance(8.0)
    cache.set("k", "new", 10.0)
    clock.advance(8.0)
    assert cache.get("k") == "new"
    clock.advance(2.5)
    assert cache.get("k") is None


def test_zero_ttl_is_not_stored_and_size_is_bounded_lru() -> None:
    clock = FakeClock()
    cache: TTLCache[str, int] = TTLCache(max_size=2, clock=clock.now)
    cache.set("none", 0, 0)
    assert cache.get("none") is None and len(cache) == 0
    cache.set("a", 1, 60)
    cache.set("b", 2, 60)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.set("c", 3, 60)
    assert cache.get("b") is None  # the least recently used went
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    cache.discard("a")
    assert cache.get("a") is None and len(cache) == 1
