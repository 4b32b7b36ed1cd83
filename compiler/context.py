"""The template context of a host: what role templates, file paths and commands may use.

One place computes every derived value (tables, listener addresses, policy hooks, agent paths)
so that templates only lay text out and `compiler.roles` formats commands from the same
resolved paths the files were rendered with.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from compiler.agentconfig import host_port, probe_address, render_agent_config
from compiler.resolve import HostConfig
from compiler.sieve import invert_redirects, make_vacation_script, reaching_addresses
from compiler.tables import TableTexts, make_table_texts
from schemas.domain import Account
from schemas.inventory import Role
from schemas.policy import FailAction, Listener

POSTFIX_MAPS = ("virtual_mailbox_domains", "virtual_mailbox_maps", "virtual_alias_maps",
                "sender_login_maps")  # fmt: skip
AGENT_CONFIG_NAME = "agent.json"
# Policy service request limits. Postfix 3.7 answers `default_action` once they are used up,
# also when the socket does not exist (agent down): try_limit attempts, 1 s apart, then the
# fail-safe action (tests/e2e/test_mailflow.py shows both DUNNO and DEFER_IF_PERMIT).
POLICY_TIMEOUT = "10s"
POLICY_TRY_LIMIT = 2


def postfix_inet(listener: Listener) -> str:
    """master.cf service name of an inet listener: `port`, `addr:port` or `[v6]:port`."""
    if listener.address in ("all", "*"):
        return str(listener.port)
    address = f"[{listener.address}]" if ":" in listener.address else listener.address
    return f"{address}:{listener.port}"


def dovecot_address(listener: Listener) -> str:
    return "*, ::" if listener.address == "all" else listener.address


def dovecot_port(listener: Listener) -> int:
    """Port 0 switches a Dovecot inet_listener off."""
    return listener.port if listener.enabled else 0


def make_policy_hook(socket: str, fail_action: FailAction) -> str:
    return (
        f"check_policy_service {{ unix:{socket}, default_action={fail_action.value}, "
        f"timeout={POLICY_TIMEOUT}, try_limit={POLICY_TRY_LIMIT} }}"
    )


def _first_enabled(*listeners: Listener) -> tuple[str, int] | None:
    for listener in listeners:
        if listener.enabled:
            return probe_address(listener), listener.port
    return None


@dataclass(frozen=True, slots=True)
class SieveScript:
    """An account's autoresponder script, run by Dovecot's LMTP before delivery."""

    address: str
    script: str


def make_autoresponders(cfg: HostConfig) -> list[SieveScript]:
    """Sieve scripts of enabled accounts whose autoresponder is enabled, by address."""
    scripts = []
    reverse = invert_redirects(cfg.redirects)
    for address, account in cfg.mailboxes.items():
        responder = account.autoresponder
        if responder is None or not responder.enabled:
            continue
        script = make_vacation_script(
            address,
            responder,
            aliases=reaching_addresses(address, reverse),
            whitelist=account.whitelist,
        )
        scripts.append(SieveScript(address, script))
    return scripts


@dataclass(frozen=True, slots=True)
class DomainSetData:
    """What a host's files derive from its served domains alone (and its postmaster)."""

    mailboxes: tuple[tuple[str, Account], ...]
    redirects: tuple[tuple[str, tuple[str, ...]], ...]
    domain_names: tuple[str, ...]
    postmaster: str
    tables: TableTexts
    autoresponders: tuple[SieveScript, ...]


@dataclass(slots=True)
class DomainSetCache:
    """Domain-derived data (tables, autoresponder scripts) computed once per distinct set of
    served domains, for several hosts rendered in one run: hosts usually serve the same
    domains under different policies, and these are the costly parts of a render.
    An entry is reused only for a host with equal accounts, redirects (in the same order),
    domain names and postmaster, so a hit renders exactly what a miss would."""

    entries: list[DomainSetData] = field(default_factory=list)

    def get(self, cfg: HostConfig) -> DomainSetData:
        mailboxes = tuple(cfg.mailboxes.items())
        redirects = tuple(cfg.redirects.items())
        for entry in self.entries:
            if (
                entry.postmaster == cfg.postmaster
                and entry.domain_names == cfg.domain_names
                and entry.mailboxes == mailboxes
                and entry.redirects == redirects
            ):
                return entry
        entry = make_domain_set_data(cfg)
        self.entries.append(entry)
        return entry


def make_domain_set_data(cfg: HostConfig) -> DomainSetData:
    return DomainSetData(
        mailboxes=tuple(cfg.mailboxes.items()),
        redirects=tuple(cfg.redirects.items()),
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=make_table_texts(cfg),
        autoresponders=tuple(make_autoresponders(cfg)),
    )


def make_base_context(cfg: HostConfig) -> dict[str, Any]:
    """The context without the account-sized parts (tables, agent config, autoresponders):
    enough for role.yml paths and activation commands, cheap for any inventory size."""
    policy = cfg.policy
    paths = policy.paths
    ls = policy.listeners
    has_agent = Role.AGENT in cfg.spec.roles
    protocols = []
    if ls.imap.enabled or ls.imaps.enabled:
        protocols.append("imap")
    if ls.pop3.enabled or ls.pop3s.enabled:
        protocols.append("pop3")
    protocols.append("lmtp")
    socket_dir = posixpath.dirname(paths.agent_socket)
    runtime_directory = socket_dir[len("/run/") :] if socket_dir.startswith("/run/") else None
    state_directory = (
        paths.agent_state_dir[len("/var/lib/") :]
        if paths.agent_state_dir.startswith("/var/lib/")
        else None
    )
    rw_paths = [] if state_directory else [paths.agent_state_dir]
    if runtime_directory is None:
        rw_paths.append(socket_dir)
    return {
        "cfg": cfg,
        "policy": policy,
        "paths": paths,
        "ls": ls,
        "maps": POSTFIX_MAPS,
        "has_agent": has_agent,
        "inbound_policy": make_policy_hook(paths.agent_socket, policy.policy_fail_action_inbound),
        "outbound_policy": make_policy_hook(paths.agent_socket, policy.policy_fail_action_outbound),
        "extra_main": sorted(policy.postfix_main.items()),
        "dovecot_protocols": protocols,
        "smtp_probe": _first_enabled(ls.smtp, ls.submission, ls.submission_alt),
        "imap_probe": _first_enabled(ls.imap, ls.pop3),
        "agent_config_path": posixpath.join(paths.agent_config_dir, AGENT_CONFIG_NAME),
        "runtime_directory": runtime_directory,
        "state_directory": state_directory,
        "agent_rw_paths": rw_paths,
        "smtp_submit": host_port(*(_first_enabled(ls.smtp) or ("127.0.0.1", 25))),
        "inet": postfix_inet,
        "address": dovecot_address,
        "port": dovecot_port,
    }


def make_context(cfg: HostConfig, cache: DomainSetCache | None = None) -> dict[str, Any]:
    """The full template context of `cfg`; `cache` shares domain-derived data between hosts."""
    derived = cache.get(cfg) if cache is not None else make_domain_set_data(cfg)
    context = make_base_context(cfg)
    context["tables"] = derived.tables
    context["autoresponders"] = derived.autoresponders
    context["agent_json"] = render_agent_config(cfg) if context["has_agent"] else ""
    return context
