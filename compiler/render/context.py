"""The template context of a host: what role templates, file paths and commands may use.

One place computes every derived value (tables, listener addresses, policy hooks, agent paths)
so that templates only lay text out and `compiler.render.roles` formats commands from the same
resolved paths the files were rendered with.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any, TypeVar

from compiler.render.agentconfig import (
    SharedAgentText,
    host_port,
    make_shared_agent_text,
    probe_address,
    render_agent_config,
)
from compiler.render.fragments import DomainFragment, FragmentCache
from compiler.render.resolve import HostConfig, mailboxes_by_domain
from compiler.render.sieve import invert_redirects, make_vacation_script, reaching_addresses
from compiler.render.tables import (
    TableTexts,
    format_lines,
    format_map,
    make_postmaster_aliases,
    make_table_texts,
    make_virtual_mailbox_domains,
)
from schemas.domain import Account
from schemas.inventory import Role
from schemas.policy import FailAction, Listener

T = TypeVar("T")
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
    if listener.address == "all":
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
class ExternalSenderClass:
    """A served domain's `external_senders` entry as main.cf lays it out: a restriction class
    `name` that permits a sender of `domain` when the client is in one of `networks`."""

    name: str
    domain: str
    networks: tuple[str, ...]


def make_external_senders(cfg: HostConfig) -> list[ExternalSenderClass]:
    """The `external_senders` entries of the domains `cfg` serves (others mean nothing on
    this host: it refuses no sender of theirs), by domain, one restriction class each."""
    served = set(cfg.domain_names)
    entries = sorted(
        (e for e in cfg.policy.external_senders if e.domain in served), key=attrgetter("domain")
    )
    return [
        ExternalSenderClass(f"mailcfg_external_senders_{i}", entry.domain, tuple(entry.networks))
        for i, entry in enumerate(entries, start=1)
    ]


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


def make_domain_set_data(cfg: HostConfig, cache: FragmentCache | None = None) -> DomainSetData:
    """The domain-derived data of `cfg`: put together from `cache`'s per-domain fragments
    when they cover exactly the host's mailboxes and redirects (always so for a host of the
    cache's inventory), else made from the model."""
    if cache is not None:
        joined = _join_fragments(cfg, [cache.get(domain) for domain in cfg.domains])
        if joined is not None:
            return joined
    return DomainSetData(
        mailboxes=cfg.mailboxes,
        redirects=cfg.redirects,
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=make_table_texts(cfg),
        autoresponders=tuple(make_autoresponders(cfg)),
        agent_text=make_shared_agent_text(cfg),
    )


def _positions(names: Sequence[str], wanted: Iterable[str], count: int) -> list[int] | None:
    """Where each of `wanted` (`count` names) is in `names`, or None unless both hold the
    same distinct names."""
    index = dict(zip(names, range(len(names)), strict=True))
    if not len(index) == len(names) == count:
        return None
    try:
        return list(map(index.__getitem__, wanted))
    except KeyError:
        return None


def _column(fragments: Sequence[DomainFragment], name: str) -> list[str]:
    return list(chain.from_iterable(getattr(f, name) for f in fragments))


def _pick(column: Sequence[T], order: Sequence[int]) -> list[T]:
    return list(map(column.__getitem__, order))


