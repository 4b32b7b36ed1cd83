# ruff: noqa: E501
"""Benchmark: the agent's log parser vs pflogsumm on the same generated 2,000,000-line log,
plus the latency from a line being written to its counter being stored.

    python bench/logparse/run.py [--lines N]

Each contender runs as its own process under /usr/bin/time (peak RSS); the agent side is
`mailcfg-agent ingest` semantics (parse + count + store into a fresh SQLite file). Latency:
the follower (`follow_logs`, inotify and poll) runs in a child process; the bench appends a
login line and polls the store until the counter moves. Everything lives in a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

AGENT_RUN = """
import sys, time, resource
from pathlib import Path
from runtime.logs.ingest import ingest_files
from runtime.logs.stats import AccountPolicy
from runtime.state.sqlite import SqliteStore
store = SqliteStore(sys.argv[2])
t = time.perf_counter()
r = ingest_files([Path(sys.argv[1])], store, AccountPolicy(frozenset({"example.com", "example.org"})), 2024)
dt = time.perf_counter() - t
print(r.lines, dt)
"""


def timed(cmd: list[str], **kw: object) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout) of a command."""
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=True, **kw
    )  # type: ignore[call-overload]
    wall = time.perf_counter() - t
    rss = int(proc.stderr.strip().splitlines()[-1])
    return wall, rss, proc.stdout


def latency(tmp: Path, use_inotify: bool, samples: int = 20) -> list[float]:
    log = tmp / f"live-{use_inotify}.log"
    db = tmp / f"live-{use_inotify}.db"
    log.write_text("")
    config = {
        "host": "b", "hostname": "b.example.com", "listen": "unix:/nonexistent",
        "state": f"sqlite:///{db}", "local_domains": ["example.com"],
        "global_filter_reject_text": "x", "whitelist_reject_text": "x",
        "default_limits": {}, "postmaster": "p@example.com", "logs": [str(log)],
        "state_dir": str(tmp / f"state-{use_inotify}"),
    }  # fmt: skip
    (tmp / "agent.json").write_text(json.dumps(config))
    code = (
        "import asyncio, signal, json\n"
        "from runtime.logs.ingest import follow_logs\n"
        "from runtime.state.sqlite import SqliteStore\n"
        "from schemas.agent import AgentConfig\n"
        f"cfg = AgentConfig.model_validate_json(open({str(tmp / 'agent.json')!r}).read())\n"
        "async def main():\n"
        "    stop = asyncio.Event()\n"
        "    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)\n"
        f"    await follow_logs(cfg, SqliteStore({str(db)!r}), stop, use_inotify={use_inotify}, "
        "queue_interval=0)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    out: list[float] = []
    try:
        while not db.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        conn = sqlite3.connect(db)
        for i in range(samples):
            stamp = time.strftime("%b %e %H:%M:%S")
            with log.open("a") as f:
                t = time.perf_counter()
                f.write(
                    f"{stamp} mx dovecot: imap-login: Login: user=<u@example.com>, method=PLAIN\n"
                )
            while True:
                row = conn.execute(
                    "SELECT COALESCE(SUM(value), 0) FROM stats WHERE name = 'imap_logins'"
                ).fetchone()
                if row[0] >= i + 1:
                    out.append(time.perf_counter() - t)
                    break
                time.sleep(0.001)
            time.sleep(0.05)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mailcfg-bench-logparse-"))
    try:
        log = tmp / "mail.log"
        with log.open("w") as f:
            subprocess.run(
                [sys.executable, str(HERE / "generate.py"), str(args.lines)], stdout=f, check=True
            )
        size = log.stat().st_size
        print(f"log: {args.lines} lines, {size / 1e6:.0f} MB")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        wall, rss, out = timed(
            [sys.executable, "-c", AGENT_RUN, str(log), str(tmp / "s.db")], env=env
        )
        lines, inner = out.split()
        agent_lps = int(lines) / float(inner)
        print(
            f"agent:     {agent_lps:>10,.0f} lines/s (parse+count+store {float(inner):.2f} s; "
            f"process {wall:.2f} s)  peak RSS {rss / 1024:.1f} MiB"
        )
        pwall, prss, _ = timed(["pflogsumm", str(log)])
        pf_lps = args.lines / pwall
        print(
            f"pflogsumm: {pf_lps:>10,.0f} lines/s ({pwall:.2f} s)  peak RSS {prss / 1024:.1f} MiB"
        )
        print(f"ratio:     {agent_lps / pf_lps:.1f}x pflogsumm")
        for inotify in (True, False):
            lat = sorted(latency(tmp, inotify))
            print(
                f"latency ({'inotify' if inotify else 'poll'}): median {lat[len(lat) // 2] * 1000:.1f} ms, "
                f"max {lat[-1] * 1000:.1f} ms over {len(lat)} lines"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
