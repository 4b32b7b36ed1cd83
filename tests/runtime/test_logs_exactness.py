"""Exactly-once statistics across stops, crashes and rotations, on the real SQLite (and Redis)
backends: counters and log position committed together (`record_log`), a log rotated while the
agent was stopped finished from the saved offset, `kill -9` at any moment never double counts
or loses a line, and sendmail charges dated by the log line."""

from __future__ import annotations

import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.logs.ingest import Follower, apply_charges, ingest_files
from runtime.logs.stats import AccountPolicy, Charge
from runtime.state.redis import RedisStore
from runtime.state.sqlite import SqliteStore
from tests.runtime.redis_server import redis_server
from tests.runtime.test_follower import DAY, agent_config, append, counters, login, message

REPO = Path(__file__).resolve().parents[2]
REDIS_PORT = 23379


def traffic(first: int, n: int) -> str:
    """`n` submissions by alice (qids first…), each with a bob IMAP login."""
    return "".join(
        message(f"Q{i:05X}", "alice@example.com", "bob@example.com") + login("bob@example.com")
        for i in range(first, first + n)
    )


def expected(n: int) -> dict[tuple[str, str], dict[str, int]]:
    return {
        (DAY, "alice@example.com"): {"sent": n},
        (DAY, "bob@example.com"): {"received": n, "imap_logins": n},
    }


# -- record_log ---------------------------------------------------------------------------


def test_record_log_commits_counters_and_position_together(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.record_log("log:x", "1:2:h", 100, {(DAY, "a@example.com"): {"sent": 2, "bounced": 0}})
    assert store.get_position("log:x") == ("1:2:h", 100)
    assert counters(store) == {(DAY, "a@example.com"): {"sent": 2}}
    # The position write fails inside the transaction (a trigger raises): the counters added
    # before it in the same call are rolled back with it.
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON positions "
            "BEGIN SELECT RAISE(ABORT, 'injected crash'); END"
        )
    with pytest.raises(sqlite3.IntegrityError, match="injected crash"):
        store.record_log("log:x", "1:2:h", 200, {(DAY, "a@example.com"): {"sent": 5}})
    assert store.get_position("log:x") == ("1:2:h", 100)
    assert counters(store) == {(DAY, "a@example.com"): {"sent": 2}}
    store.close()


def test_follower_uses_one_transaction_per_chunk(tmp_path: Path) -> None:
    """A chunk whose commit fails leaves neither its counters nor its position: the restarted
    follower counts it exactly once."""
    log = tmp_path / "mail.log"
    log.write_text(traffic(0, 20))
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    follower.run_once(limit=2048, max_chunks=3)
    follower.close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON positions "
            "BEGIN SELECT RAISE(ABORT, 'injected crash'); END"
        )
    follower = Follower.open(config, store)
    with pytest.raises(sqlite3.IntegrityError):
        follower.run_once(limit=2048)
    follower.close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("DROP TRIGGER fail")
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    assert counters(store) == expected(20)
    store.close()


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(REDIS_PORT, tmp_path_factory.mktemp("redis")) as url:
        yield url


def test_record_log_on_redis(redis_url: str, tmp_path: Path) -> None:
    store = RedisStore(redis_url, host="mx1")
    store.r.flushdb()
    rows = {(DAY, "a@example.com"): {"sent": 2, "received": 0}, (DAY, "b@example.com"): {}}
    store.record_log("log:x", "1:2:h", 100, rows)
    store.record_log("log:x", "1:2:h", 150, {(DAY, "a@example.com"): {"sent": 1}})
    assert store.get_position("log:x") == ("1:2:h", 150)
    got = {(r.day, r.account): {k: v for k, v in r.counters.items() if v} for r in store.stats()}
    assert got == {(DAY, "a@example.com"): {"sent": 3}}
    # The follower on Redis: exact counts after a stop in the middle.
    log = tmp_path / "mail.log"
    log.write_text(traffic(0, 10))
    config = agent_config(tmp_path, [log])
    store.r.flushdb()
    for _ in range(2):
        follower = Follower.open(config, store)
        follower.run_once(limit=1500, max_chunks=4)
        follower.close()
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    got = {(r.day, r.account): {k: v for k, v in r.counters.items() if v} for r in store.stats()}
    assert got == expected(10)
    store.close()


