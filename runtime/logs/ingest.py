"""Lines → stored statistics: backfill from files (`ingest_files`), live following
(`follow_logs`), the `queued` gauge (`set_queue_gauge`) and log-driven sending limits.

Exactly-once: a chunk's counters and the log position after it are committed together when the
store offers `record_log` (one transaction); otherwise counters first, then the position, so a
crash in between re-counts that one chunk (at-least-once, never a skipped line). The tracking
state (queue id → sender, smtpd session → account) is saved beside the position in
`state_dir` so a restart attributes deliveries of messages queued before it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from runtime.logs.follower import Chunk, FollowedFile, Watcher, file_identity, make_watcher
from runtime.logs.parser import DayResolver, LineParser
from runtime.logs.stats import AccountPolicy, Charge, Tally, queue_gauge
from runtime.state.base import StateStore
from runtime.state.limits import charge_sent_mail, limit_rule
from schemas.agent import AgentConfig

if TYPE_CHECKING:
    import asyncio  # imported by `follow_logs`: a backfill (`ingest`) starts without it

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.25  # seconds between checks without inotify (latency bound)
SAFETY_INTERVAL = 5.0  # with inotify, re-check anyway this often
QUEUE_INTERVAL = 60.0  # seconds between `postqueue -j` runs
# Bytes per chunk when backfilling: big enough to amortise the per-chunk work, small enough that
# its buffers are reused from the heap instead of being page-faulted in fresh each time.
READ_BYTES = 1 << 20

Rows = Mapping[tuple[str, str], Mapping[str, int]]


@runtime_checkable
class LogRecorder(Protocol):
    """Optional store method: add counters and set a log position in one transaction."""

    def record_log(self, name: str, identity: str, offset: int, rows: Rows) -> None: ...


def account_policy(config: AgentConfig) -> AccountPolicy:
    return AccountPolicy(frozenset(config.local_domains), frozenset(config.accounts))


def store_rows(store: StateStore, rows: Rows) -> None:
    for (day, account), counters in rows.items():
        store.add_stats(day, account, counters)


def apply_charges(
    config: AgentConfig, store: StateStore, charges: Iterable[Charge], now: float
) -> list[str]:
    """Charge sendmail-submitted mail to the senders' limits and lock over-limit accounts, by
    the rules the policy service applies (`runtime.state.limits.charge_sent_mail`: a message
    counts in the windows that still contain its submission time, the log line's). Returns
    the accounts newly locked."""
    locked: list[str] = []
    for charge in charges:
        account = config.accounts.get(charge.account)
        limits = account.limits if account is not None else config.default_limits
        reason = charge_sent_mail(
            store,
            charge.account,
            limit_rule(limits),
            charge.recipients,
            charge.time,
            now,
            charge.qid,
        )
        if reason is not None:
            log.warning("locked %s: %s", charge.account, reason)
            locked.append(charge.account)
    return locked


# -- backfill -----------------------------------------------------------------------------


@dataclass
class IngestResult:
    lines: int = 0
    unknown: int = 0
    account_days: int = 0  # (day, account) rows stored


def _log_texts(path: Path, read_bytes: int = READ_BYTES) -> Iterator[tuple[str, int]]:
    """(text of whole lines, bytes they took) of a log file, plain or `.gz`, read through one
    reused buffer: a fresh 1 MiB object per read would be page-faulted in each time, which
    costs more than decoding it. A last line without newline comes last with one added."""
    opener = gzip.open if path.suffix == ".gz" else open
    buf = bytearray(read_bytes)
    view = memoryview(buf)
    have = 0
    with opener(path, "rb") as fh:
        while True:
            if have == len(buf):  # one line longer than the buffer: grow it
                view.release()
                buf.extend(bytes(len(buf)))
                view = memoryview(buf)
            n = fh.readinto(view[have:])
            if not n:
                break
            have += n
            end = buf.rfind(b"\n", 0, have) + 1
            if end:
                yield str(view[:end], "utf-8", "replace"), end
                buf[: have - end] = view[end:have]
                have -= end
        if have:
            yield str(view[:have], "utf-8", "replace") + "\n", have
    view.release()


def ingest_files(
    paths: Iterable[Path],
    store: StateStore,
    policy: AccountPolicy,
    year: int | None = None,
    read_bytes: int = READ_BYTES,
) -> IngestResult:
    """Count existing logs (plain or `.gz`, oldest first) into `store`. Sending limits are not
    charged: this is history. `year` is the year of the first classic-format line;
    `read_bytes` the size of a read (tests make it small to cross many chunk boundaries)."""
    result = IngestResult()
    parser = LineParser(DayResolver(year=year))
    tally = Tally(policy)
    last: tuple[Path, int] | None = None
    for path in paths:
        size = 0
        for text, n in _log_texts(path, read_bytes):
            size += n
            result.lines += tally.add_text(text, parser)
            tally.take_charges()  # history: not charged
        last = (path, size)
    rows = tally.take_rows()
    if isinstance(store, LogRecorder) and last is not None:
        # One transaction for all rows (thousands of account-days), recorded with what was
        # ingested: the last file's identity and how far it was read.
        path, size = last
        store.record_log(f"ingest:{path.resolve()}", file_identity(path), size, rows)
    else:
        store_rows(store, rows)
    result.account_days = len(rows)
    result.unknown = parser.unknown
    return result


# -- live following -----------------------------------------------------------------------


class LogSource:
    """One followed file with its parser, tally and persisted position."""

    def __init__(self, path: str, store: StateStore, policy: AccountPolicy, state_dir: Path):
        self.path = path
        self.name = f"log:{path}"
        self.store = store
        self.parser = LineParser(DayResolver())
        self.tally = Tally(policy)
        saved = store.get_position(self.name)
        self.file = FollowedFile(path, saved)
        digest = hashlib.sha1(path.encode()).hexdigest()[:12]
        self._snapshot_path = state_dir / f"follow-{digest}.json"
        self._restore(saved)

    def _restore(self, saved: tuple[str, int] | None) -> None:
        """Take the tracking state saved for exactly the stored position. The file holds the
        state at the last committed position and at the one being committed, written before
        the commit: whichever position a crash leaves in the store has its state here."""
        self._previous: dict[str, Any] | None = None
        if saved is None:
            return
        try:
            data = json.loads(self._snapshot_path.read_text())
            states = data.get("states", [data])  # an older file held one state
            for state in states:
                if [state["identity"], state["offset"]] == list(saved):
                    tally = state["tally"]
                    self.tally.restore(tally if isinstance(tally, str) else json.dumps(tally))
                    self._previous = state
                    return
        except (OSError, ValueError, KeyError, TypeError):
            pass
        # No usable snapshot: deliveries of mail queued before the position go unattributed.

    def _save_snapshot(self, chunk: Chunk) -> dict[str, Any]:
        state = {"identity": chunk.identity, "offset": chunk.offset, "tally": self.tally.snapshot()}
        states = [state] if self._previous is None else [state, self._previous]
        tmp = self._snapshot_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"states": states}))
            os.replace(tmp, self._snapshot_path)
        except OSError as exc:
            log.warning("cannot save follower state %s: %s", self._snapshot_path, exc)
        return state

    def step(self, limit: int) -> tuple[int, list[Charge]]:
        """Read, count and commit one chunk; returns (lines, charges) — (0, []) when idle."""
        chunk = self.file.read_chunk(limit)
        if chunk is None:
            return 0, []
        text = chunk.data.decode("utf-8", "replace")
        lines = self.tally.add_text(text if text.endswith("\n") else text + "\n", self.parser)
        rows = self.tally.take_rows()
        state = self._save_snapshot(chunk)
        if isinstance(self.store, LogRecorder):
            self.store.record_log(self.name, chunk.identity, chunk.offset, rows)
        else:
            store_rows(self.store, rows)
            self.store.set_position(self.name, chunk.identity, chunk.offset)
        self._previous = state
        return lines, self.tally.take_charges()

    def close(self) -> None:
        self.file.close()


def read_queue(postfix_config_dir: str) -> str | None:
    """`postqueue -j` output (one JSON object per queued message), None if it failed."""
    try:
        proc = subprocess.run(
            ["postqueue", "-c", postfix_config_dir, "-j"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("postqueue -j failed: %s", exc)
        return None
    if proc.returncode != 0:
        log.warning("postqueue -j failed: %s", proc.stderr.strip())
        return None
    return proc.stdout


def set_queue_gauge(store: StateStore, policy: AccountPolicy, queue_json: str, now: float) -> None:
    """Set today's `queued` gauge of each local sender (0 for senders whose mail left)."""
    counts, bad = queue_gauge(queue_json, policy)
    if bad:
        log.warning("postqueue -j: %d lines were not JSON", bad)
    day = time.strftime("%Y-%m-%d", time.localtime(now))
    for row in store.stats(day=day):
        if row.counters.get("queued") and row.account not in counts:
            store.set_stat(day, row.account, "queued", 0)
    for account, n in counts.items():
        store.set_stat(day, account, "queued", n)


def refresh_queue_gauge(config: AgentConfig, store: StateStore, now: float) -> bool:
    """Run `postqueue -j` and set the `queued` gauges; False (logged) if it failed."""
    queue_json = read_queue(config.postfix_config_dir)
    if queue_json is None:
        return False
    set_queue_gauge(store, account_policy(config), queue_json, now)
    return True


@dataclass
class Follower:
    """All followed logs of one agent; `run_once` drains them, `follow_logs` loops."""

    config: AgentConfig
    store: StateStore
    sources: list[LogSource]
    enforce_limits: bool = True

    @classmethod
    def open(cls, config: AgentConfig, store: StateStore) -> Follower:
        state_dir = Path(config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        policy = account_policy(config)
        return cls(config, store, [LogSource(p, store, policy, state_dir) for p in config.logs])

    def run_once(self, limit: int = 1 << 20, max_chunks: int | None = None) -> int:
        """Process what is there now (at most `max_chunks` chunks per file); lines read."""
        total = 0
        for source in self.sources:
            n = 0
            while max_chunks is None or n < max_chunks:
                lines, charges = source.step(limit)
                if charges and self.enforce_limits:
                    apply_charges(self.config, self.store, charges, time.time())
                if not lines:
                    break
                total += lines
                n += 1
        return total

    def close(self) -> None:
        for source in self.sources:
            source.close()


async def follow_logs(
    config: AgentConfig,
    store: StateStore,
    stop: asyncio.Event,
    *,
    use_inotify: bool = True,
    queue_interval: float = QUEUE_INTERVAL,
) -> None:
    """Follow `config.logs` into `store` until `stop` is set. Runs in the event loop beside the
    policy server: reading is bounded per step (1 MiB per file) so a backlog never blocks the
    loop for long, and waiting is a descriptor readiness or a timer, never a blocked thread.
    An error propagates with every descriptor it opened closed: the daemon restarts the
    follower (runtime.daemon.supervise), so each attempt must leave nothing behind."""
    import asyncio

    follower = Follower.open(config, store)
    try:
        watcher: Watcher = make_watcher(list(config.logs), use_inotify=use_inotify)
    except BaseException:
        follower.close()
        raise
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    fd = watcher.fileno()

    def on_change() -> None:
        watcher.drain()
        woken.set()

    if fd is not None:
        loop.add_reader(fd, on_change)
    interval = SAFETY_INTERVAL if fd is not None else POLL_INTERVAL
    policy = account_policy(config)
    next_queue = 0.0
    try:
        while not stop.is_set():
            woken.clear()
            while follower.run_once(max_chunks=1):
                await asyncio.sleep(0)  # a backlog: let the policy server answer in between
                if stop.is_set():
                    return
            if queue_interval > 0 and time.monotonic() >= next_queue:
                next_queue = time.monotonic() + queue_interval
                queue_json = await asyncio.to_thread(read_queue, config.postfix_config_dir)
                if queue_json is not None:
                    set_queue_gauge(store, policy, queue_json, time.time())
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(woken.wait())]
            try:
                await asyncio.wait(waits, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in waits:
                    task.cancel()
    finally:
        if fd is not None:
            loop.remove_reader(fd)
        watcher.close()
        follower.close()
