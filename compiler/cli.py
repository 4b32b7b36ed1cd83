"""The `mailcfg` command line: argument parsing and output only; the work is in library calls.

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
import gc
import json
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from compiler.connectors.transport import LocalTransport, Transport, TransportError
from compiler.load.diagnostics import InventoryError
from compiler.push.apply import ApplyError, list_releases, make_release_id, rollback_release
from compiler.push.connect import open_transport
from compiler.push.fleet import (
    DEFAULT_FORKS,
    HostResult,
    OpenTransport,
    Outcome,
    apply_target,
    format_recap,
    plan_target,
    recap_exit_code,
    run_parallel,
)
from compiler.push.hostcall import HostError
from compiler.push.show import FORMATS, Format, format_plan, plan_to_json
from compiler.render.targets import Target
from schemas.inventory import HostSpec

if TYPE_CHECKING:
    from compiler.load.inventory import LoadedInventory
    from compiler.render.roles import Roles


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
        if hasattr(args, "cache"):
            args.cache = _cache_dir(args, err)
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


# --- shared steps -------------------------------------------------------------------------------


def _cache_dir(args: argparse.Namespace, err: IO[str]) -> Path | None:
    """The cache directory to use (`--cache`, else the inventory's own under the XDG cache
    directory), or None after one warning when it is not safe: the run goes on without."""
    from compiler.cache.cachedir import CacheError, open_cache_dir

    if not args.inventory.is_dir():
        return None  # `_load` reports it
    try:
        return open_cache_dir(args.cache, args.inventory)
    except CacheError as exc:
        print(f"mailcfg: warning: {exc}; running without a cache", file=err)
        return None


def _manifest(cache: Path | None, host_dir: Path) -> Path | None:
    """The output manifest of `host_dir` under the cache, if its directory is safe."""
    from compiler.cache.cachedir import CacheError, prepare_cache_dir
    from compiler.render.outdir import manifest_path

    if cache is None:
        return None
    path = manifest_path(cache, host_dir)
    try:
        prepare_cache_dir(path.parent, tighten=False)
    except CacheError:
        return None
    return path


def _load(args: argparse.Namespace, err: IO[str]) -> LoadedInventory:
    from compiler.load.inventory import load_inventory

    if not args.inventory.exists():
        raise UsageError(f"mailcfg: inventory {args.inventory}: no such directory")
    loaded = load_inventory(args.inventory, cache_dir=args.cache)
    for warning in loaded.warnings:
        print(warning.format(), file=err)
    return loaded


def _roles(args: argparse.Namespace) -> Roles:
    from compiler.render.roles import default_roles_dir, load_roles

    return load_roles(args.roles if args.roles else default_roles_dir())


def _hosts(loaded: LoadedInventory, wanted: Sequence[str]) -> list[str]:
    known = loaded.inventory.hosts
    unknown = [h for h in wanted if h not in known]
    if unknown:
        raise UsageError(
            f"mailcfg: unknown host(s) {', '.join(unknown)}; the inventory has "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    return sorted(set(wanted)) if wanted else sorted(known)


def _compile(
    args: argparse.Namespace,
    err: IO[str],
    hosts: Sequence[str] | None = None,
    loaded: LoadedInventory | None = None,
) -> tuple[list[Target], list[HostResult]]:
    from compiler.cache.gcpause import gc_paused
    from compiler.render.fragments import SUBDIRECTORY, FragmentCache
    from compiler.render.targets import compile_targets

    with gc_paused():
        loaded = loaded or _load(args, err)
        selected = _hosts(loaded, args.host if hosts is None else hosts)
        inventory = loaded.inventory
        fragments = (
            FragmentCache.open(args.cache / SUBDIRECTORY, inventory.domains, loaded.domain_keys)
            if args.cache is not None
            else None
        )
        targets, failures = compile_targets(inventory, _roles(args), selected, fragments=fragments)
        # The inventory and targets live until the process exits: keep their ~10^5 objects
        # out of every later collection (plan and apply go on allocating).
        gc.freeze()
    return targets, [HostResult(f.host, Outcome.FAILED, message=f.message) for f in failures]


def _opener(base_dir: Path) -> OpenTransport:
    def open_host(name: str, spec: HostSpec) -> Transport:
        return open_transport(name, spec, base_dir=base_dir)

    return open_host


def _by_host(results: Sequence[HostResult]) -> list[HostResult]:
    return sorted(results, key=lambda r: r.host)


# --- commands -----------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    loaded = _load(args, err)
    targets, failures = _compile(args, err, sorted(loaded.inventory.hosts), loaded)
    for failure in failures:
        print(f"{failure.host}: error: {failure.message}", file=err)
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
    from compiler.connectors.confine import plain_name
    from compiler.render.outdir import write_tree

    targets, failures = _compile(args, err)
    for failure in failures:
        print(f"{failure.host}: error: {failure.message}", file=err)
    if failures:
        print(f"mailcfg: {len(failures)} host(s) failed to render; nothing written", file=err)
        return 1
    # A host key names one directory below --out (the load refuses others already); checked
    # for every host before the first is written. write_tree also refuses a symbolic link.
    for target in targets:
        plain_name(target.name)
    for target in targets:
        host_dir = args.out / target.name
        manifest = _manifest(args.cache, host_dir)
        count = write_tree(target.tree, args.out, manifest, name=target.name)
        print(f"{target.name}: {count} file(s) in {host_dir}", file=out)
    return 0


def _plan_all(args: argparse.Namespace, err: IO[str]) -> tuple[list[Target], list[HostResult]]:
    targets, failures = _compile(args, err)
    by_name = {t.name: t for t in targets}
    opener = _opener(Path.cwd())
    results = run_parallel(
        sorted(by_name), lambda h: plan_target(by_name[h], opener), forks=args.forks
    )
    return targets, _by_host(results + failures)


def cmd_plan(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    _, results = _plan_all(args, err)
    fmt: Format = args.format
    if fmt == "json":
        doc = {
            "plans": [plan_to_json(r.plan) for r in results if r.plan is not None],
            "errors": [
                {"host": r.host, "outcome": r.outcome.value, "message": r.message}
                for r in results
                if r.plan is None
            ],
        }
        out.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        for r in results:
            if r.plan is not None:
                out.write(format_plan(r.plan, fmt))
    failed = [r for r in results if r.plan is None]
    if failed:
        err.write(format_recap(failed))
        return 1
    changes = any(r.plan is not None and r.plan.has_changes for r in results)
    return 2 if args.detailed_exitcode and changes else 0


def cmd_apply(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    targets, planned = _plan_all(args, err)
    for r in planned:
        if r.plan is not None:
            out.write(format_plan(r.plan, "diff"))
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
    by_name = {t.name: t for t in targets}
    opener = _opener(Path.cwd())

    def job(host: str) -> HostResult:
        plan = to_apply[host]
        assert plan is not None
        release_id = make_release_id(datetime.now(UTC), plan.tree_digest)
        return apply_target(
            by_name[host], plan, opener, release_id=release_id, keep_releases=args.keep_releases
        )

    applied = run_parallel(sorted(to_apply), job, forks=args.forks)
    results = _by_host(applied + not_applied)
    out.write(format_recap(results))
    return recap_exit_code(results)


def _single_host(args: argparse.Namespace, err: IO[str]) -> tuple[Target, Transport]:
    targets, failures = _compile(args, err, hosts=[args.host])
    if failures:
        raise UsageError(f"mailcfg: {failures[0].host}: {failures[0].message}")
    target = targets[0]
    return target, open_transport(target.name, target.spec, base_dir=Path.cwd())


def cmd_releases(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    _, transport = _single_host(args, err)
    try:
        releases = list_releases(transport)
    finally:
        transport.close()
    if not releases:
        out.write(f"{args.host}: no releases\n")
    for r in releases:
        when = (
            datetime.fromtimestamp(r.installed_at, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
            if r.installed_at
            else "-"
        )
        mark = "*" if r.current else " "
        out.write(f"{mark} {r.id}  {when}  digest {r.tree_digest[:12]}  {r.files} file(s)\n")
    return 0


def cmd_rollback(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    target, transport = _single_host(args, err)
    every_role = {f.role for f in target.tree.values()} | {r.value for r in target.spec.roles}
    try:
        release = rollback_release(
            transport,
            activations=target.activations_for(every_role),
            to=args.to,
            warn=lambda w: print(f"{args.host}: warning: {w}", file=err),
        )
    except ApplyError as exc:
        print(f"mailcfg: {args.host}: rollback failed at {exc.step}: {exc.message}", file=err)
        return 1
    finally:
        transport.close()
    out.write(f"{args.host}: now at release {release.id} (was {release.previous_id})\n")
    return 0


def _agent_transport(
    loaded: LoadedInventory, args: argparse.Namespace, host: str
) -> tuple[str, Transport]:
    """The host's agent config path (as the host sees it) and a transport to the host."""
    from compiler.render.context import AGENT_CONFIG_NAME
    from compiler.render.resolve import resolve_host
    from compiler.render.roles import role_defaults

    spec = loaded.inventory.hosts[host]
    if "agent" not in spec.roles:
        raise UsageError(f"mailcfg: {host}: has no agent role")
    cfg = resolve_host(loaded.inventory, host, role_defaults(_roles(args)))
    path = f"{cfg.policy.paths.agent_config_dir.rstrip('/')}/{AGENT_CONFIG_NAME}"
    transport = open_transport(host, spec, base_dir=Path.cwd())
    if isinstance(transport, LocalTransport):
        # A local root (never "/") stands for the host's "/": the agent runs on this machine
        # with the config rendered under the root.
        path = str(transport.root / path.lstrip("/"))
    return path, transport


