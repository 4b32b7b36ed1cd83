"""The template context of a host: what role templates, file paths and commands may use.

One place computes every derived value (tables, listener addresses, policy hooks, agent paths)
so that templates only lay text out and `compiler.roles` formats commands from the same
resolved paths the files were rendered with.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from compiler.agentconfig import (
    SharedAgentText,
    host_port,
    make_shared_agent_text,
    probe_address,
    render_agent_config,
)
from compiler.fragments import DomainFragment, FragmentCache, make_fragment
from compiler.resolve import HostConfig, mailboxes_by_domain
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


def make_autoresponders(
    cfg: HostConfig, addresses: Iterable[str] | None = None
) -> list[SieveScript]:
    """Sieve scripts of enabled accounts whose autoresponder is enabled, by address.
    `addresses` are those accounts if the caller knows them already (any order)."""
    mailboxes = cfg.mailboxes
    if addresses is None:
        addresses = [
            address
            for address, account in mailboxes_by_domain(cfg)
            if account.autoresponder is not None and account.autoresponder.enabled
        ]
    reverse = invert_redirects(cfg.redirects)
    scripts = []
    for address in sorted(addresses):
        account = mailboxes[address]
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

    mailboxes: dict[str, Account]
    redirects: dict[str, tuple[str, ...]]
    domain_names: tuple[str, ...]
    postmaster: str
    tables: TableTexts
    autoresponders: tuple[SieveScript, ...]
    agent_text: SharedAgentText

    def serves(self, cfg: HostConfig) -> bool:
        """Whether this data is `make_domain_set_data(cfg)`: equal accounts and redirects in
        the same order, names and postmaster (hosts resolved together share the dicts)."""
        return (
            self.postmaster == cfg.postmaster
            and self.domain_names == cfg.domain_names
            and _same_items(self.mailboxes, cfg.mailboxes)
            and _same_items(self.redirects, cfg.redirects)
        )


def _same_items(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a is b or (a == b and list(a) == list(b))


@dataclass(slots=True)
class DomainSetCache:
    """Domain-derived data (tables, autoresponder scripts, agent.json account lines) made
    once per distinct set of served domains, for several hosts rendered in one run: hosts
    usually serve the same domains under different policies, and these are the costly parts
    of a render. A hit renders exactly what a miss would (`DomainSetData.serves`).
    `fragments` gives each domain's rows (from disk when cached)."""

    fragments: FragmentCache | None = None
    entries: list[DomainSetData] = field(default_factory=list)

    def get(self, cfg: HostConfig) -> DomainSetData:
        for entry in self.entries:
            if entry.serves(cfg):
                return entry
        entry = make_domain_set_data(cfg, self.fragments)
        self.entries.append(entry)
        return entry


def _fragments_of(cfg: HostConfig, cache: FragmentCache | None) -> list[DomainFragment]:
    """The rows of `cfg`'s mailboxes as fragments: one per served domain from `cache`, or
    one for all mailboxes read in declaration order. The cached ones are used only if they
    name exactly the host's mailboxes (always so for a host of the cache's inventory)."""
    mailboxes = cfg.mailboxes
    if cache is not None:
        fragments = [cache.get(domain) for domain in cfg.domains]
        names = [a for f in fragments for a in f.addresses]
        if len(names) == len(mailboxes) and all(map(mailboxes.__contains__, names)):
            return fragments
    return [make_fragment(mailboxes_by_domain(cfg))]


def make_domain_set_data(cfg: HostConfig, cache: FragmentCache | None = None) -> DomainSetData:
    passwd: dict[str, str] = {}
    before: dict[str, str] = {}
    after: dict[str, str] = {}
    no_imap: set[str] = set()
    no_pop3: set[str] = set()
    responders: list[str] = []
    for fragment in _fragments_of(cfg, cache):
        passwd.update(zip(fragment.addresses, fragment.passwd, strict=True))
        before.update(zip(fragment.addresses, fragment.agent_before, strict=True))
        after.update(zip(fragment.addresses, fragment.agent_after, strict=True))
        no_imap.update(fragment.no_imap)
        no_pop3.update(fragment.no_pop3)
        responders.extend(fragment.responders)
    return DomainSetData(
        mailboxes=cfg.mailboxes,
        redirects=cfg.redirects,
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=make_table_texts(cfg, passwd, no_imap, no_pop3),
        autoresponders=tuple(make_autoresponders(cfg, responders)),
        agent_text=make_shared_agent_text(cfg, before, after),
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
    context["agent_json"] = (
        render_agent_config(cfg, derived.agent_text) if context["has_agent"] else ""
    )
    return context