# -- rotation while stopped ---------------------------------------------------------------


@pytest.mark.parametrize("rotated", ["mail.log.1", "mail.log-20260101"])
def test_rotation_while_stopped_finishes_the_old_file(tmp_path: Path, rotated: str) -> None:
    log = tmp_path / "mail.log"
    log.write_text(traffic(0, 3))
    # An older rotated file (another inode) that must not be read again.
    (tmp_path / "mail.log.2").write_text(traffic(900, 5))
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    # Stopped: the old file grows, is renamed away, a new file starts; both grow.
    append(log, traffic(3, 2))
    os.rename(log, tmp_path / rotated)
    log.write_text(traffic(5, 2))
    append(tmp_path / rotated, traffic(7, 1))
    append(log, traffic(8, 1))
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    assert counters(store) == expected(9)
    store.close()


def test_stop_while_finishing_a_rotated_file_resumes_in_it(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(traffic(0, 2))
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    append(log, traffic(2, 12))
    os.rename(log, tmp_path / "mail.log.1")
    log.write_text(traffic(14, 3))
    # Several stops while the rotated file is being finished, then while the new one is read.
    for _ in range(5):
        follower = Follower.open(config, store)
        follower.run_once(limit=1024, max_chunks=2)
        follower.close()
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    assert counters(store) == expected(17)
    store.close()


def test_rotated_file_gone_while_stopped_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = tmp_path / "mail.log"
    log.write_text(traffic(0, 2))
    config = agent_config(tmp_path, [log])
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    append(log, traffic(2, 1))
    # Rotated and compressed meanwhile: the unread end is gone (a new inode).
    os.rename(log, tmp_path / "mail.log.1.gz")
    log.write_text(traffic(3, 2))
    with caplog.at_level(logging.WARNING, logger="runtime.logs.follower"):
        follower = Follower.open(config, store)
        follower.run_once()
        follower.close()
    assert "not counted" in caplog.text
    assert counters(store) == expected(4)  # 2 before + 2 in the new file; 1 lost, said so
    store.close()


# -- kill -9 ------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    from runtime.state.sqlite import SqliteStore
    from runtime.config import load_agent_config
    from runtime.logs.ingest import Follower
    config = load_agent_config(sys.argv[1])
    store = SqliteStore(config.state.removeprefix("sqlite:///"))
    follower = Follower.open(config, store)
    print("started", flush=True)
    while follower.run_once(limit=int(sys.argv[2]), max_chunks=1):
        pass
    follower.close()
    store.close()
    """
)


def test_kill_9_at_any_moment_counts_every_line_once(tmp_path: Path) -> None:
    """A follower killed with SIGKILL again and again (mid-chunk, mid-commit, mid-snapshot),
    and a log rotated between two of its lives, ends with exactly the counters of the log."""
    log = tmp_path / "mail.log"
    n = 400
    log.write_text(traffic(0, n // 2))
    config = agent_config(tmp_path, [log])
    config_path = tmp_path / "agent.json"
    config_path.write_text(config.model_dump_json())
    rnd = random.Random(7)
    kills = 0

    def run(kill_after: float | None) -> bool:
        """One life of the follower; True if it finished by itself."""
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(config_path), "700"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n", proc.stderr.read() if proc.stderr else ""
        if kill_after is not None:
            time.sleep(kill_after)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            return False
        assert proc.returncode == 0, err.decode()
        return True

    for i in range(12):
        if i == 6:  # rotation between two lives, with unread lines left in the old file
            os.rename(log, tmp_path / "mail.log.1")
            log.write_text(traffic(n // 2, n // 2))
        if not run(rnd.uniform(0.02, 0.25)):
            kills += 1
    while not run(None):
        pass
    assert kills >= 3, "the follower finished too fast to be killed: make the log longer"
    store = SqliteStore(tmp_path / "state.db")
    assert counters(store) == expected(n)
    store.close()
    # The same lines backfilled in one go agree.
    fresh = SqliteStore(tmp_path / "fresh.db")
    ingest_files([tmp_path / "mail.log.1", log], fresh, AccountPolicy(frozenset({"example.com"})))
    assert counters(fresh) == expected(n)
    fresh.close()


# -- sendmail charges by the log line's time ----------------------------------------------


def _local(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return time.mktime((y, mo, d, h, mi, 0, 0, 0, -1))


def test_sendmail_charges_use_the_line_time(tmp_path: Path) -> None:
    config = agent_config(tmp_path, [], per_hour=3)
    now = _local(2026, 5, 15, 12, 30)
    store = SqliteStore(tmp_path / "state.db")
    # Submitted two hours ago (a backlog read late): that hour is over, so 5 recipients do not
    # lock the account for its per-hour limit of 3...
    late = Charge("alice@example.com", 5, "2026-05-15", "L1", _local(2026, 5, 15, 10, 30))
    assert apply_charges(config, store, [late], now) == []
    assert not store.is_locked("alice@example.com")
    # ...but mail submitted in the current hour does.
    recent = Charge("alice@example.com", 5, "2026-05-15", "L2", _local(2026, 5, 15, 12, 10))
    assert apply_charges(config, store, [recent], now) == ["alice@example.com"]
    # Mail of an earlier month is history: not charged at all.
    old = Charge("bob@example.com", 50, "2026-04-30", "L3", _local(2026, 4, 30, 23, 0))
    assert apply_charges(config, store, [old], now) == []
    assert store.consume("bob@example.com", 0, [], now, force=True).counts["month"] == 0
    # A line "from the future" (clock skew) is charged now.
    skewed = Charge("bob@example.com", 5, "2026-05-15", "L4", now + 7200)
    assert apply_charges(config, store, [skewed], now) == ["bob@example.com"]
    store.close()


def test_follower_charges_by_the_pickup_line_time(tmp_path: Path) -> None:
    """Sendmail submissions logged 40 days ago (another month) are read now: not charged."""
    log = tmp_path / "mail.log"
    ts = time.strftime("%b %e %H:%M:%S", time.localtime(time.time() - 40 * 86400))
    log.write_text(
        "".join(
            f"{ts} mx1 postfix/pickup[3313]: P{i}: uid=33 from=<www-data>\n"
            f"{ts} mx1 postfix/qmgr[20687]: P{i}: from=<alice@example.com>, size=321, "
            "nrcpt=2 (queue active)\n"
            for i in range(3)
        )
    )
    config = agent_config(tmp_path, [log], per_hour=3)
    store = SqliteStore(tmp_path / "state.db")
    follower = Follower.open(config, store)
    follower.run_once()
    follower.close()
    assert not store.is_locked("alice@example.com")
    assert store.consume("alice@example.com", 0, [], time.time(), force=True).counts["month"] == 0
    store.close()


# -- backfill -----------------------------------------------------------------------------


def test_ingest_reads_gz_long_lines_and_a_last_line_without_newline(tmp_path: Path) -> None:
    import gzip

    from runtime.logs import ingest

    long_line = f"{login('x@example.net').rstrip()} {'x' * (ingest.READ_BYTES + 100)}\n"
    body = traffic(0, 3) + long_line + traffic(3, 2) + login("bob@example.com").rstrip("\n")
    plain = tmp_path / "mail.log"
    plain.write_text(body)
    packed = tmp_path / "mail.log.1.gz"
    with gzip.open(packed, "wt") as f:
        f.write(body)
    for path in (plain, packed):
        store = SqliteStore(tmp_path / f"{path.name}.db")
        result = ingest_files([path], store, AccountPolicy(frozenset({"example.com"})))
        assert result.lines == body.count("\n") + 1
        want = expected(5)
        want[(DAY, "bob@example.com")]["imap_logins"] += 1
        assert counters(store) == want
        store.close()
