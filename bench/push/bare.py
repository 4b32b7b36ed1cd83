"""Benchmark: a bare Debian 12 host to a working mail server with one `mailcfg apply`, then a
one-account change and a no-op plan on that host (run by hand, as root:
`python bench/push/bare.py [--repeat 5]`).

The host is the bare-host test's (`tests/e2e/test_bare_host.py`): a minbase root with sshd
and python3 in a network namespace, apt through a proxy to the Debian archive, ACME against
pebble. "apt" is what the host's `/var/log/apt/history.log` says its runs took (whole
seconds: update not included); the agent's wheelhouse is made (or found cached) on the
controller during the apply. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "tests" / "e2e"))
sys.path.insert(0, str(HERE.parents[2]))

from test_bare_host import Bare, running_bare_host  # noqa: E402
from test_push import make_hash  # noqa: E402


def timed(bare: Bare, *args: str) -> float:
    start = time.perf_counter()
    result = bare.mailcfg(*args)
    elapsed = time.perf_counter() - start
    if result.returncode not in (0, 2) or "failed=0" not in result.stdout + result.stderr:
        sys.exit(f"mailcfg {' '.join(args)} failed ({result.returncode}):\n"
                 f"{result.stdout[-3000:]}{result.stderr[-3000:]}")  # fmt: skip
    return elapsed


def apt_seconds(root: Path) -> int:
    """The sum of End-Date minus Start-Date over the host's apt runs."""
    total, start = 0, None
    log = root / "var/log/apt/history.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        key, _, value = line.partition(": ")
        if key in ("Start-Date", "End-Date"):
            when = datetime.strptime(value.strip(), "%Y-%m-%d  %H:%M:%S")
            if key == "Start-Date":
                start = when
            elif start is not None:
                total += int((when - start).total_seconds())
    return total


def add_account(bare: Bare, name: str) -> None:
    path = bare.inventory / "domains" / "bare.example.yml"
    text = path.read_text()
    account = f'{{"name": "{name}", "password": "{make_hash("bench password 1")}"}}'
    path.write_text(text.replace('"accounts": [', f'"accounts": [{account}, ', 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the host is a network namespace with a chroot")
    rows: list[tuple[str, str]] = []
    with (
        tempfile.TemporaryDirectory(prefix="mcfg-bench-bare-") as tmp,
        running_bare_host(Path(tmp)) as bare,
    ):
        first = timed(bare, "apply", "--yes")
        rows.append(("bare host to mail server, one apply (wall)", f"{first:.1f} s"))
        rows.append(("  of which apt in the host", f"{apt_seconds(bare.root)} s"))
        changes = []
        for i in range(args.repeat):
            add_account(bare, f"bench{i}")
            changes.append(timed(bare, "apply", "--yes"))
        rows.append((f"one-account change on that host (median of {args.repeat})",
                         f"{statistics.median(changes):.2f} s"))  # fmt: skip
        rows.append(("one-account change, best", f"{min(changes):.2f} s"))
        plans = [timed(bare, "plan", "--detailed-exitcode") for _ in range(args.repeat)]
        rows.append((f"no-op plan of that host (median of {args.repeat})",
                         f"{statistics.median(plans):.2f} s"))  # fmt: skip
    print(f"| bare host over SSH, {os.cpu_count()} CPUs | wall |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