def _join_fragments(cfg: HostConfig, fragments: Sequence[DomainFragment]) -> DomainSetData | None:
    """`make_domain_set_data` from fragments: each row list laid out in address order by
    one permutation (no per-account work but a lookup), or None if the fragments do not
    name exactly `cfg`'s mailboxes and redirects."""
    mailboxes, redirects = cfg.mailboxes, cfg.redirects
    addresses = _column(fragments, "addresses")
    order = _positions(addresses, mailboxes, len(mailboxes))
    by_source = _positions(_column(fragments, "sources"), redirects, len(redirects))
    if order is None or by_source is None:
        return None
    sorted_addresses = sorted(mailboxes)
    if sorted_addresses == list(mailboxes):
        agent_order = order
    else:  # a hand-built config: tables follow its order, agent.json is sorted
        agent_order = _pick(
            order, _positions(list(mailboxes), sorted_addresses, len(mailboxes)) or []
        )
    sorted_sources = sorted(redirects)
    if sorted_sources == list(redirects):
        agent_by_source = by_source
    else:
        positions = _positions(list(redirects), sorted_sources, len(redirects)) or []
        agent_by_source = _pick(by_source, positions)
    no_imap = set(_column(fragments, "no_imap"))
    no_pop3 = set(_column(fragments, "no_pop3"))
    tables = TableTexts(
        virtual_mailbox_domains=format_map(make_virtual_mailbox_domains(cfg)),
        virtual_mailbox_maps=format_lines(_pick(_column(fragments, "mailbox_rows"), order)),
        virtual_alias_maps=_alias_map_text(cfg, _pick(_column(fragments, "alias_rows"), by_source)),
        sender_login_maps=format_lines(_pick(_column(fragments, "sender_rows"), order)),
        passwd=format_lines(_pick(_column(fragments, "passwd"), order)),
        deny_imap=format_lines([a for a in mailboxes if a in no_imap] if no_imap else []),
        deny_pop3=format_lines([a for a in mailboxes if a in no_pop3] if no_pop3 else []),
    )
    agent_redirects = _pick(_column(fragments, "agent_redirects"), agent_by_source)
    agent_text = SharedAgentText(
        addresses=tuple(sorted_addresses),
        before=tuple(_pick(_column(fragments, "agent_before"), agent_order)),
        after=tuple(_pick(_column(fragments, "agent_after"), agent_order)),
        redirects=",\n".join(agent_redirects),
    )
    return DomainSetData(
        mailboxes=mailboxes,
        redirects=redirects,
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=tables,
        autoresponders=tuple(_join_autoresponders(cfg, fragments)),
        agent_text=agent_text,
    )


def _alias_map_text(cfg: HostConfig, redirect_rows: list[str]) -> str:
    """`make_virtual_alias_maps` as text, from the redirect rows in `cfg.redirects` order."""
    keys = list(cfg.redirects)
    rows = list(redirect_rows)
    for key, value in make_postmaster_aliases(cfg):
        keys.append(key)
        rows.append(f"{key} {value}")
    if keys != sorted(keys):
        rows = _pick(rows, sorted(range(len(keys)), key=keys.__getitem__))
    return format_lines(rows)


def _join_autoresponders(cfg: HostConfig, fragments: Sequence[DomainFragment]) -> list[SieveScript]:
    """`make_autoresponders(cfg)` from the fragments' scripts. A script's aliases come from
    its own domain's redirects unless a redirect of another served domain leads into that
    domain: only then are they worked out over all redirects, and the script made again if
    they differ (every path into a domain from outside passes such a redirect)."""
    entered = {
        t.rpartition("@")[2] for f in fragments if f.outside_targets for t in f.outside_targets
    }
    mailboxes = cfg.mailboxes
    reverse: dict[str, list[str]] | None = None
    scripts = []
    for domain, fragment in zip(cfg.domains, fragments, strict=True):
        reached = domain.domain in entered
        for responder in fragment.responders:
            script = responder.script
            if reached:
                if reverse is None:
                    reverse = invert_redirects(cfg.redirects)
                aliases = reaching_addresses(responder.address, reverse)
                if tuple(aliases) != responder.aliases:
                    account = mailboxes[responder.address]
                    assert account.autoresponder is not None
                    script = make_vacation_script(
                        responder.address,
                        account.autoresponder,
                        aliases=aliases,
                        whitelist=account.whitelist,
                    )
            scripts.append(SieveScript(responder.address, script))
    scripts.sort(key=attrgetter("address"))
    return scripts


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
        "external_senders": make_external_senders(cfg),
        "dovecot_protocols": protocols,
        # Every plain SMTP listener: each smtpd reads its own -o overrides only when a client
        # connects, so a bad submission-only setting shows only on 587/2525.
        "smtp_probes": [
            (probe_address(listener), listener.port)
            for listener in (ls.smtp, ls.submission, ls.submission_alt)
            if listener.enabled
        ],
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
