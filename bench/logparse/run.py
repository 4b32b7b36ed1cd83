# ruff: noqa: E501
"""Benchmark: `mailcfg-agent ingest` vs pflogsumm on the same generated log, plus the latency
from a line being written to its counter being stored.

    python bench/logparse/run.py [--lines N] [--accounts A] [--domains D] [--days N]
        [--format rfc3339|classic] [--rounds R] [--baseline SRC] [--floor] [--no-latency]

The log is `generate.py`'s (a Debian 12 host: 3,000 accounts in 150 domains over 7 days,
2,000,000 lines by default), with the counters its lines must give. Each contender is a whole
process under /usr/bin/time (CPU seconds = user+sys, peak RSS): the agent side is the real
command, `python -m runtime ingest` with an agent.json naming the log's domains and accounts,
into a fresh SQLite file (interpreter start, config validation and the store included); the
pflogsumm side is Debian's pflogsumm on the same file. They alternate for R rounds, and
`--baseline SRC` (another source tree of the agent, say `git archive` of an older commit)
runs its ingest in the same rounds, so before and after meet the same machine load. The first
agent round's store is compared with the generator's counters: every counter must be exact.
CPU seconds do not depend on how busy the other cores are; wall time does, so the load average
is printed with the results. `--floor` adds two contenders to the same rounds: the agent's
start alone (the same command on an empty log: interpreter, imports, agent.json validated, the
store opened and closed) and `floor.py` (a bare read loop with one regex per line, counting
nothing), and prints the CPU budget of 8x pflogsumm beside them. Latency: the follower (`follow_logs`, inotify and poll) runs in a
child process; the bench appends a login line and polls the store until the counter moves.
Everything lives in a temp dir.
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


def timed(cmd: list[str], **kw: object) -> tuple[float, int, float, str]:
    """(wall seconds, peak RSS KiB, CPU seconds, stderr before time's line) of a command."""
    t = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M %U %S", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
        **kw,  # type: ignore[arg-type]
    )
    wall = time.perf_counter() - t
    *out, last = proc.stderr.strip().splitlines()
    rss, user, sys_ = last.split()
    return wall, int(rss), float(user) + float(sys_), "\n".join(out)


def write_agent_config(path: Path, expect: dict[str, object], db: Path) -> None:
    """An agent.json for the generated host: its domains, its accounts (one limit each)."""
    domains = expect["domains"]
    accounts = expect["accounts"]
    assert isinstance(domains, list) and isinstance(accounts, list)
    config = {
        "host": "bench", "hostname": "mx.bench.example", "listen": "unix:/nonexistent",
        "state": f"sqlite:///{db}", "local_domains": domains,
        "accounts": {a: {"limits": {"per_day": 500}} for a in accounts},
        "global_filter_reject_text": "x", "whitelist_reject_text": "x",
        "default_limits": {}, "postmaster": f"postmaster@{domains[0]}",
    }  # fmt: skip
    path.write_text(json.dumps(config))


