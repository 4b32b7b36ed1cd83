"""The `mailcfg web` command: its options and how it serves (the app is `compiler.web`).

It also gathers the commands wired outside `cli.py` (`dns` and `doctor` from `clidns`, and
`web`), so that `cli.py` names one module for them and stays within its size budget.

`web` loads the inventory once (an invalid one is refused as by `validate`), then serves the
self-service app with waitress on `--listen` until interrupted. It speaks plain HTTP: put it
behind a TLS reverse proxy (`--behind-proxy` trusts that proxy's X-Forwarded-* headers), or
bind it to loopback only.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import IO

from compiler.clidns import DNS_COMMANDS, InventoryCommand, add_dns_commands

DEFAULT_LISTEN = "127.0.0.1:8080"


def listen_argument(text: str) -> tuple[str, int]:
    """An argparse type: `HOST:PORT` (`[IPv6]:PORT` for an IPv6 address)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def push_argument(text: str) -> tuple[str, str]:
    """An argparse type: `REMOTE:BRANCH` (a remote name or URL, a branch name)."""
    remote, sep, branch = text.rpartition(":")
    if not sep or not remote or not branch or branch.startswith("-") or remote.startswith("-"):
        raise argparse.ArgumentTypeError(f"{text!r} is not REMOTE:BRANCH")
    return remote, branch


def add_extra_commands(inventory_command: InventoryCommand) -> None:
    """Add `dns`, `doctor` and `web` through the CLI's `inventory_command`."""
    from compiler.web.secret import default_secret_path

    add_dns_commands(inventory_command)
    p = inventory_command("web", "serve the self-service web app (every change a git commit)")
    p.add_argument(
        "--listen",
        type=listen_argument,
        default=listen_argument(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to serve on (default: {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        default=default_secret_path(),
        help="session-signing secret, made on first start (default: %(default)s)",
    )
    p.add_argument(
        "--server-admin",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="an account that may act as domain admin of every domain (repeatable)",
    )
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="trust one reverse proxy's X-Forwarded-For/-Proto/-Host (client IP for throttling)",
    )
    after = p.add_mutually_exclusive_group()
    after.add_argument(
        "--apply",
        action="store_true",
        help="apply each commit to the hosts serving its domain (as `mailcfg apply --yes`)",
    )
    after.add_argument(
        "--push",
        type=push_argument,
        metavar="REMOTE:BRANCH",
        help="push each commit to this remote branch for review (never forced)",
    )
    p.add_argument("--threads", type=int, default=8, help="requests served at once")


def cmd_web(args: argparse.Namespace, out: IO[str], err: IO[str]) -> int:
    import waitress

    from compiler.web.app import WebConfig, create_app
    from compiler.web.gitstore import CommitRefused
    from compiler.web.secret import SecretError

    args.session.load()  # an invalid inventory is reported like `validate` does
    config = WebConfig(
        inventory=args.inventory,
        secret_file=args.secret_file,
        server_admins=frozenset(a.lower() for a in args.server_admin),
        behind_proxy=args.behind_proxy,
        apply=args.apply,
        push=args.push,
        cache_dir=args.cache,
        roles_dir=args.roles,
    )
    host, port = args.listen
    try:
        app = create_app(config)
        server = waitress.create_server(app, host=host, port=port, threads=args.threads)
    except (CommitRefused, SecretError, OSError) as exc:
        # Not a git working copy, an unusable secret file, a port in use: one line, no trace.
        print(f"mailcfg: web: {exc}", file=err)
        return 1
    print(f"mailcfg web: serving {args.inventory} on http://{host}:{port}/", file=err, flush=True)
    server.run()
    return 0


EXTRA_COMMANDS: dict[str, Callable[[argparse.Namespace, IO[str], IO[str]], int]] = {
    **DNS_COMMANDS,
    "web": cmd_web,
}
