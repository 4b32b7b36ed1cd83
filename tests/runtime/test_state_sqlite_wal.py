"""SQLite store under steady load: the WAL starts over from its beginning round after round
instead of growing with every commit. Under load a commit always lands during a checkpoint,
so the checkpoint thread copies what came meanwhile with commits held off
(`SqliteStore._finish_checkpoint`); without that the WAL grew without end while decisions
kept coming (about 10 MB/s at 20,000 decisions/s)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runtime.state import sqlite
from runtime.state.base import Window
from runtime.state.limits import LimitRequest
from runtime.state.sqlite import SqliteStore
from tests.runtime.state_contract import T0

DAY = (Window("day", 10**9),)


def test_wal_starts_over_under_steady_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A lower threshold than the agent's, so that the WAL's size at the end says clearly
    # whether it started over (the file keeps the largest size it reached).
    monkeypatch.setattr(sqlite, "WAL_RESET_FRAMES", 512)
    path = tmp_path / "state.db"
    store = SqliteStore(path, checkpoint_interval=0.05)
    commits = 0
    wal_at_end = 0
    try:
        deadline = time.monotonic() + 2.0
        # Commits without a pause, as the policy service makes them under load; enough of
        # them that a WAL never started over would be many times the reset threshold.
        while time.monotonic() < deadline or commits < 30_000:
            batch = [
                LimitRequest(f"u{(commits * 5 + i) % 3000}", 1, DAY, T0, lock=False)
                for i in range(5)
            ]
            store.consume_limits(batch)
            commits += 1
        wal_at_end = os.path.getsize(f"{path}-wal")
    finally:
        store.close()
    # Each commit appends at least one 1 KiB page: a WAL never started over would hold
    # them all. Started over each round, it holds what a round or two appended.
    assert wal_at_end < commits * 1024 / 4, (wal_at_end, commits)
