"""bench/policy/run.py keeps working: a tiny workload through the SQLite agent and the floor
server, both with exact counts (every sender's accepts, and the agent's stored counts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_policy_bench_runs_the_agent_and_the_floor_with_exact_counts() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "policy" / "run.py"), "--conns", "2",
         "--servers", "agent-sqlite,floor", "--senders", "50", "--per-sender", "2",
         "--hot-sends", "20", "--limit", "10", "--repeat", "1"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| ") and "| 2 |" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| mailcfg agent, SQLite",
        "| floor (floor.py)",
    ]
    assert all(row.endswith("| yes |") for row in rows)
