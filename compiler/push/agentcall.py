"""Running `mailcfg-agent` on a host for `mailcfg unlock` and `mailcfg stats`: the options that
find the host's agent config and state as the agent sees them, and `unlock` as a per-host result.

On an SSH host the agent runs there, with the config the agent role installed and the state
that config names. A local host is a directory on this machine standing for the host's "/", so
the agent runs here: its config is the one rendered under the root, a SQLite state is the file
under the root (a Redis state is shared, so it stays as named), and the `queued` gauge is not
refreshed (`postqueue` would read this machine's queue, not the host's).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from compiler.connectors.local import LocalTransport
from compiler.connectors.transport import Transport
from compiler.push.fleet import HostResult, Outcome

AGENT = "mailcfg-agent"
_SQLITE = "sqlite:"


@dataclass(frozen=True, slots=True)
class AgentCall:
    """How `mailcfg-agent` runs on `host`: over `transport`, with `options` that name its
    config (and, on a local host, its state)."""

    host: str
    transport: Transport
    config: str
    options: tuple[str, ...]
    local: bool

    def command(self, *argv: str) -> str:
        return shlex.join([AGENT, *argv, *self.options])


def make_agent_call(host: str, transport: Transport, config: str, state: str) -> AgentCall:
    """The call of the agent of `host` whose config is at host path `config` and whose state
    DSN is `state` (both as the inventory renders them)."""
    if not isinstance(transport, LocalTransport):
        return AgentCall(host, transport, config, ("--config", config), local=False)
    config = str(transport.root / config.lstrip("/"))
    options: tuple[str, ...] = ("--config", config)
    path = state[len(_SQLITE) :].removeprefix("//") if state.startswith(_SQLITE) else ""
    if path.startswith("/"):
        # A relative SQLite path is already below the root: commands run with cwd=root.
        options += ("--state", f"{_SQLITE}//{transport.root / path.lstrip('/')}")
    return AgentCall(host, transport, config, options, local=True)


def unlock_account(call: AgentCall, address: str) -> HostResult:
    """Ask the agent to lift `address`'s sending lock: CHANGED when it did, OK when the
    account was not locked there, FAILED when the agent could not answer."""
    result = call.transport.run(call.command("unlock", address))
    lines = (result.stderr or result.stdout).strip().splitlines()
    last = lines[-1] if lines else ""
    if result.ok:
        return HostResult(call.host, Outcome.CHANGED, message=result.stdout.strip() or last)
    if result.exit_code == 1 and last.endswith("was not locked"):
        return HostResult(call.host, Outcome.OK, message=last)
    detail = f": {last}" if last else ""
    return HostResult(
        call.host,
        Outcome.FAILED,
        message=f"`{AGENT} unlock` failed (exit {result.exit_code}){detail}",
    )
