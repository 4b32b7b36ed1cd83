"""Reference builders of a host's domain-sized files, written plainly from the model.

The render path (`compiler.render.fragments` and `compiler.render.join`) makes the Postfix
maps, the Dovecot passwd-file and deny files, agent.json and the autoresponder scripts from
per-domain rows, memoised and laid out by permutation. Here each is built the obvious way,
straight from a `HostConfig`, so that the tests can compare the two; nothing in `compiler/`
uses this module. The Sieve script text itself is `compiler.render.sieve`'s (tested on its own
in tests/unit/test_sieve_render.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from compiler.render.resolve import HostConfig
from compiler.render.sieve import SieveScript, make_vacation_script
from compiler.render.tables import TableTexts
from schemas.agent import AgentAccount, AgentConfig

Rows = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PasswdEntry:
    """One row of Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra`."""

    user: str
    password: str
    extra: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.user}:{self.password}::::::{' '.join(self.extra)}"


@dataclass(frozen=True)
class Tables:
    """Every table's rows, in file order."""

    virtual_mailbox_domains: Rows
    virtual_mailbox_maps: Rows
    virtual_alias_maps: Rows
    sender_login_maps: Rows
    passwd: tuple[PasswdEntry, ...]
    deny_imap: tuple[str, ...]
    deny_pop3: tuple[str, ...]


def alias_domain_rows(cfg: HostConfig) -> dict[str, str]:
    """Each served alias domain's rows: every enabled account and redirect source of the
    domain it aliases under the alias's name, and its postmaster."""
    rows = {}
    for alias, target in cfg.alias_domains.items():
        for address in [*cfg.mailboxes, *cfg.redirects, f"postmaster@{target}"]:
            local, _, domain = address.rpartition("@")
            if domain == target:
                rows[f"{local}@{alias}"] = address
    return rows


def make_tables(cfg: HostConfig) -> Tables:
    """Mailbox rows for the enabled accounts (`cfg.mailboxes` order), alias rows for the
    redirects, for each served domain's postmaster that is neither declared nor the
    host's postmaster itself, for each catch-all (`@domain target`, and each enabled
    account of its domain that is no redirect to itself) and for the alias domains
    (sorted), the served domains (sorted); sender rows for each enabled account and its
    names in alias domains (sorted)."""
    mailboxes = cfg.mailboxes
    aliases = {source: ", ".join(targets) for source, targets in cfg.redirects.items()}
    for domain in cfg.domain_names:
        postmaster = f"postmaster@{domain}"
        declared = postmaster in cfg.redirects or postmaster in mailboxes
        if not declared and postmaster != cfg.postmaster:
            aliases[postmaster] = cfg.postmaster
    for dom in cfg.domains:
        if dom.catch_all:
            aliases["@" + dom.domain] = dom.catch_all
            for address in mailboxes:
                if address.endswith("@" + dom.domain) and address not in cfg.redirects:
                    aliases[address] = address
    aliases.update(alias_domain_rows(cfg))
    senders = {address: address for address in mailboxes}
    for alias, target in cfg.alias_domains.items():
        for address in mailboxes:
            local, _, domain = address.rpartition("@")
            if domain == target:
                senders[f"{local}@{alias}"] = address
    maildirs = []
    for address in mailboxes:
        local, _, domain = address.partition("@")
        maildirs.append((address, f"{domain}/{local}/"))
    passwd = []
    for address, account in mailboxes.items():
        quota = (f"userdb_quota_rule=*:storage={account.quota}B",) if account.quota else ()
        passwd.append(PasswdEntry(address, account.password, quota))
    return Tables(
        virtual_mailbox_domains=tuple((name, "OK") for name in sorted(cfg.domain_names)),
        virtual_mailbox_maps=tuple(maildirs),
        virtual_alias_maps=tuple(sorted(aliases.items())),
        # `cfg.mailboxes` order (sorted in a resolved config), sorted with alias names.
        sender_login_maps=tuple(sorted(senders.items()) if cfg.alias_domains else senders.items()),
        passwd=tuple(passwd),
        deny_imap=tuple(a for a, account in mailboxes.items() if not account.imap),
        deny_pop3=tuple(a for a, account in mailboxes.items() if not account.pop3),
    )


def _file(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def make_table_texts(cfg: HostConfig) -> TableTexts:
    """`make_tables(cfg)` as the file bodies the roles write."""
    tables = make_tables(cfg)

    def map_file(rows: Rows) -> str:
        return _file([f"{key} {value}" for key, value in rows])

    return TableTexts(
        virtual_mailbox_domains=map_file(tables.virtual_mailbox_domains),
        virtual_mailbox_maps=map_file(tables.virtual_mailbox_maps),
        virtual_alias_maps=map_file(tables.virtual_alias_maps),
        sender_login_maps=map_file(tables.sender_login_maps),
        passwd=_file([entry.line() for entry in tables.passwd]),
        deny_imap=_file(list(tables.deny_imap)),
        deny_pop3=_file(list(tables.deny_pop3)),
    )


def make_agent_config(cfg: HostConfig) -> AgentConfig:
    """The agent's config of `cfg`, validated."""
    policy = cfg.policy
    paths = policy.paths
    logs = [paths.maillog_file or paths.mail_log]
    if paths.dovecot_log and paths.dovecot_log not in logs:
        logs.append(paths.dovecot_log)
    smtp = policy.listeners.smtp
    smtp_address = "127.0.0.1" if smtp.address in ("all", "0.0.0.0") else smtp.address
    if ":" in smtp_address:
        smtp_address = f"[{smtp_address}]"
    accounts = {
        address: AgentAccount(
            enabled=account.enabled,
            whitelist=account.whitelist,
            blacklist=account.blacklist,
            limits=cfg.limits[address],
        )
        for address, account in cfg.mailboxes.items()
    }
    return AgentConfig(
        host=cfg.name,
        hostname=cfg.spec.hostname,
        listen=f"unix:{paths.agent_socket}",
        state=policy.policy_state,
        local_domains=sorted([*cfg.domain_names, *cfg.alias_domains]),
        accounts=accounts,
        redirects={source: list(targets) for source, targets in cfg.redirects.items()},
        catch_alls={d.domain: d.catch_all for d in cfg.domains if d.catch_all},
        alias_domains=dict(cfg.alias_domains),
        global_filter=list(policy.global_filter),
        global_filter_reject_text=policy.global_filter_reject_text,
        whitelist_reject_text=policy.whitelist_reject_text,
        whitelist_notice=policy.whitelist_notice,
        whitelist_notice_text=policy.whitelist_notice_text,
        spam=policy.spam,
        default_limits=policy.limits,
        fail_action_inbound=policy.policy_fail_action_inbound,
        fail_action_outbound=policy.policy_fail_action_outbound,
        postmaster=cfg.postmaster,
        notify_smtp=f"{smtp_address}:{smtp.port}",
        logs=logs,
        postfix_config_dir=paths.postfix_config_dir,
        state_dir=paths.agent_state_dir,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(", ", ": "))


def dump_agent_config(config: AgentConfig) -> str:
    """agent.json's layout: sorted keys, one line per top-level key and one line per entry
    of a non-empty top-level mapping, each value compact JSON; the keys of features not used
    (alias domains, catch-alls) are left out."""
    data = config.model_dump(mode="json")
    lines = []
    for key in sorted(data):
        value = data[key]
        if key in ("alias_domains", "catch_alls") and not value:
            continue
        if isinstance(value, dict) and value:
            entries = [f"    {json.dumps(k)}: {_compact(value[k])}" for k in sorted(value)]
            lines.append(f"  {json.dumps(key)}: {{\n" + ",\n".join(entries) + "\n  }")
        else:
            lines.append(f"  {json.dumps(key)}: {_compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def reaching_addresses(address: str, redirects: dict[str, tuple[str, ...]]) -> list[str]:
    """Every other address whose mail ends in `address` through redirects, any hops."""
    found: set[str] = set()
    frontier = {address}
    while frontier:
        sources = {s for s, targets in redirects.items() if frontier.intersection(targets)}
        frontier = sources - found - {address}
        found |= frontier
    return sorted(found)


def make_autoresponders(cfg: HostConfig) -> list[SieveScript]:
    """The Sieve script of each enabled account with an enabled autoresponder, by address."""
    scripts = []
    for address in sorted(cfg.mailboxes):
        account = cfg.mailboxes[address]
        responder = account.autoresponder
        if responder is None or not responder.enabled:
            continue
        routes = {**cfg.redirects, **{a: (t,) for a, t in alias_domain_rows(cfg).items()}}
        aliases = reaching_addresses(address, routes)
        script = make_vacation_script(
            address, responder, aliases=aliases, whitelist=account.whitelist
        )
        scripts.append(SieveScript(address, script))
    return scripts
