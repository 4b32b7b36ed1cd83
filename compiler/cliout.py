"""The `mailcfg` command line's helpers: its version, argument types whose errors say what is
wrong, the question before a change (one rule for `apply` and `rollback`), and the per-host
report of the commands that ask the hosts' agents.

The question: `--yes` never asks; on a terminal the answer decides; without a terminal (a pipe,
CI) the change goes ahead unasked, since the tool is driven from git, where the reviewed merge
is the approval and the printed plan is the log.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import IO

from compiler.push.fleet import HostResult, Outcome, format_recap, recap_exit_code
from schemas.stats import check_day

DISTRIBUTION = "mailcfg"


def version_text() -> str:
    """`mailcfg <version>` of the installed distribution."""
    try:
        return f"{DISTRIBUTION} {version(DISTRIBUTION)}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return f"{DISTRIBUTION} (not installed: version unknown)"


def positive_count(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def day_argument(text: str) -> str:
    """An argparse type: a real date written YYYY-MM-DD (`schemas.stats.check_day`)."""
    try:
        return check_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def confirm_change(question: str, *, yes: bool, out: IO[str]) -> bool:
    """Whether to go ahead (see the module docstring for the rule); `out` says so when not."""
    if yes or not sys.stdin.isatty():
        return True
    answer = input(f"{question} [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    out.write("not applied\n")
    return False


def report_hosts(results: Sequence[HostResult], out: IO[str], *, need_change: bool) -> int:
    """Print what each host did (the recap); the exit status: 1 when a host failed or was
    unreachable, or, with `need_change`, when no host changed anything."""
    out.write(format_recap(results))
    if recap_exit_code(results):
        return 1
    return 1 if need_change and not any(r.outcome is Outcome.CHANGED for r in results) else 0
