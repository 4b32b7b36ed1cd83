"""bench/logparse/run.py keeps working: a tiny log through every contender (the agent, its
start alone, the bare one-regex loop, pflogsumm), with the agent's counters checked exact."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_logparse_bench_runs_every_contender_and_counts_exactly() -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "logparse" / "run.py"), "--lines", "3000",
         "--accounts", "50", "--domains", "5", "--days", "2", "--rounds", "1", "--floor",
         "--no-latency"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    for row in ("| agent |", "| agent start only |", "| bare loop, one regex per line |",
                "| pflogsumm |", "| 8x pflogsumm (the target) |"):  # fmt: skip
        assert row in out
    assert "every counter exact (agent vs the generator's" in out
    assert out.rstrip().endswith(": yes")


def test_floor_loop_counts_the_lines_with_a_program_tag(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_text(
        "2024-05-01T00:00:00+02:00 mx postfix/qmgr[1]: ABC: removed\n"
        "2024-05-01T00:00:01+02:00 mx dovecot: imap-login: Login: user=<a@b>\n"
        "not a log line\n"
    )
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "logparse" / "floor.py"), str(log)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "2"
