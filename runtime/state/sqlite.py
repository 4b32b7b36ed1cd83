"""SQLite state backend: the embedded default (`sqlite:///var/lib/mailcfg/agent/state.db`).

One connection, WAL journal, `synchronous=NORMAL`. Every public call is one transaction
(`BEGIN IMMEDIATE` for writes, so the read-check-write of a limit is atomic against other
connections and processes sharing the file) and is committed before the call returns.

Durability: in WAL mode a COMMIT appends the transaction to the `-wal` file with write(2)
before returning; `synchronous=NORMAL` only skips the fsync. A `kill -9` of the agent cannot
lose data already handed to the kernel, so every decision the agent answered is counted after a
restart. Only a power loss or kernel crash can drop the last transactions (FULL fsyncs each
commit: measured at 4 decisions per commit, +40 us of CPU and +90 us of wall time per
decision, more than the whole decision costs otherwise).

Tables: `usage` (one row per account: current hour/day/month bucket and count), `usage_log`
(the usage journal, below), `locks`, `once_keys`, `stats` (day, account, counter),
`positions` (log follower offsets).

Speed of `consume_limits` (the policy service's hot path): the store keeps a write-through
cache of the usage and lock rows it has read or written. Inside `BEGIN IMMEDIATE` (the write
lock is held) it compares `PRAGMA data_version` with the value seen at its own last commit: if
no other connection committed in between, the cache is exactly the database and the batch needs
no SELECT at all, only its writes; otherwise the cache is dropped and rows are read again. The
check-and-count therefore stays atomic against other processes and hosts sharing the file.

The usage journal: a batch does not rewrite each account's `usage` row (one B-tree page per
account, each appended to the WAL at commit) but appends the accounts' new rows to
`usage_log`, whose rows all go to its last page: one or two pages per commit. An account's
usage is its newest `usage_log` row, else its `usage` row. The fold writes the newest rows
into `usage` and empties the log, in one transaction: every `checkpoint_interval` (on this
connection, from the checkpoint thread), when `fold_rows` rows are logged, and at close. Any
transaction that reads usage from the file (a cache not known to be exact: at start-up, after
another connection's commit, after a failure) folds the log first, by SQL, so the rows it
reads are current; so do other processes (`mailcfg-agent ingest`'s forced charges, another
agent on the file). A fold is idempotent (it writes rows, it adds nothing): a crash before,
during or after it loses and doubles nothing. The price: a fold rewrites the rows of every
account charged since the last one (about 3 us each), and holds the store's mutex and the
write lock meanwhile: 30 ms for 9,000 accounts, so under a load that charges that many
accounts a second the event loop waits that long once a second (`FOLD_ROWS` bounds it).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from runtime.state.base import STAT_COUNTERS, StatRow
from runtime.state.limits import (
    BatchConsume,
    BucketClock,
    LimitRequest,
    LimitResult,
    check_batch,
    describe_lock,
    first_exceeded,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    account TEXT PRIMARY KEY,
    hour_key INTEGER NOT NULL, hour_n INTEGER NOT NULL,
    day_key INTEGER NOT NULL, day_n INTEGER NOT NULL,
    month_key INTEGER NOT NULL, month_n INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_log (
    account TEXT NOT NULL,
    hour_key INTEGER NOT NULL, hour_n INTEGER NOT NULL,
    day_key INTEGER NOT NULL, day_n INTEGER NOT NULL,
    month_key INTEGER NOT NULL, month_n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    account TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS once_keys (key TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stats (
    day TEXT NOT NULL, account TEXT NOT NULL, name TEXT NOT NULL, value INTEGER NOT NULL,
    PRIMARY KEY (day, account, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions (
    name TEXT PRIMARY KEY, identity TEXT NOT NULL, offset INTEGER NOT NULL
) WITHOUT ROWID;
"""

