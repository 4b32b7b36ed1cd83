# ruff: noqa: E501
"""Benchmark: the agent's log parser vs pflogsumm on the same generated 2,000,000-line log,
plus the latency from a line being written to its counter being stored.

    python bench/logparse/run.py [--lines N] [--rounds R]

Each contender runs as its own process under /usr/bin/time (peak RSS, CPU seconds); the agent
side is `mailcfg-agent ingest` semantics (read + parse + count + store into a fresh SQLite
file), timed from the first read to the last commit. The two alternate for R rounds on the same
file and the median ratio is reported: on a shared machine one run alone says little. The CPU
ratio (user+sys of each whole process, interpreter start included) is printed too: it does not
depend on how busy the other cores are. Latency: the follower (`follow_logs`, inotify and
poll) runs in a child process; the bench appends a login line and polls the store until the
counter moves. Everything lives in a temp dir.
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


def timed(cmd: list[str], **kw: object) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS KiB, CPU seconds, stdout) of a command."""
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S", *cmd],
        capture_output=True,
        text=True,
        check=True,
        **kw,  # type: ignore[arg-type]
    )
    wall = time.perf_counter() - t
    rss, user, sys_ = proc.stderr.strip().splitlines()[-1].split()
    return wall, int(rss), float(user) + float(sys_), proc.stdout


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
        "from runtime.config import load_agent_config\n"
        f"cfg = load_agent_config({str(tmp / 'agent.json')!r})\n"
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


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mailcfg-bench-logparse-"))
    try:
        log = tmp / "mail.log"
        with log.open("w") as f:
            subprocess.run(
                [sys.executable, str(HERE / "generate.py"), str(args.lines)], stdout=f, check=True
            )
        size = log.stat().st_size
        print(
            f"log: {args.lines} lines, {size / 1e6:.0f} MB; load average {os.getloadavg()[0]:.1f}"
        )
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        ratios, cpu_ratios, rss_max = [], [], 0
        for r in range(args.rounds):
            db = tmp / f"s{r}.db"
            wall, rss, cpu, out = timed(
                [sys.executable, "-c", AGENT_RUN, str(log), str(db)], env=env
            )
            lines, inner = out.split()
            agent_lps = int(lines) / float(inner)
            rss_max = max(rss_max, rss)
            pwall, prss, pcpu, _ = timed(["pflogsumm", str(log)])
            pf_lps = args.lines / pwall
            ratios.append(agent_lps / pf_lps)
            cpu_ratios.append(pcpu / cpu)
            print(
                f"round {r + 1}: agent {agent_lps:>10,.0f} lines/s (parse+count+store "
                f"{float(inner):.2f} s; process {wall:.2f} s, CPU {cpu:.2f} s, peak RSS "
                f"{rss / 1024:.1f} MiB) | pflogsumm {pf_lps:>9,.0f} lines/s ({pwall:.2f} s, CPU "
                f"{pcpu:.2f} s, peak RSS {prss / 1024:.1f} MiB) | ratio {ratios[-1]:.1f}x, "
                f"CPU ratio {cpu_ratios[-1]:.1f}x"
            )
        print(
            f"median ratio {median(ratios):.1f}x pflogsumm (CPU {median(cpu_ratios):.1f}x); "
            f"agent peak RSS {rss_max / 1024:.1f} MiB"
        )
        if args.no_latency:
            return
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
