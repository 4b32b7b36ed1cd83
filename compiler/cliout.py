"""The `mailcfg` command line's helpers: its version, argument types whose errors say what is
wrong, the question before a change (one rule for `apply` and `rollback`), the per-host
report of the commands that ask the hosts' agents, and how a user error is reported (lines
on stderr, an exit code, and for `plan --format json` the errors of its JSON document).

The question: `--yes` never asks; on a terminal the answer decides; without a terminal (a pipe,
CI) the change goes ahead unasked, since the tool is driven from git, where the reviewed merge
is the approval and the printed plan is the log.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING, Any

from compiler.connectors.transport import TransportError
from compiler.load.diagnostics import InventoryError
from schemas.stats import check_day

if TYPE_CHECKING:
    from compiler.push.fleet import HostResult

DISTRIBUTION = "mailcfg"
# Commands that only read the inventory and write local files: once they return, nothing is
# left for the interpreter's exit to do (no threads, temporary files or atexit work).
FAST_EXIT_COMMANDS = frozenset({"render", "validate"})


class UsageError(Exception):
    """Bad command-line input (exit 1, never argparse's 2, which means "changes")."""


def version_text() -> str:
    """`mailcfg <version>` of the installed distribution."""
    # Imported here: importlib.metadata and the lookup cost every command ~30 ms at start.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{DISTRIBUTION} {version(DISTRIBUTION)}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return f"{DISTRIBUTION} (not installed: version unknown)"


class VersionAction(argparse.Action):
    """`--version`, as argparse's own action, with the version looked up only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings, dest, default=argparse.SUPPRESS, nargs=0,
            help="show program's version number and exit",
        )  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        formatter = parser._get_formatter()
        formatter.add_text(version_text())
        parser._print_message(formatter.format_help(), sys.stdout)
        parser.exit()


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


def print_failures(failures: Sequence[HostResult], err: IO[str]) -> None:
    """One line on `err` for each host that failed."""
    for failure in failures:
        print(f"{failure.host}: error: {failure.message}", file=err)


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
    from compiler.push.fleet import Outcome, format_recap, recap_exit_code

    out.write(format_recap(results))
    if recap_exit_code(results):
        return 1
    return 1 if need_change and not any(r.outcome is Outcome.CHANGED for r in results) else 0


def report_error(exc: Exception, err: IO[str]) -> tuple[int, list[dict[str, Any]]] | None:
    """Print the user error `exc` on `err` (one line each, never a traceback); its exit code
    and its entries for a JSON document's `errors`. None when `exc` is no user error (a bug:
    the caller lets it propagate)."""
    # Imported here: the push modules cost `render` and `validate` ~5 % of a warm run.
    from compiler.push.hostcall import HostError

    if isinstance(exc, InventoryError):
        for diagnostic in exc.diagnostics:
            print(diagnostic.format(), file=err)
        errors = sum(d.severity == "error" for d in exc.diagnostics)
        message = f"{errors} error(s) in the inventory"
        print(f"mailcfg: {message}", file=err)
        found = [
            {
                "file": d.file,
                "line": d.line,
                "col": d.col,
                "field": d.field,
                "severity": d.severity,
                "message": d.message,
            }
            for d in exc.diagnostics
        ]
        return 1, [{"host": None, "outcome": "invalid", "message": message, "diagnostics": found}]
    if isinstance(exc, UsageError):
        text, outcome = str(exc), "usage"
        print(text, file=err)
    elif isinstance(exc, FileNotFoundError):
        text, outcome = f"mailcfg: {exc.filename or exc}: no such file or directory", "error"
        print(text, file=err)
    elif isinstance(exc, (TransportError, HostError, OSError, ValueError)):
        # ValueError: a BuildError (an unknown host, ...) or a PasswordError.
        text, outcome = f"mailcfg: {exc}", "error"
        print(text, file=err)
    else:
        return None
    return 1, [{"host": None, "outcome": outcome, "message": text.removeprefix("mailcfg: ")}]


def wants_json(args: argparse.Namespace | None, argv: Sequence[str]) -> bool:
    """Whether this run is `plan --format json`, which prints a JSON document even for an
    error; from `argv` when parsing it failed."""
    if args is not None:
        return getattr(args, "command", "") == "plan" and getattr(args, "format", "") == "json"
    pairs = zip(argv, [*argv[1:], ""], strict=True)
    as_json = "--format=json" in argv or any(a == "--format" and b == "json" for a, b in pairs)
    return bool(argv) and argv[0] == "plan" and as_json


def finish(code: int, command: str, *streams: IO[str]) -> int:
    """`code`, the exit status of `command`; for one of `FAST_EXIT_COMMANDS` the process exits
    with it here instead (`python -m compiler.cli` asks for this; a library caller passes ""):
    the streams flushed, then `os._exit`, which skips the interpreter's teardown. That teardown
    frees the session's model graph object by object, ~10^6 objects for a large inventory
    and about 4 % of the CPU of a warm render; the operating system frees it at once."""
    if command not in FAST_EXIT_COMMANDS or threading.active_count() != 1:
        return code
    try:
        for stream in (*streams, sys.stdout, sys.stderr):
            stream.flush()
    except (OSError, ValueError):  # a closed pipe or stream: the usual exit reports it
        return code
    os._exit(code)
