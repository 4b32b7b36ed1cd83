"""The `mailcfg-agent` subcommands of the log side: `stats`, `ingest` and `follow`.

`add_parsers(subparsers)` registers them; each handler takes the parsed `argparse.Namespace`
and returns the process exit code. Handlers are thin: the work is in `ingest.py`. Bad input
(missing or invalid config, unreadable log) is a clear message on stderr and exit code 2; the
config is read by the agent's one loader (`runtime.config.load_agent_config`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from runtime.config import ConfigError, load_agent_config
from runtime.logs.ingest import Follower, account_policy, ingest_files, refresh_queue_gauge
from runtime.state.base import STAT_COUNTERS, StateStore, StatRow
from runtime.state.open import StoreError, open_store
from schemas.agent import DEFAULT_AGENT_CONFIG, AgentConfig
from schemas.stats import check_day


class CommandError(Exception):
    """A user error: printed as one line, exit code 2."""


def open_state(dsn: str, host: str = "") -> StateStore:
    """The store named by `dsn` (`sqlite:///path` or `redis://…`)."""
    try:
        return open_store(dsn, host=host)
    except StoreError as exc:
        raise CommandError(str(exc)) from exc


def stat_records(rows: Sequence[StatRow]) -> list[dict[str, object]]:
    """Rows as `{"day", "account", <every counter>}` objects (missing counters are 0)."""
    return [
        {
            "day": r.day,
            "account": r.account,
            **{n: int(r.counters.get(n, 0)) for n in STAT_COUNTERS},
        }
        for r in rows
    ]


def format_records(records: list[dict[str, object]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records, indent=1) + "\n"
    columns = ["day", "account", *STAT_COUNTERS]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue()
    table = [columns] + [[str(r[c]) for c in columns] for r in records]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "".join(
        "  ".join(
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        + "\n"
        for row in table
    )


def _store_for(args: argparse.Namespace, config: AgentConfig) -> StateStore:
    return open_state(args.state or config.state, host=config.host)


def _refresh_queue(config: AgentConfig, store: StateStore, now: float, command: str) -> None:
    if not refresh_queue_gauge(config, store, now):
        print(
            f"mailcfg-agent {command}: warning: `queued` not refreshed (postqueue -j failed "
            f"for {config.postfix_config_dir}; --no-queue skips it)",
            file=sys.stderr,
        )


def run_stats(args: argparse.Namespace) -> int:
    if args.day is not None:
        try:
            check_day(args.day)
        except ValueError as exc:
            raise CommandError(f"--day: {exc}") from None
    config = load_agent_config(args.config)
    store = _store_for(args, config)
    try:
        now = time.time()
        # `queued` is a gauge of the queue as it is now: refresh it when today is shown (one
        # cheap `postqueue -j`), so it is never as old as the daemon's last run.
        today = time.strftime("%Y-%m-%d", time.localtime(now))
        if args.queue and args.day in (None, today):
            _refresh_queue(config, store, now, "stats")
        account = args.account.lower() if args.account else None
        rows = store.stats(day=args.day, account=account)
    finally:
        store.close()
    sys.stdout.write(format_records(stat_records(rows), args.format))
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    paths = [Path(p) for p in args.files]
    for p in paths:
        if not p.is_file():
            raise CommandError(f"{p}: no such log file")
    store = _store_for(args, config)
    try:
        result = ingest_files(paths, store, account_policy(config), year=args.year)
    except OSError as exc:
        raise CommandError(f"cannot read log: {exc}") from exc
    finally:
        store.close()
    print(
        f"ingested {result.lines} lines ({result.unknown} not log lines) into "
        f"{result.account_days} account-days",
        file=sys.stderr,
    )
    return 0


def run_follow(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    store = _store_for(args, config)
    try:
        if args.once:
            follower = Follower.open(config, store)
            try:
                follower.run_once()
            finally:
                follower.close()
            if args.queue:
                _refresh_queue(config, store, time.time(), "follow")
            return 0
        import asyncio  # only the long-running follower needs the event loop

        asyncio.run(_follow_until_signal(config, store, use_inotify=not args.poll))
    finally:
        store.close()
    return 0


async def _follow_until_signal(config: AgentConfig, store: StateStore, use_inotify: bool) -> None:
    from runtime.daemon import Daemon
    from runtime.logs.ingest import follow_logs

    daemon = Daemon.quiet()  # until SIGTERM/SIGINT (runtime.daemon owns the signals)
    await daemon.run(follow_logs(config, store, daemon.stop, use_inotify=use_inotify))


def _guarded(handler: object) -> object:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)  # type: ignore[operator, no-any-return]
        except (CommandError, ConfigError) as exc:
            print(f"mailcfg-agent {args.command_name}: {exc}", file=sys.stderr)
            return 2

    return run


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `stats`, `ingest` and `follow` on the agent's subcommand parser."""

    def common(p: argparse.ArgumentParser, name: str) -> None:
        p.add_argument("--config", default=DEFAULT_AGENT_CONFIG, help="agent config (agent.json)")
        p.add_argument("--state", default=None, help="state DSN (default: the config's)")
        p.set_defaults(command_name=name)

    def no_queue(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--no-queue",
            dest="queue",
            action="store_false",
            help="do not refresh the `queued` gauge from `postqueue -j`",
        )

    p = subparsers.add_parser("stats", help="print per-account daily statistics")
    common(p, "stats")
    p.add_argument("--day", help="only this day (YYYY-MM-DD)")
    p.add_argument("--account", help="only this account")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    no_queue(p)
    p.set_defaults(func=_guarded(run_stats))

    p = subparsers.add_parser("ingest", help="count existing mail logs (also .gz) into the stats")
    common(p, "ingest")
    p.add_argument("files", nargs="+", metavar="FILE", help="log files, oldest first")
    p.add_argument("--year", type=int, help="year of the first line (classic syslog format)")
    p.set_defaults(func=_guarded(run_ingest))

    p = subparsers.add_parser("follow", help="follow the config's logs into the stats")
    common(p, "follow")
    p.add_argument("--once", action="store_true", help="read what is there, then exit")
    p.add_argument("--poll", action="store_true", help="poll instead of inotify")
    no_queue(p)
    p.set_defaults(func=_guarded(run_follow))


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry (tests, before the lead wires these into `mailcfg-agent`)."""
    parser = argparse.ArgumentParser(prog="mailcfg-agent")
    sub = parser.add_subparsers(required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    with contextlib.suppress(BrokenPipeError):
        code: int = args.func(args)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