_UPSERT_USAGE = (
    "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(account) DO UPDATE SET "
    "hour_key = excluded.hour_key, hour_n = excluded.hour_n, day_key = excluded.day_key, "
    "day_n = excluded.day_n, month_key = excluded.month_key, month_n = excluded.month_n"
)
# The newest state of an account is its last `usage_log` row, else its `usage` row. Appending
# a row writes the log's last page; the fold rewrites each account's `usage` row once.
_LOG_USAGE = "INSERT INTO usage_log VALUES (?, ?, ?, ?, ?, ?, ?)"
_ANY_LOGGED = "SELECT EXISTS (SELECT 1 FROM usage_log)"
# The last row of each account (SQLite takes a bare column of a max() query from that row).
_FOLD_LOG = (
    "INSERT OR REPLACE INTO usage SELECT account, hour_key, hour_n, day_key, day_n, month_key, "
    "month_n FROM (SELECT max(rowid), * FROM usage_log GROUP BY account)"
)
_CLEAR_LOG = "DELETE FROM usage_log"
# Usage and lock of one account in one statement; a missing usage row reads as NULLs.
_SELECT_ACCOUNT = (
    "SELECT u.hour_key, u.hour_n, u.day_key, u.day_n, u.month_key, u.month_n, "
    "l.account IS NOT NULL FROM (SELECT ? AS a) LEFT JOIN usage u ON u.account = a "
    "LEFT JOIN locks l ON l.account = a"
)
_SELECT_LOCK = "SELECT 1 FROM locks WHERE account = ?"
_INSERT_LOCK = "INSERT OR IGNORE INTO locks VALUES (?, ?, ?)"
# `usage_log` rows after which a batch folds the log at once; the timer (`checkpoint_interval`)
# folds first below 20,000 decisions a second. Bounds the log's size and a fold's length (at
# most this many accounts, about 3 us each: 60 ms).
FOLD_ROWS = 20_000
# WAL frames since the WAL last started over (pages: 1 KiB in new files, so 32 MiB) from
# which the checkpoint thread holds commits off for a moment so that it can start over
# (`_finish_checkpoint`); below it the WAL is left to start over when the load allows. High
# enough that the pause comes every few seconds at most, under a heavy load only: at 4,096
# frames (once a second in bench/policy) p99 at 32 connections measured 4.0 and 4.7 ms
# against 2.8 and 3.6 without it. (A checkpoint that reports every frame copied is no sign:
# a commit that began before its end still keeps the WAL from starting over.)
WAL_RESET_FRAMES = 32768


