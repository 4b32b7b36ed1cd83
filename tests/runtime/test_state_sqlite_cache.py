"""SQLite limit cache: two stores on one file (as two agents, or agent + `mailcfg-agent unlock`)
interleave decisions and always see each other's counts and locks; a failed batch leaves no
trace in the cache."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
from tests.runtime.state_contract import T0


def _req(account: str, limit: int, *, lock: bool = False, now: float = T0) -> LimitRequest:
    return LimitRequest(account, 1, (Window("day", limit),), now, lock=lock, reason="r")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    a = SqliteStore(tmp_path / "state.db")
    b = SqliteStore(tmp_path / "state.db")
    yield a, b
    a.close()
    b.close()


def test_interleaved_stores_share_one_count(pair: tuple[SqliteStore, SqliteStore]) -> None:
    a, b = pair
    allowed = 0
    for i in range(30):
        store = a if i % 3 else b  # uneven, so both caches are warm and then stale
        allowed += sum(r.allowed for r in store.consume_limits([_req("x@y.org", 20)] * 2))
    assert allowed == 20
    assert a.consume("x@y.org", 0, [], T0).counts["day"] == 20


def test_lock_and_unlock_by_another_connection_are_seen(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    assert a.consume_limits([_req("x@y.org", 5)])[0].allowed  # warms a's cache
    assert b.lock("x@y.org", "manual", T0)
    assert a.consume_limits([_req("x@y.org", 5)])[0].locked
    assert b.unlock("x@y.org")
    res = a.consume_limits([_req("x@y.org", 5)])[0]
    assert res.allowed and res.counts["day"] == 2


def test_own_lock_unlock_and_forced_consume_keep_cache_right(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    assert s.consume_limits([_req("x@y.org", 3)])[0].allowed
    s.consume("x@y.org", 2, [Window("day", 3)], T0, force=True)  # the log saw 2 more
    assert not s.consume_limits([_req("x@y.org", 3)])[0].allowed
    assert s.lock("z@y.org", "manual", T0)
    assert s.consume_limits([_req("z@y.org", 3)])[0].locked
    assert s.unlock("z@y.org")
    assert s.consume_limits([_req("z@y.org", 3)])[0].allowed
    s.close()


def test_newly_locked_in_one_store_refuses_in_the_other(
    pair: tuple[SqliteStore, SqliteStore],
) -> None:
    a, b = pair
    res = a.consume_limits([_req("x@y.org", 1, lock=True)] * 2)
    assert [r.newly_locked for r in res] == [False, True]
    assert b.consume_limits([_req("x@y.org", 1, lock=True)])[0].locked
    assert b.locks() == {"x@y.org": "r: 2 recipients this day, over the per-day limit of 1"}


def test_failed_batch_rolls_back_and_forgets(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path)
    assert s.consume_limits([_req("x@y.org", 2)])[0].allowed
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock: the next batch times out
    s._db.execute("PRAGMA busy_timeout=50")
    with pytest.raises(sqlite3.OperationalError):
        s.consume_limits([_req("x@y.org", 2)])
    other.execute("ROLLBACK")
    other.close()
    res = s.consume_limits([_req("x@y.org", 2)] * 2)
    assert [r.allowed for r in res] == [True, False]
    assert res[0].counts["day"] == 2
    s.close()


def test_new_day_resets_from_cache(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "state.db")
    assert [r.allowed for r in s.consume_limits([_req("x@y.org", 1)] * 2)] == [True, False]
    assert s.consume_limits([_req("x@y.org", 1, now=T0 + 86400)])[0].allowed
    s.close()
