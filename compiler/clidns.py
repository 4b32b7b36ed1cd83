"""The `mailcfg dns` and `mailcfg doctor` commands: their options and output (the records are
`tools.dnsrecords`', the checks `tools.doctor`'s).

`dns` prints zone lines (notes as comments) or a JSON list of records (notes on stderr);
`doctor` prints one line per check, or one JSON document, errors included, and exits 1 when
a check failed (warnings pass).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from compiler import cliout
from schemas.hostvalues import check_nameserver

if TYPE_CHECKING:
    from compiler.tools.dnsrecords import DnsPlan

InventoryCommand = Callable[..., argparse.ArgumentParser]


def nameserver_argument(text: str) -> str:
    """An argparse type: a DNS server by address, `IP[:PORT]` or `[IPv6]:PORT`."""
    try:
        return check_nameserver(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_dns_commands(inventory_command: InventoryCommand) -> None:
    """Add `dns` and `doctor` through the CLI's `inventory_command`."""
    p = inventory_command("dns", "print the DNS records the domains and hosts need", ["--host"])
    p.add_argument("--format", choices=("zone", "json"), default="zone", help="output format")
    p.add_argument(
        "--mta-sts-policy", metavar="DOMAIN", help="print only DOMAIN's mta-sts.txt policy file"
    )
    add_offline_option(p)
    p = inventory_command("doctor", "check the live DNS and port 25 against them", ["--host"])
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--resolver",
        type=nameserver_argument,
        metavar="IP[:PORT]",
        help="ask this DNS server (default: the system's)",
    )
    p.add_argument("--no-smtp", action="store_true", help="skip the port 25 STARTTLS check")
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds per DNS query or SMTP connection"
    )
    add_offline_option(p)


def add_offline_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        help="do not ask the signing hosts for their DKIM keys (one observe call each)",
    )


def dns_plan_of(args: argparse.Namespace) -> DnsPlan:
    """The records, with the DKIM keys the signing hosts hold unless `--offline`."""
    session = args.session
    if args.offline or getattr(args, "mta_sts_policy", None):
        plan: DnsPlan = session.dns_plan(args.host)
        return plan
    from compiler.push.dkimobserve import observed_dns_plan
    from compiler.render.roles import role_defaults

    return observed_dns_plan(
        session.load().inventory,
        role_defaults(session.roles()),
        session.hosts(args.host),
        session.open_host,
    )


def cmd_dns(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    from compiler.tools.dnsrecords import format_json, format_zone, mta_sts_policy_of

    plan = dns_plan_of(args)
    if args.mta_sts_policy:
        out.write(mta_sts_policy_of(plan, args.mta_sts_policy))
    elif args.format == "json":
        out.write(format_json(plan))
        for note in plan.notes:
            print(f"mailcfg: note: {note}", file=err)
    else:
        out.write(format_zone(plan))
    return 0


def cmd_doctor(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    """A user error (invalid inventory, unknown host) is reported on stderr and, with
    `--format json`, in the document's `errors`."""
    from compiler.tools.doctor import (
        DoctorOptions,
        doctor_exit_code,
        format_checks,
        format_checks_json,
        run_doctor,
    )

    options = DoctorOptions(resolver=args.resolver, timeout=args.timeout, smtp=not args.no_smtp)
    try:
        checks = run_doctor(dns_plan_of(args), options)
    except Exception as exc:
        reported = cliout.report_error(exc, err) if args.format == "json" else None
        if reported is None:
            raise
        out.write(format_checks_json([], reported[1]))
        return reported[0]
    out.write(format_checks_json(checks) if args.format == "json" else format_checks(checks))
    return doctor_exit_code(checks)


DNS_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str], IO[str]], int]] = {
    "dns": cmd_dns,
    "doctor": cmd_doctor,
}
