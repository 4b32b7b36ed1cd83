"""The `mailcfg` command line: argument parsing and output only; the work is in library calls
(`compiler.build` assembles them).

Exit codes: 0 success (no changes); 1 any error (bad arguments, invalid inventory, a failed or
unreachable host); 2 only with `plan --detailed-exitcode`, when there are changes.
User errors are printed as one line each on stderr, never as a traceback.

`apply` shows every host's plan, then applies. On a terminal it asks first unless `--yes`;
run from a pipe or CI (no terminal) it applies without asking: the tool is driven from git,
where the reviewed merge is the approval and the printed plan is the log. The applied plan is
exactly the one shown: each host refuses it if its release changed in between.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from compiler.build import BuildSession
from compiler.connectors.transport import TransportError
from compiler.load.diagnostics import InventoryError
from compiler.push.apply import ApplyError, format_releases
from compiler.push.fleet import DEFAULT_FORKS, format_plans, format_recap, recap_exit_code
from compiler.push.hostcall import HostError
from compiler.push.show import FORMATS

if TYPE_CHECKING:
    from compiler.push.fleet import HostResult


class UsageError(Exception):
    """Bad command-line input (exit 1, never argparse's 2, which means "changes")."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailcfg", description="Declarative Postfix + Dovecot configuration.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def inventory_command(
        name: str, help_text: str, aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, aliases=list(aliases))
        p.set_defaults(command=name)
        p.add_argument("inventory", type=Path, help="inventory directory (holds mailcfg.yml)")
        p.add_argument("--roles", type=Path, help="roles directory (default: the built-in one)")
        p.add_argument(
            "--cache",
            type=Path,
            help="cache directory (default: one per inventory under $XDG_CACHE_HOME/mailcfg)",
        )
        return p

    inventory_command("validate", "check the inventory and render every host", ["check"])
    p = inventory_command("render", "write each host's files under DIR/<host>/")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    p = inventory_command("plan", "show what apply would change")
    p.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    p.add_argument("--format", choices=FORMATS, default="diff")
    p.add_argument("--forks", type=_positive, default=DEFAULT_FORKS)
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 without changes, 2 with changes, 1 on errors",
    )
    p = inventory_command("apply", "show the plan, then apply it")
    p.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    p.add_argument("--forks", type=_positive, default=DEFAULT_FORKS)
    p.add_argument("--yes", action="store_true", help="do not ask, even on a terminal")
    p.add_argument("--keep-releases", type=_positive, default=5)
    p = inventory_command("releases", "list the releases stored on a host")
    p.add_argument("host")
    p = inventory_command("rollback", "reinstall a stored release on a host")
    p.add_argument("host")
    p.add_argument("--to", metavar="RELEASE", help="release id (default: the previous one)")
    p = inventory_command("unlock", "lift an account's sending lock on a host (its agent)")
    p.add_argument("host")
    p.add_argument("address")
    p = inventory_command("stats", "per-account daily statistics gathered from the hosts' agents")
    p.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    p.add_argument("--day", help="YYYY-MM-DD (default: every stored day)")
    p.add_argument("--account", help="only this account")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    inventory_command("codeowners", "print a CODEOWNERS file from the domains' admins")
    p = sub.add_parser("passwd", help="hash a new password (asked, or read from stdin)")
    p.add_argument("--scheme", default="BLF-CRYPT")
    sub.add_parser("schema", help="print the inventory's JSON Schema")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    out, err = sys.stdout, sys.stderr
    try:
        args = build_parser().parse_args(argv)
        handler = _COMMANDS[args.command]
        if hasattr(args, "inventory"):
            args.session = BuildSession.open(
                args.inventory,
                roles_dir=args.roles,
                cache_dir=args.cache,
                warn=lambda line: print(line, file=err),
            )
        return handler(args, out, err)
    except UsageError as exc:
        print(exc, file=err)
        return 1
    except InventoryError as exc:
        for diagnostic in exc.diagnostics:
            print(diagnostic.format(), file=err)
        errors = sum(d.severity == "error" for d in exc.diagnostics)
        print(f"mailcfg: {errors} error(s) in the inventory", file=err)
        return 1
    except (TransportError, HostError) as exc:
        print(f"mailcfg: {exc}", file=err)
        return 1
    except FileNotFoundError as exc:
        print(f"mailcfg: {exc.filename or exc}: no such file or directory", file=err)
        return 1
    except (OSError, ValueError) as exc:  # PasswordError is a ValueError
        print(f"mailcfg: {exc}", file=err)
        return 1
    except KeyboardInterrupt:
        print("mailcfg: interrupted", file=err)
        return 130


