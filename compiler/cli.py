"""The `mailcfg` command line: argument parsing and output only; the work is in library calls
(`compiler.build` assembles them).

Exit codes: 0 success (no changes); 1 any error (bad arguments, invalid inventory, a failed or
unreachable host); 2 with `plan --detailed-exitcode` when there are changes, and for a bare
`mailcfg` (no command: the help is printed, as argparse exits on a usage error).
User errors are printed as one line each on stderr, never as a traceback.

`apply` shows every host's plan, then applies; `rollback` shows what going back changes, then
rolls back. Both ask first by one rule (`cliout.confirm_change`): on a terminal unless
`--yes`; from a pipe or CI (no terminal) they go ahead. The applied plan is exactly the one
shown: each host refuses it if its release changed in between.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NoReturn

from compiler import cliout
from compiler.build import BuildSession
from compiler.cliout import UsageError
from compiler.cliweb import EXTRA_COMMANDS, add_extra_commands
from compiler.push.show import FORMATS, format_plan


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mailcfg", description="Declarative Postfix + Dovecot configuration.")
    parser.add_argument("--version", action=cliout.VersionAction)
    sub = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="COMMAND", help="one of:"
    )

    def inventory_command(
        name: str, help_text: str, options: Sequence[str] = (), aliases: Sequence[str] = ()
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, aliases=list(aliases), description=help_text)
        p.set_defaults(command=name)
        for option in ("inventory", "--roles", "--cache", *options):
            p.add_argument(option, **_OPTIONS[option])  # type: ignore[arg-type]
        return p

    inventory_command("validate", "check the inventory and render every host", (), ["check"])
    p = inventory_command("render", "write each host's files under DIR/<host>/", ["--host"])
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p = inventory_command("plan", "show what apply would change", ["--host", "--forks"])
    p.add_argument("--format", choices=FORMATS, default="diff", help="output format")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 if there are changes")
    p = inventory_command("apply", "show the plan, then apply it", ["--host", "--forks", "--yes"])
    p.add_argument(
        "--keep-releases", type=cliout.positive_count, default=5, help="releases kept per host"
    )
    inventory_command("releases", "list the releases stored on a host", ["host"])
    p = inventory_command("rollback", "show what going back changes, then do it", ["host", "--yes"])
    p.add_argument("--to", metavar="RELEASE", help="release id (default: the previous one)")
    p = inventory_command("unlock", "lift an account's sending lock on the hosts' agents")
    p.add_argument("only", nargs="?", metavar="HOST", help="only this host (as --host)")
    p.add_argument("address", help="the locked account's address")
    p.add_argument("--host", **_OPTIONS["--host"])  # type: ignore[arg-type]
    p = inventory_command(
        "stats", "per-account daily statistics from the hosts' agents", ["--host"]
    )
    p.add_argument("--day", type=cliout.day_argument, help="YYYY-MM-DD (default: every stored day)")
    p.add_argument("--account", help="only this account")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output")
    p.add_argument("--html", type=Path, metavar="FILE", help="also write an HTML report")
    inventory_command("codeowners", "print a CODEOWNERS file from the domains' admins")
    add_extra_commands(inventory_command)
    p = sub.add_parser("passwd", help="hash a new password (asked, or read from stdin)")
    p.add_argument("--scheme", default="BLF-CRYPT", help="BLF-CRYPT, ARGON2ID or SHA512-CRYPT")
    p = sub.add_parser("schema", help="print the JSON Schema of one kind of inventory file")
    p.add_argument("--kind", choices=("inventory", "domain"), required=True, help="file kind")
    return parser


# The arguments several commands share.
_OPTIONS: dict[str, dict[str, object]] = {
    "inventory": {"type": Path, "help": "inventory directory (holds mailcfg.yml)"},
    "--roles": {"type": Path, "help": "roles directory (default: the built-in one)"},
    "--cache": {"type": Path, "help": "cache directory (default: $XDG_CACHE_HOME/mailcfg/…)"},
    "host": {"help": "the host (its name in the inventory)"},
    "--host": {"action": "append", "default": [], "help": "only this host (repeatable)"},
    "--forks": {
        "type": cliout.positive_count,
        "default": None,  # `push.fleet`'s (imported by the commands that use it)
        "help": "hosts worked on at once",
    },
    "--yes": {"action": "store_true", "help": "do not ask, even on a terminal"},
}


def main(argv: Sequence[str] | None = None, *, fast_exit: bool = False) -> int:
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        err.write(parser.format_help())
        return 2
    args = None
    try:
        args = parser.parse_args(argv)
        handler = _COMMANDS[args.command]
        if hasattr(args, "inventory"):
            args.session = BuildSession.open(
                args.inventory,
                roles_dir=args.roles,
                cache_dir=args.cache,
                warn=lambda line: print(line, file=err),
            )
        return cliout.finish(handler(args, out, err), args.command if fast_exit else "", out, err)
    except KeyboardInterrupt:
        print("mailcfg: interrupted", file=err)
        return 130
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:
        reported = cliout.report_error(exc, err)
        if reported is None:
            raise
        code, errors = reported
        if cliout.wants_json(args, argv):
            from compiler.push.fleet import format_json_report

            out.write(format_json_report([], errors))
        return code


# --- commands -----------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    session: BuildSession = args.session
    loaded = session.load()
    targets, failures = session.compile()
    cliout.print_failures(failures, err)
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
    cliout.print_failures(failures, err)
    if failures:
        print(f"mailcfg: {len(failures)} host(s) failed to render; nothing written", file=err)
        return 1
    for target, count in session.write_trees(targets, args.out):
        print(f"{target.name}: {count} file(s) in {args.out / target.name}", file=out)
    return 0


def cmd_plan(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.push.fleet import format_plan_report, recap_exit_code

    session: BuildSession = args.session
    results = session.plan(*session.compile(args.host), forks=args.forks)
    out.write(format_plan_report(results, args.format))
    if recap_exit_code(results):
        return 1
    changes = any(r.plan is not None and r.plan.has_changes for r in results)
    return 2 if args.detailed_exitcode and changes else 0


def cmd_apply(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.push.apply import INTERRUPTED_NOTE
    from compiler.push.fleet import format_plans, format_recap, recap_exit_code

    session: BuildSession = args.session
    targets, failures = session.compile(args.host)
    planned = session.plan(targets, failures, forks=args.forks)
    out.write(format_plans(planned, "diff"))
    to_apply = {r.host: r.plan for r in planned if r.plan is not None and r.plan.has_changes}
    not_applied = [r for r in planned if r.host not in to_apply]
    if not to_apply:
        out.write(format_recap(not_applied))
        return recap_exit_code(not_applied)
    if not cliout.confirm_change(
        f"Apply these changes to {len(to_apply)} host(s)?", yes=args.yes, out=out
    ):
        return 1
    try:
        applied = session.apply(
            targets, to_apply, forks=args.forks, keep_releases=args.keep_releases
        )
    except KeyboardInterrupt:
        err.write(INTERRUPTED_NOTE)
        return 130
    results = sorted(applied + not_applied, key=lambda r: r.host)
    out.write(format_recap(results))
    return recap_exit_code(results)


def cmd_releases(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.push.apply import format_releases

    out.write(format_releases(args.host, args.session.releases(args.host)))
    return 0


def cmd_rollback(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.push.apply import ApplyError
    from compiler.push.fleet import runs_services

    def warn(w: str) -> None:
        print(f"{args.host}: warning: {w}", file=err)

    release_id, plan = args.session.rollback_plan(args.host, args.to)
    spec = args.session.load().inventory.hosts[args.host]
    plan = dataclasses.replace(plan, runs_services=runs_services(spec))
    out.write(f"{args.host}: rollback to release {release_id}\n" + format_plan(plan, "diff"))
    if not cliout.confirm_change(f"Roll {args.host} back to {release_id}?", yes=args.yes, out=out):
        return 1
    try:
        release = args.session.rollback(args.host, release_id, warn)
    except ApplyError as exc:
        print(f"mailcfg: {args.host}: rollback failed at {exc.step}: {exc.message}", file=err)
        return 1
    out.write(f"{args.host}: now at release {release.id} (was {release.previous_id})\n")
    return 0


def cmd_unlock(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    hosts = [*args.host, *([args.only] if args.only else [])]
    return cliout.report_hosts(args.session.unlock(hosts, args.address), out, need_change=True)


def cmd_stats(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.stats import format_stats, write_html_report

    rows, results = args.session.agent_stats(args.host, args.day, args.account)
    out.write(format_stats(rows, args.format))
    if args.html:
        write_html_report(rows, args.html)
        print(f"report written to {args.html}", file=err)
    return cliout.report_hosts(results, err, need_change=False)


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
    from compiler.tools.schema import format_json_schema

    out.write(format_json_schema(args.kind))
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
    **EXTRA_COMMANDS,
}


def console_main() -> int:
    """The `mailcfg` command (and `python -m compiler.cli`): `main` with render's and
    validate's fast exit, which only a whole process may take."""
    return main(fast_exit=True)


if __name__ == "__main__":
    sys.exit(console_main())
