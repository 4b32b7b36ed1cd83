"""SQLite backend: the StateStore contract (shared cases) plus durability across `kill -9`."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
from tests.helpers import kill_9_after
from tests.runtime.state_contract import StoreContract


class TestSqliteContract(StoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[SqliteStore]:
        s = SqliteStore(tmp_path / "state.db")
        yield s
        s.close()


def _hammer(path: str, n: int) -> None:
    store = SqliteStore(path)
    for _ in range(n):
        store.consume_limits(
            [LimitRequest("a@x.org", 1, [Window("day", 150)], 1_700_000_000.0, lock=False)]
        )
    store.close()


def test_concurrent_processes_never_exceed_limit(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    SqliteStore(path).close()
    # spawn, not fork: a fork while another test's store thread holds SQLite's allocator
    # mutex leaves the child deadlocked on it.
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, 100)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = SqliteStore(path)
    res = store.consume("a@x.org", 0, [Window("day", 150)], 1_700_000_000.0)
    assert res.counts["day"] == 150


_CHILD = """
import sys
from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
store = SqliteStore(sys.argv[1])
n = 0
while True:
    r = store.consume_limits(
        [LimitRequest("k@x.org", 1, [Window("month", 10**9)], 1_700_000_000.0, lock=False)]
    )
    n += 1
    # Report only after the commit returned: that is when the agent would answer Postfix.
    print(n, flush=True)
"""


def test_kill_9_loses_no_answered_count(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    last = kill_9_after(_CHILD, path, 2000)
    store = SqliteStore(path)
    counts = store.consume("k@x.org", 0, [], 1_700_000_000.0).counts
    # Every count the child reported is durable; at most the one in flight may also be there.
    assert last <= counts["month"] <= last + 1