def cmd_unlock(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    loaded = _load(args, err)
    _hosts(loaded, [args.host])
    config, transport = _agent_transport(loaded, args, args.host)
    try:
        command = shlex.join(["mailcfg-agent", "unlock", args.address, "--config", config])
        result = transport.run(command)
    finally:
        transport.close()
    out.write(result.stdout)
    if not result.ok:
        err.write(f"{args.host}: {(result.stderr or result.stdout).strip()}\n")
        return 1
    return 0


def cmd_stats(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.stats import StatsError, format_stats, gather_stats, write_html_report

    loaded = _load(args, err)
    hosts = args.host or [
        name for name, spec in loaded.inventory.hosts.items() if "agent" in spec.roles
    ]
    _hosts(loaded, hosts)
    rows = []
    for host in hosts:
        config, transport = _agent_transport(loaded, args, host)
        try:
            rows += gather_stats([transport], args.day, args.account, agent_config=config)
        except StatsError as exc:
            print(f"mailcfg: {exc}", file=err)
            return 1
        finally:
            transport.close()
    out.write(format_stats(rows, args.format))
    if args.html:
        write_html_report(rows, args.html)
        print(f"report written to {args.html}", file=err)
    return 0


def cmd_codeowners(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.codeowners import make_codeowners

    loaded = _load(args, err)
    out.write(make_codeowners(loaded, args.inventory))
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