# --- commands -----------------------------------------------------------------------------------


def _print_failures(failures: Sequence[HostResult], err: IO[str]) -> None:
    for failure in failures:
        print(f"{failure.host}: error: {failure.message}", file=err)


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    session: BuildSession = args.session
    loaded = session.load()
    targets, failures = session.compile()
    _print_failures(failures, err)
    if failures:
        print(f"mailcfg: {len(failures)} host(s) failed to render", file=err)
        return 1
    files = sum(len(t.tree) for t in targets)
    domains = len(loaded.inventory.domains)
    print(f"ok: {len(targets)} host(s), {domains} domain(s), {files} file(s) rendered", file=out)
    return 0


def cmd_render(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """All or nothing: when one host fails to render, no host's files are written (a partial
    output directory would pass for a complete one)."""
    session: BuildSession = args.session
    targets, failures = session.compile(args.host)
    _print_failures(failures, err)
    if failures:
        print(f"mailcfg: {len(failures)} host(s) failed to render; nothing written", file=err)
        return 1
    for target, count in session.write_trees(targets, args.out):
        print(f"{target.name}: {count} file(s) in {args.out / target.name}", file=out)
    return 0


def cmd_plan(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    session: BuildSession = args.session
    results = session.plan(*session.compile(args.host), forks=args.forks)
    out.write(format_plans(results, args.format))
    failed = [r for r in results if r.plan is None]
    if failed:
        err.write(format_recap(failed))
        return 1
    changes = any(r.plan is not None and r.plan.has_changes for r in results)
    return 2 if args.detailed_exitcode and changes else 0


def cmd_apply(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    session: BuildSession = args.session
    targets, failures = session.compile(args.host)
    planned = session.plan(targets, failures, forks=args.forks)
    out.write(format_plans(planned, "diff"))
    to_apply = {r.host: r.plan for r in planned if r.plan is not None and r.plan.has_changes}
    not_applied = [r for r in planned if r.host not in to_apply]
    if not to_apply:
        out.write("no changes\n")
        if recap_exit_code(not_applied):
            err.write(format_recap(not_applied))
        return recap_exit_code(not_applied)
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Apply these changes to {len(to_apply)} host(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            out.write("not applied\n")
            return 1
    applied = session.apply(targets, to_apply, forks=args.forks, keep_releases=args.keep_releases)
    results = sorted(applied + not_applied, key=lambda r: r.host)
    out.write(format_recap(results))
    return recap_exit_code(results)


def cmd_releases(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    out.write(format_releases(args.host, args.session.releases(args.host)))
    return 0


def cmd_rollback(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    def warn(w: str) -> None:
        print(f"{args.host}: warning: {w}", file=err)

    try:
        release = args.session.rollback(args.host, args.to, warn)
    except ApplyError as exc:
        print(f"mailcfg: {args.host}: rollback failed at {exc.step}: {exc.message}", file=err)
        return 1
    out.write(f"{args.host}: now at release {release.id} (was {release.previous_id})\n")
    return 0


def cmd_unlock(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    result = args.session.unlock(args.host, args.address)
    out.write(result.stdout)
    if not result.ok:
        err.write(f"{args.host}: {(result.stderr or result.stdout).strip()}\n")
        return 1
    return 0


def cmd_stats(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.stats import StatsError, format_stats, write_html_report

    try:
        rows = args.session.agent_stats(args.host, args.day, args.account)
    except StatsError as exc:
        print(f"mailcfg: {exc}", file=err)
        return 1
    out.write(format_stats(rows, args.format))
    if args.html:
        write_html_report(rows, args.html)
        print(f"report written to {args.html}", file=err)
    return 0


def cmd_codeowners(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.codeowners import make_codeowners

    out.write(make_codeowners(args.session.load(), args.inventory))
    return 0


def cmd_passwd(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.passwd import make_password_hash, read_password_from

    password = read_password_from(sys.stdin)
    out.write(make_password_hash(password, args.scheme) + "\n")
    return 0


def cmd_schema(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.schema import export_json_schema

    out.write(json.dumps(export_json_schema(), indent=2, sort_keys=True) + "\n")
    return 0


_COMMANDS = {
    "validate": cmd_validate,
    "render": cmd_render,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "releases": cmd_releases,
    "rollback": cmd_rollback,
    "unlock": cmd_unlock,
    "stats": cmd_stats,
    "codeowners": cmd_codeowners,
    "passwd": cmd_passwd,
    "schema": cmd_schema,
}


if __name__ == "__main__":
    sys.exit(main())