def stored_counters(db: Path) -> dict[tuple[str, str], dict[str, int]]:
    conn = sqlite3.connect(db)
    try:
        out: dict[tuple[str, str], dict[str, int]] = {}
        for day, account, name, value in conn.execute(
            "SELECT day, account, name, value FROM stats"
        ):
            if value:
                out.setdefault((day, account), {})[name] = value
        return out
    finally:
        conn.close()


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
    ap.add_argument("--accounts", type=int, default=3_000)
    ap.add_argument("--domains", type=int, default=150)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--format", choices=("rfc3339", "classic"), default="rfc3339")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--baseline", type=Path, help="another agent source tree, run in the same rounds"
    )
    ap.add_argument(
        "--floor", action="store_true",
        help="also run the agent's start alone and a bare one-regex-per-line loop",
    )  # fmt: skip
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    if args.floor and args.format != "rfc3339":
        ap.error("--floor: floor.py reads RFC 3339 lines only")
    tmp = Path(tempfile.mkdtemp(prefix="mailcfg-bench-logparse-"))
    try:
        log = tmp / "mail.log"
        expect_path = tmp / "expect.json"
        with log.open("w") as f:
            subprocess.run(
                [
                    sys.executable, str(HERE / "generate.py"), str(args.lines),
                    "--accounts", str(args.accounts), "--domains", str(args.domains),
                    "--days", str(args.days), "--format", args.format,
                    "--expect", str(expect_path),
                ],
                stdout=f,
                check=True,
            )  # fmt: skip
        expect = json.loads(expect_path.read_text())
        wanted = {(day, account): row for day, account, row in expect["counters"]}
        size = log.stat().st_size
        print(
            f"log: {args.lines:,} lines, {size / 1e6:.0f} MB, {args.accounts:,} accounts in "
            f"{args.domains} domains over {args.days} days ({args.format}); {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        sides = {"agent": REPO}
        if args.baseline:
            sides["baseline"] = args.baseline.resolve()
        extras = ["agent start only", "bare loop, one regex per line"] if args.floor else []
        cpu: dict[str, list[float]] = {name: [] for name in [*sides, *extras, "pflogsumm"]}
        empty = tmp / "empty.log"
        empty.write_text("")
        rss: dict[str, int] = dict.fromkeys(cpu, 0)
        wall: dict[str, list[float]] = {name: [] for name in cpu}
        exact = None
        for r in range(args.rounds):
            for name, src in sides.items():
                db = tmp / f"{name}-{r}.db"
                config = tmp / f"agent-{name}-{r}.json"
                write_agent_config(config, expect, db)
                w, m, c, _ = timed(
                    [sys.executable, "-m", "runtime", "ingest", "--config", str(config),
                     "--year", "2024", str(log)],
                    cwd=src, env={**os.environ, "PYTHONPATH": str(src)},
                )  # fmt: skip
                cpu[name].append(c)
                wall[name].append(w)
                rss[name] = max(rss[name], m)
                if name == "agent" and exact is None:
                    exact = stored_counters(db) == wanted
                db.unlink()
            if args.floor:
                config = tmp / f"agent-start-{r}.json"
                write_agent_config(config, expect, tmp / f"start-{r}.db")
                floor_runs = {
                    "agent start only": [
                        sys.executable, "-m", "runtime", "ingest", "--config", str(config),
                        "--year", "2024", str(empty),
                    ],
                    "bare loop, one regex per line": [
                        sys.executable, str(HERE / "floor.py"), str(log)
                    ],
                }  # fmt: skip
                for name, cmd in floor_runs.items():
                    w, m, c, _ = timed(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
                    cpu[name].append(c)
                    wall[name].append(w)
                    rss[name] = max(rss[name], m)
            w, m, c, _ = timed(["pflogsumm", str(log)])
            cpu["pflogsumm"].append(c)
            wall["pflogsumm"].append(w)
            rss["pflogsumm"] = max(rss["pflogsumm"], m)
            print(
                f"round {r + 1}: "
                + " | ".join(
                    f"{name} CPU {cpu[name][-1]:.2f} s, wall {wall[name][-1]:.2f} s" for name in cpu
                )
                + f" | load average {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        pf = median(cpu["pflogsumm"])
        print()
        print("| | CPU s, median (rounds) | CPU ratio vs pflogsumm | lines/CPU s | peak RSS |")
        print("|---|---|---:|---:|---:|")
        for name in cpu:
            c = median(cpu[name])
            rounds = " / ".join(f"{x:.2f}" for x in cpu[name])
            ratio = "" if name == "pflogsumm" else f"**{pf / c:.1f}x**"
            print(
                f"| {name} | {c:.2f} ({rounds}) | {ratio} | {args.lines / c:,.0f} | "
                f"{rss[name] / 1024:.1f} MiB |"
            )
        if args.floor:
            print(f"| 8x pflogsumm (the target) | {pf / 8:.2f} | **8.0x** | | |")
        print(
            f"\nevery counter exact (agent vs the generator's {len(wanted):,} account-days): "
            f"{'yes' if exact else 'NO'}"
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
