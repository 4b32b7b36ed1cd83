"""SQLite usage journal: a decision appends the account's new usage to `usage_log`, a fold
writes it into `usage` later. Whatever is folded or not, every reader (this store after a
restart, another process, the log follower's forced charges) sees exact counts; a crash
between the journal and the fold, or inside the fold, loses and doubles nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
from tests.helpers import kill_9_after
from tests.runtime.state_contract import T0

DAY = (Window("day", 10**6),)


def _req(account: str, limit: int = 10**6) -> LimitRequest:
    return LimitRequest(account, 1, (Window("day", limit),), T0, lock=False)


def _day(store: SqliteStore, account: str) -> int:
    return store.consume(account, 0, DAY, T0).counts["day"]


def _rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as db:
        n: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return n


def _unfolded(path: Path) -> SqliteStore:
    """A store that folds only when asked (no timer, no size threshold)."""
    return SqliteStore(path, checkpoint_interval=0, fold_rows=10**9)


def test_decisions_are_journaled_then_folded(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = _unfolded(path)
    for _ in range(3):
        s.consume_limits([_req("a@x.org"), _req("b@x.org"), _req("a@x.org")])
    assert _rows(path, "usage_log") == 6  # one row per account and batch
    assert _rows(path, "usage") == 0
    s.fold_usage()
    assert _rows(path, "usage_log") == 0
    assert _rows(path, "usage") == 2
    assert (_day(s, "a@x.org"), _day(s, "b@x.org")) == (6, 3)
    s.close()


def test_another_process_reads_and_charges_the_journal_exactly(tmp_path: Path) -> None:
    """The log follower of `mailcfg-agent ingest` (another process) charges with
    `consume(force=True)` while the agent's decisions are still in the journal: both add up."""
    path = tmp_path / "state.db"
    agent = _unfolded(path)
    ingest = _unfolded(path)
    assert all(r.allowed for r in agent.consume_limits([_req("a@x.org", 5)] * 3))
    res = ingest.consume("a@x.org", 2, [Window("day", 5)], T0, force=True)
    assert res.counts["day"] == 5 and res.allowed
    # The agent's cache is stale now: it reads again (folding first) and refuses.
    assert not agent.consume_limits([_req("a@x.org", 5)])[0].allowed
    agent.close()
    ingest.close()
    assert _day(SqliteStore(path), "a@x.org") == 5


def test_own_lock_and_unlock_keep_the_journaled_count(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = _unfolded(path)
    s.consume_limits([_req("a@x.org")] * 4)
    assert s.lock("a@x.org", "manual", T0)
    assert s.consume_limits([_req("a@x.org")])[0].locked
    assert s.unlock("a@x.org")
    assert s.consume_limits([_req("a@x.org")])[0].counts["day"] == 5
    s.close()


def test_close_and_the_size_threshold_fold(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(path, checkpoint_interval=0, fold_rows=4)
    for i in range(3):
        s.consume_limits([_req(f"u{i}@x.org")])
    assert _rows(path, "usage_log") == 3
    s.consume_limits([_req("u3@x.org")])
    assert _rows(path, "usage_log") == 0
    s.consume_limits([_req("u0@x.org")])
    s.close()
    assert _rows(path, "usage_log") == 0
    assert _day(SqliteStore(path), "u0@x.org") == 2


def test_a_failed_fold_leaves_the_journal_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    s = _unfolded(path)
    s.consume_limits([_req("a@x.org")] * 3)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON usage "
            "BEGIN SELECT RAISE(ABORT, 'injected crash'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="injected crash"):
        s.fold_usage()
    assert _rows(path, "usage_log") == 1
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER fail")
    # The store forgot its cache: it folds the journal by SQL and reads the count again.
    assert s.consume_limits([_req("a@x.org")])[0].counts["day"] == 4
    s.close()


_CHILD = """
import sys
from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
# No timer and no threshold: every count stays in the journal until the kill.
store = SqliteStore(sys.argv[1], checkpoint_interval=0, fold_rows=10**9)
w = [Window("month", 10**9)]
n = 0
while True:
    store.consume_limits([LimitRequest(f"k{i}@x.org", 1, w, 1_700_000_000.0, lock=False)
                          for i in range(n % 3 + 1)])
    n += 1
    print(n, flush=True)  # after the commit: when the agent would answer Postfix
"""


def test_kill_9_between_journal_and_fold_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    last = kill_9_after(_CHILD, str(path), 1500)
    assert _rows(path, "usage_log") >= 1500
    assert _rows(path, "usage") == 0

    def expected(n: int) -> list[int]:
        # Batch j (0-based) charges k0..k{j % 3}.
        return [sum(1 for j in range(n) if j % 3 >= i) for i in range(3)]

    store = SqliteStore(path)
    counts = [
        store.consume(f"k{i}@x.org", 0, [], 1_700_000_000.0).counts["month"] for i in range(3)
    ]
    # Every batch the child reported is counted once; at most the one in flight also is.
    assert counts in (expected(last), expected(last + 1))
    store.close()
    assert _rows(path, "usage_log") == 0  # folded: what the child left, and at close
    reopened = SqliteStore(path)
    assert [
        reopened.consume(f"k{i}@x.org", 0, [], 1_700_000_000.0).counts["month"] for i in range(3)
    ] == counts
    reopened.close()


def test_a_failed_fold_after_a_batch_does_not_fail_the_committed_batch(tmp_path: Path) -> None:
    """The policy service decides a failed batch again request by request: a batch whose
    commit went through must not report the size-threshold fold's failure, or it would be
    counted twice."""
    path = tmp_path / "state.db"
    s = SqliteStore(path, checkpoint_interval=0, fold_rows=2)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON usage "
            "BEGIN SELECT RAISE(ABORT, 'injected crash'); END"
        )
    res = s.consume_limits([_req("a@x.org"), _req("b@x.org")])
    assert [r.counts["day"] for r in res] == [1, 1]
    assert _rows(path, "usage_log") == 2
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER fail")
    assert s.consume_limits([_req("a@x.org")])[0].counts["day"] == 2
    s.close()
    assert _rows(path, "usage_log") == 0