class SqliteStore(BatchConsume):
    """`StateStore` + `LimitStore` on one SQLite file. Thread-safe (one lock per store)."""

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 5.0,
        checkpoint_interval: float = 1.0,
        fold_rows: int = FOLD_ROWS,
    ) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: transactions are explicit, so nothing stays open between calls.
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
        )
        self._mutex = threading.Lock()
        # account → (locked, hour_key, hour_n, day_key, day_n, month_key, month_n) as stored
        # (keys -1 when there is no usage row); valid while `_version` is the data_version
        # seen at this connection's last commit (see the module docstring). This connection's
        # own commits don't change data_version: any other method writing `usage` or `locks`
        # must update the account's cached row (as lock and unlock do). Tuples of ints, not
        # lists: the garbage collector stops tracking them, so a cache of many accounts does
        # not lengthen its full collections.
        self._cache: dict[str, tuple[int, ...]] = {}
        self._version: int | None = None
        # account → its `usage` row as of its last `usage_log` row not folded yet (this
        # connection's, valid with the cache): what a fold writes.
        self._pending: dict[str, tuple[str, int, int, int, int, int, int]] = {}
        self.fold_rows = fold_rows
        self._logged = 0  # rows this connection appended to `usage_log` since its last fold
        self._clock = BucketClock()
        # A decision rewrites one ~60-byte usage row, and a commit appends every page it
        # changed to the WAL: 1 KiB pages (new files only) write a quarter of 4 KiB's bytes.
        self._db.execute("PRAGMA page_size=1024")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        # A checkpoint fsyncs the database; done by a commit it stalls that decision for
        # milliseconds. A helper thread with its own connection checkpoints instead (PASSIVE:
        # never blocks writers); before each checkpoint it folds `usage_log` (on this
        # connection, so the fold does not invalidate the cache).
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        if self.path != ":memory:" and checkpoint_interval > 0:
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(checkpoint_interval,), daemon=True
            )
            self._checkpointer.start()

    # -- limits ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the mutex: `BEGIN IMMEDIATE`, then COMMIT, or ROLLBACK
        when anything in the block fails (the caller's change is all or nothing)."""
        with self._mutex:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def consume_limits(self, requests: Sequence[LimitRequest]) -> list[LimitResult]:
        check_batch(requests)
        return self.run_batch(requests, check_lock=True, force=False)

    def run_batch(
        self, requests: Sequence[LimitRequest], *, check_lock: bool, force: bool
    ) -> list[LimitResult]:
        """The batch's check-and-count steps, in order, in ONE transaction: each adds its
        amount when every window has room (or always, with `force`); with `check_lock` a
        locked account is refused, and a refused request with `lock` locks the account.
        The new usage of each account is appended to `usage_log`, not rewritten in `usage`
        (see the module docstring)."""
        results: list[LimitResult] = []
        cache = self._cache
        bucket = self._clock.keys
        new_locks: list[tuple[str, str, float]] = []
        with self._usage_transaction() as writes:
            for r in requests:
                account = r.account
                row = cache.get(account)
                if row is None:
                    row = cache[account] = self._read_account(account)
                locked = row[0]
                if locked and check_lock:
                    results.append(_LOCKED)
                    continue
                hk, dk, mk = bucket(r.now)
                hn = row[2] if row[1] == hk else 0
                dn = row[4] if row[3] == dk else 0
                mn = row[6] if row[5] == mk else 0
                amount = r.amount
                exceeded = first_exceeded((hn, dn, mn), amount, r.windows)
                if exceeded is None or force:
                    hn += amount
                    dn += amount
                    mn += amount
                    cache[account] = (locked, hk, hn, dk, dn, mk, mn)
                    writes[account] = (account, hk, hn, dk, dn, mk, mn)
                    # With force the amount was added anyway; `exceeded` then says a window
                    # is now over its limit. LimitResult's fields in order, made without its
                    # Python-level __new__ (one per decision).
                    counts = {"hour": hn, "day": dn, "month": mn}
                    results.append(
                        tuple.__new__(
                            LimitResult, (exceeded is None, False, exceeded, False, counts, "")
                        )
                    )
                    continue
                newly = r.lock and not locked
                reason = ""
                if newly:
                    cache[account] = (1, *row[1:])
                    record = r.lock_record(exceeded, (hn, dn, mn))
                    new_locks.append((account, record, r.now))
                    reason = describe_lock(record)
                counts = {"hour": hn, "day": dn, "month": mn}
                results.append(LimitResult(False, False, exceeded, newly, counts, reason))
            if new_locks:
                self._db.executemany(_INSERT_LOCK, new_locks)
        if self._logged >= self.fold_rows:
            # The batch is committed: a fold that fails (the file busy, say) must not fail it,
            # or the caller would decide its requests again. The log stays; a later fold takes it.
            with contextlib.suppress(sqlite3.Error):
                self.fold_usage()
        return results

    @contextlib.contextmanager
    def _usage_transaction(self) -> Iterator[dict[str, tuple[str, int, int, int, int, int, int]]]:
        """A write transaction under the mutex in which the cache is exact (`_check_cache`).
        The block fills the dict it gets with accounts' new usage rows; they are appended to
        `usage_log` and, once committed, become `_pending` (still under the mutex, so a fold
        never misses them). A failure rolls back and forgets the cache."""
        writes: dict[str, tuple[str, int, int, int, int, int, int]] = {}
        with self._mutex:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                version = self._check_cache(db)
                yield writes
                if writes:
                    db.executemany(_LOG_USAGE, writes.values())
                db.execute("COMMIT")
            except BaseException:
                self._forget()
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            self._version = version
            self._pending.update(writes)
            self._logged += len(writes)

    def _check_cache(self, db: sqlite3.Connection) -> int:
        """Inside a write transaction: make the cache and `_pending` agree with the file, and
        return the data_version they are valid for. When another connection committed since
        this one's last commit (or nothing is known yet), the cache is dropped and whatever
        `usage_log` holds (another process's, or a crashed run's) is folded by SQL first, so
        the rows read afterwards are current."""
        version: int = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._forget()
            if db.execute(_ANY_LOGGED).fetchone()[0]:
                db.execute(_FOLD_LOG)
                db.execute(_CLEAR_LOG)
        elif len(self._cache) > _CACHE_MAX:
            self._fold_pending(db)
            self._cache.clear()
        return version

    def _fold_pending(self, db: sqlite3.Connection) -> None:
        """The cache is exact (no other writer since this connection's last commit), so every
        row of `usage_log` is this connection's and `_pending` has each account's newest:
        write those to `usage` (sorted, so each page is visited once) and empty the log. (If
        the transaction then fails, `_forget` leaves the log to the next SQL fold.)"""
        if self._pending:
            db.executemany(_UPSERT_USAGE, sorted(self._pending.values()))
            db.execute(_CLEAR_LOG)
            self._pending.clear()
            self._logged = 0

    def fold_usage(self) -> None:
        """Fold `usage_log` into `usage` in one transaction (a no-op when it is empty): on a
        timer, after `fold_rows` logged rows, and at close."""
        with self._usage_transaction():
            self._fold_pending(self._db)

    def _forget(self) -> None:
        """Nothing cached is known to be the file's (a failed transaction, another
        connection's commit): the next transaction reads (and folds) again from the file."""
        self._cache.clear()
        self._pending.clear()
        self._logged = 0
        self._version = None

    def _read_account(self, account: str) -> tuple[int, ...]:
        hk, hn, dk, dn, mk, mn, locked = self._db.execute(_SELECT_ACCOUNT, (account,)).fetchone()
        if hk is None:
            return (locked, -1, 0, -1, 0, -1, 0)
        return (locked, hk, hn, dk, dn, mk, mn)

    # -- locks and once-ledger ------------------------------------------------------------

    def _write(self, sql: str, params: Sequence[object]) -> int:
        with self._mutex:
            return self._db.execute(sql, params).rowcount

    def lock(self, account: str, reason: str, now: float) -> bool:
        with self._mutex:
            added = self._db.execute(_INSERT_LOCK, (account, reason, now)).rowcount == 1
            self._cache_lock(account, 1)
            return added

    def unlock(self, account: str) -> bool:
        with self._mutex:
            sql = "DELETE FROM locks WHERE account = ?"
            lifted = self._db.execute(sql, (account,)).rowcount == 1
            self._cache_lock(account, 0)
            return lifted

    def _cache_lock(self, account: str, locked: int) -> None:
        """This connection's own lock change, in the cache. Not a pop: the account's newest
        usage may be only in the cache and `usage_log`, and a re-read would take `usage`'s."""
        row = self._cache.get(account)
        if row is not None:
            self._cache[account] = (locked, *row[1:])

    def is_locked(self, account: str) -> bool:
        with self._mutex:
            return self._db.execute(_SELECT_LOCK, (account,)).fetchone() is not None

    def locks(self) -> Mapping[str, str]:
        with self._mutex:
            rows = self._db.execute("SELECT account, reason FROM locks ORDER BY account")
            return {account: describe_lock(record) for account, record in rows.fetchall()}

    def once(self, key: str, ttl: float, now: float) -> bool:
        # One statement: insert, or take over an expired key; rowcount says which happened.
        sql = (
            "INSERT INTO once_keys VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
            "expires = excluded.expires WHERE once_keys.expires <= ?"
        )
        return self._write(sql, (key, now + ttl, now)) == 1

    # -- statistics -----------------------------------------------------------------------

    def add_stats(self, day: str, account: str, counters: Mapping[str, int]) -> None:
        rows = [(day, account, name, n) for name, n in counters.items() if n]
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(_ADD_STATS, rows)

    def set_stat(self, day: str, account: str, name: str, value: int) -> None:
        sql = (
            "INSERT INTO stats VALUES (?, ?, ?, ?) ON CONFLICT(day, account, name) "
            "DO UPDATE SET value = excluded.value"
        )
        self._write(sql, (day, account, name, value))

    def stats(self, day: str | None = None, account: str | None = None) -> list[StatRow]:
        sql = "SELECT day, account, name, value FROM stats WHERE 1=1"
        params: list[str] = []
        if day is not None:
            sql += " AND day = ?"
            params.append(day)
        if account is not None:
            sql += " AND account = ?"
            params.append(account)
        with self._mutex:
            rows = self._db.execute(sql + " ORDER BY day, account", params).fetchall()
        return group_stats(rows)

    # -- log positions --------------------------------------------------------------------

    def get_position(self, name: str) -> tuple[str, int] | None:
        with self._mutex:
            row = self._db.execute(
                "SELECT identity, offset FROM positions WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (row[0], row[1])

    def set_position(self, name: str, identity: str, offset: int) -> None:
        self._write(_SET_POSITION, (name, identity, offset))

    def _checkpoint_loop(self, interval: float) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
        try:
            while not self._closing.wait(interval):
                # Busy or transient errors: the next round retries.
                with contextlib.suppress(sqlite3.Error):
                    if self._pending:
                        self.fold_usage()
                    frames = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                    if frames >= WAL_RESET_FRAMES:
                        self._finish_checkpoint(db)
        finally:
            db.close()

    def _finish_checkpoint(self, db: sqlite3.Connection) -> None:
        """Copy what was committed during the checkpoint, with this store's commits held off
        meanwhile, so that the WAL is wholly in the database when the next one begins: only
        then does SQLite write the WAL again from its start. Under steady load a commit
        always lands during a checkpoint (milliseconds), and the WAL grew by every commit's
        pages without end, about 10 MB/s at 20,000 decisions/s. Commits wait for the copy of
        those few frames and the database's fsync (2 to 25 ms measured here, once per
        interval, only while the WAL is past `WAL_RESET_FRAMES`); another process's commit
        can still keep the WAL growing, until a later round."""
        with self._mutex:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        # What is left in the log (the file busy, say) is folded by the next opener.
        with contextlib.suppress(sqlite3.Error):
            if self._pending:
                self.fold_usage()
        with self._mutex:
            self._db.close()

    def record_log(
        self,
        name: str,
        identity: str,
        offset: int,
        rows: Mapping[tuple[str, str], Mapping[str, int]],
    ) -> None:
        """Add a chunk's counters and set the log position after it in ONE transaction: a
        crash leaves both or neither, so a restart never counts a chunk twice."""
        # A generator, not a list: a backfill's rows (thousands of account-days) are bound
        # one by one instead of being copied into a second structure first.
        params = (
            (day, account, counter, n)
            for (day, account), counters in rows.items()
            for counter, n in counters.items()
            if n
        )
        with self._transaction() as db:
            db.executemany(_ADD_STATS, params)
            db.execute(_SET_POSITION, (name, identity, offset))


_ADD_STATS = (
    "INSERT INTO stats VALUES (?, ?, ?, ?) ON CONFLICT(day, account, name) "
    "DO UPDATE SET value = value + excluded.value"
)
_SET_POSITION = "INSERT OR REPLACE INTO positions VALUES (?, ?, ?)"
_CACHE_MAX = 200_000  # accounts; beyond that the cache starts over (about 40 MB)
_LOCKED = LimitResult(False, True, None, False, MappingProxyType({}))


def group_stats(rows: Sequence[tuple[str, str, str, int]]) -> list[StatRow]:
    """(day, account, name, value) rows sorted by day, account → StatRows with every counter."""
    out: list[StatRow] = []
    current: tuple[str, str] | None = None
    counters: dict[str, int] = {}
    for day, account, name, value in rows:
        if (day, account) != current:
            if current is not None:
                out.append(StatRow(current[0], current[1], counters))
            current = (day, account)
            counters = dict.fromkeys(STAT_COUNTERS, 0)
        counters[name] = int(value)
    if current is not None:
        out.append(StatRow(current[0], current[1], counters))
    return out
