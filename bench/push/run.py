"""Benchmark of pushing over SSH: `mailcfg plan` (no-op) and `mailcfg apply` against N network
namespace hosts with real sshd (run by hand, as root: `python bench/push/run.py [--hosts 10]`).

Each host is a namespace with its own sshd (tests/e2e/netns.py) and its own config roots; the
`mailcfg` CLI runs as a subprocess, so the figures include interpreter start-up, inventory
loading, rendering, one SSH connection per host and the on-host script. Prints a Markdown table.
Target: a no-op plan of 10 hosts in <= 2 s wall. `bench/push/bare.py` measures a bare host
made a mail server, and a one-account change on one host (target <= 2 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "tests" / "e2e"))

from netns import NetnsLab  # noqa: E402
from test_push import Fleet  # noqa: E402


def timed(fleet: Fleet, *args: str) -> float:
    start = time.perf_counter()
    result = fleet.mailcfg(*args)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"mailcfg {' '.join(args)} failed ({result.returncode}):\n"
                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}")  # fmt: skip
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5, help="no-op plan runs")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the hosts are network namespaces")
    names = [f"h{i:02d}" for i in range(1, args.hosts + 1)]
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="mcfg-bench-push-") as tmp, NetnsLab() as lab:
        start = time.perf_counter()
        fleet = Fleet(lab, Path(tmp), names)
        rows.append((f"set up {args.hosts} namespace hosts (sshd, certs)",
                     f"{time.perf_counter() - start:.2f} s"))  # fmt: skip
        first = timed(fleet, "apply", "--yes")
        files = sum(1 for _ in (fleet.hosts[names[0]].base / "etc").rglob("*") if _.is_file())
        rows.append((f"first apply, {args.hosts} hosts ({files} files each)", f"{first:.2f} s"))
        plans = [timed(fleet, "plan", "--detailed-exitcode") for _ in range(args.repeat)]
        rows.append((f"no-op plan, {args.hosts} hosts (median of {args.repeat})",
                     f"{statistics.median(plans):.2f} s"))  # fmt: skip
        rows.append(("no-op plan, best", f"{min(plans):.2f} s"))
        fleet.accounts[names[0]].append(fleet.account("newcomer"))
        fleet.write_inventory()
        rows.append((f"apply of one changed account (1 of {args.hosts} hosts changes)",
                     f"{timed(fleet, 'apply', '--yes'):.2f} s"))  # fmt: skip
        for name in names:
            fleet.accounts[name].append(fleet.account("everywhere"))
        fleet.write_inventory()
        every = f"{args.hosts} of {args.hosts} change"
        rows.append((f"apply of one new account on every host ({every})",
                     f"{timed(fleet, 'apply', '--yes'):.2f} s"))  # fmt: skip
    print(f"| push over SSH, {os.cpu_count()} CPUs | wall |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
