"""`mailcfg-agent`: thin command line over the runtime (argument parsing and output only).

Subcommands: `serve` (policy service + log follower), `unlock ADDRESS`, `locks`, `ping`; the
log follower's commands (`stats`, `ingest`, `follow`) come from `runtime.logs.commands`. Another
module adds commands the same way: a function registering subparsers with
`set_defaults(func=...)` where `func(args) -> int` is the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from runtime.config import ConfigError, load_agent_config
from runtime.state.open import StoreError, open_store
from schemas.agent import DEFAULT_AGENT_CONFIG, AgentConfig

if TYPE_CHECKING:
    import asyncio
    import socket

    from runtime.state.limits import LimitStore

# The policy service's modules (asyncio, the policy engine, its checks and resolvers) are
# imported by the commands that use them: `ingest` and `stats` start without them.

log = logging.getLogger("mailcfg-agent")
Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


async def serve_policy(
    config_path: str,
    listen: str | None,
    store: LimitStore,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[], None] | None = None,
    max_connections: int | None = None,
    on_hangup: Callable[[Callable[[], None] | None], None] | None = None,
) -> None:
    """Run the policy service until `stop` is set, reloading `config_path` when it changes
    (and when `on_hangup`, say `Daemon.on_hangup`, calls the reload it was given). The caller
    owns `store` (so the log follower can share it in the same process). A reload passes the
    same checks as a start (`prepare_policy`) or the current config stays."""
    import asyncio

    from runtime.config import ConfigWatcher, prepare_policy
    from runtime.daemon import connection_cap
    from runtime.policy.connection import run_policy_service
    from runtime.policy.service import PolicyService

    config = load_agent_config(config_path)
    service = PolicyService(
        prepare_policy(config), store, max_connections=max_connections or connection_cap()
    )

    def reload(new: AgentConfig) -> None:
        policy = prepare_policy(new)
        for name in ("listen", "state", "logs", "host", "state_dir"):
            if getattr(new, name) != getattr(config, name):
                log.warning("%s changed in %s: takes effect at the next restart", name, config_path)
        service.set_policy(policy)

    watcher = ConfigWatcher(config_path, reload, asyncio.get_running_loop())
    if on_hangup is not None:
        on_hangup(watcher.schedule)
    try:
        await run_policy_service(listen or config.listen, service, stop, on_listening=on_listening)
    finally:
        if on_hangup is not None:
            on_hangup(None)
        watcher.close()


def _serve(args: argparse.Namespace) -> int:
    import asyncio
    import gc

    from runtime.daemon import Daemon
    from runtime.policy.connection import new_event_loop

    config = load_agent_config(args.config)
    store = open_store(args.state or config.state, host=config.host)
    daemon = Daemon.from_environ()
    listen = args.listen or config.listen

    async def main() -> None:
        helpers: dict[str, Callable[[], Awaitable[None]]] = {}
        if config.logs and not args.no_follow:
            from runtime.logs.ingest import follow_logs

            # One daemon, one store: the follower's log-driven limits and the policy
            # service's limits count in the same state. The follower is supervised: its
            # failures are logged and it is restarted; the policy service keeps answering.
            helpers["log follower"] = lambda: follow_logs(config, store, daemon.stop)
        service = serve_policy(
            args.config,
            args.listen,
            store,
            daemon.stop,
            on_listening=lambda: daemon.ready(f"answering on {listen}"),
            on_hangup=daemon.on_hangup,
        )
        await daemon.run(service, helpers)

    try:
        # What is loaded by now (modules, config) lives as long as the daemon: out of the
        # collector's sight, full collections stay short and don't show as latency spikes.
        gc.freeze()
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(main())
    finally:
        store.close()
    return 0


def _unlock(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    store = open_store(args.state or config.state, host=config.host)
    try:
        address = args.address.lower()
        if store.unlock(address):
            print(f"unlocked {address}")
            return 0
        print(f"{address} was not locked", file=sys.stderr)
        return 1
    finally:
        store.close()


def _locks(args: argparse.Namespace) -> int:
    config = load_agent_config(args.config)
    store = open_store(args.state or config.state, host=config.host)
    try:
        locks = store.locks()
    finally:
        store.close()
    for account, reason in locks.items():
        print(f"{account}\t{reason}")
    if not locks:
        # On stderr: a script reading the list gets an empty one.
        print("no locked accounts", file=sys.stderr)
    return 0


# A question any policy service can answer without side effects: not a local recipient.
_PING = (
    b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n"
    b"client_address=127.0.0.1\nsender=\nrecipient=ping@mailcfg.invalid\n\n"
)


def _open_policy_socket(listen: str, timeout: float) -> socket.socket:
    import socket

    from runtime.policy.connection import parse_listen

    address = parse_listen(listen)
    if address.kind == "unix":
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(timeout)
        sock.connect(address.where)
        return sock
    return socket.create_connection((address.where, address.port), timeout=timeout)


def _ping(args: argparse.Namespace) -> int:
    """Ask the running policy service one question (the apply engine's verify step)."""
    config = load_agent_config(args.config)
    listen = args.listen or config.listen
    deadline = time.monotonic() + args.wait
    while True:
        try:
            with _open_policy_socket(listen, timeout=10) as sock:
                sock.sendall(_PING)
                answer = sock.recv(4096)
            break
        except OSError as exc:
            if time.monotonic() >= deadline:
                print(f"mailcfg-agent: no policy service on {listen}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.2)
    if not answer.startswith(b"action="):
        print(f"mailcfg-agent: {listen} answered {answer[:200]!r}", file=sys.stderr)
        return 1
    print(f"{listen}: {answer.decode(errors='replace').strip()}")
    return 0


def add_policy_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            default=DEFAULT_AGENT_CONFIG,
            help="agent config (default: %(default)s, where the agent role installs it)",
        )
        p.add_argument("--state", help="state DSN (default: the config's `state`)")

    p = sub.add_parser("serve", help="run the Postfix policy service and the log follower")
    common(p)
    p.add_argument("--listen", help="unix:PATH or tcp:HOST:PORT (default: the config's)")
    p.add_argument(
        "--no-follow", action="store_true", help="policy service only (do not follow the logs)"
    )
    p.set_defaults(func=_serve)
    p = sub.add_parser("unlock", help="lift the sending lock of an account")
    p.add_argument("address")
    common(p)
    p.set_defaults(func=_unlock)
    p = sub.add_parser("ping", help="ask the running policy service one question")
    common(p)
    p.add_argument("--listen", help="unix:PATH or tcp:HOST:PORT (default: the config's)")
    p.add_argument("--wait", type=float, default=0.0, help="retry for up to S seconds")
    p.set_defaults(func=_ping)
    p = sub.add_parser("locks", help="list locked accounts and why")
    common(p)
    p.set_defaults(func=_locks)


def _registrars() -> list[Registrar]:
    regs: list[Registrar] = [add_policy_parsers]
    with contextlib.suppress(ImportError):
        from runtime.logs.commands import add_parsers

        regs.append(add_parsers)
    return regs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mailcfg-agent", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for register in _registrars():
        register(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return int(args.func(args))
    except (ConfigError, StoreError, ValueError, OSError) as exc:
        print(f"mailcfg-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
