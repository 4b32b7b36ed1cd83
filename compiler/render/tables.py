"""Lookup tables derived from a `HostConfig`: Postfix maps and Dovecot passwd-files.

Every table is computed here from the model, never written by hand, in a deterministic order
(`HostConfig.mailboxes` and `.redirects` are already sorted by address, so they are iterated as
they are). Keys and values are already restricted by `schemas.common` (no whitespace, ':' or
',' in addresses; hashes checked by `schemas.password`), so nothing here needs escaping.

Two views of the same rows: `make_table_texts` gives each table as the file body the roles
write (one line per row, built with one `join`: a template loop over 50,000 rows costs more
than the rest of a render), `make_tables` gives `(key, value)` rows for code that inspects
them. Both use the same row rules below (`maildir_of`, `quota_rule`, `passwd_line`,
`make_virtual_alias_maps`).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from compiler.render.resolve import HostConfig, mailboxes_by_domain
from schemas.domain import Account

Rows = tuple[tuple[str, str], ...]


def passwd_line(user: str, password: str, extra: str) -> str:
    """One line of Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra`.
    uid/gid/home come from the userdb's `default_fields`, so they stay empty here. All 8
    fields even when the extras are empty: a 2-field line is a passdb-only entry ("User ...
    is missing userdb info")."""
    return f"{user}:{password}::::::{extra}"


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One row of Dovecot's passwd-file (see `passwd_line`)."""

    user: str
    password: str
    extra: tuple[str, ...] = ()

    def line(self) -> str:
        return passwd_line(self.user, self.password, " ".join(self.extra))


@dataclass(frozen=True, slots=True)
class Tables:
    virtual_mailbox_domains: Rows
    virtual_mailbox_maps: Rows
    virtual_alias_maps: Rows
    sender_login_maps: Rows
    passwd: tuple[PasswdEntry, ...]
    deny_imap: tuple[str, ...]
    deny_pop3: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TableTexts:
    """Each table as its file body: one row per line, every line ending in a newline (a
    Postfix map row is `key value`)."""

    virtual_mailbox_domains: str
    virtual_mailbox_maps: str
    virtual_alias_maps: str
    sender_login_maps: str
    passwd: str
    deny_imap: str
    deny_pop3: str


def maildir_of(address: str) -> str:
    """An account's maildir relative to the mail root: `domain/local/`."""
    local, _, domain = address.partition("@")
    return f"{domain}/{local}/"


def make_virtual_mailbox_domains(cfg: HostConfig) -> Rows:
    return tuple((name, "OK") for name in sorted(cfg.domain_names))


def make_virtual_mailbox_maps(cfg: HostConfig) -> Rows:
    """Enabled accounts → their maildir path relative to the mail root (informational for
    Postfix: delivery goes over LMTP, the map only says which recipients exist)."""
    return tuple((address, maildir_of(address)) for address in cfg.mailboxes)


def make_virtual_alias_maps(cfg: HostConfig) -> Rows:
    """Redirects (they win over a mailbox: virtual aliasing runs before mailbox delivery) and
    `postmaster@<domain>` → the host's postmaster for each served domain that declares neither
    an account nor a redirect of that name (RFC 5321 requires postmaster to exist)."""
    rows: dict[str, str] = {src: ", ".join(targets) for src, targets in cfg.redirects.items()}
    rows.update(make_postmaster_aliases(cfg))
    return tuple(sorted(rows.items()))


def make_postmaster_aliases(cfg: HostConfig) -> list[tuple[str, str]]:
    """`postmaster@<domain>` → the host's postmaster, for each served domain that declares
    neither an account nor a redirect of that name, in domain order."""
    rows = []
    for domain in cfg.domain_names:
        address = f"postmaster@{domain}"
        if address in cfg.redirects or address in cfg.mailboxes or address == cfg.postmaster:
            continue
        rows.append((address, cfg.postmaster))
    return rows


def make_sender_login_maps(cfg: HostConfig) -> Rows:
    """Who may use which envelope sender after SASL login: each account only its own address
    (the Dovecot login name is the full address)."""
    return tuple((address, address) for address in cfg.mailboxes)


def quota_rule(quota: int) -> tuple[str, ...]:
    """Dovecot quota extra field for a quota in bytes; 0 means unlimited (no rule)."""
    return (f"userdb_quota_rule=*:storage={quota}B",) if quota > 0 else ()


def make_passwd(cfg: HostConfig) -> tuple[PasswdEntry, ...]:
    return tuple(
        PasswdEntry(address, account.password, quota_rule(account.quota))
        for address, account in cfg.mailboxes.items()
    )


def make_deny(cfg: HostConfig, protocol: str) -> tuple[str, ...]:
    """Accounts refused for `protocol` ("imap" | "pop3"): read by a `deny = yes` passdb whose
    file name is chosen by the service name (`%s`)."""
    return tuple(
        address for address, account in cfg.mailboxes.items() if not getattr(account, protocol)
    )


def make_tables(cfg: HostConfig) -> Tables:
    return Tables(
        virtual_mailbox_domains=make_virtual_mailbox_domains(cfg),
        virtual_mailbox_maps=make_virtual_mailbox_maps(cfg),
        virtual_alias_maps=make_virtual_alias_maps(cfg),
        sender_login_maps=make_sender_login_maps(cfg),
        passwd=make_passwd(cfg),
        deny_imap=make_deny(cfg, "imap"),
        deny_pop3=make_deny(cfg, "pop3"),
    )


def format_lines(lines: Iterable[str]) -> str:
    """Lines joined into a file body: each one newline-terminated, "" for none."""
    text = "\n".join(lines)
    return text + "\n" if text else ""


def format_map(rows: Iterable[tuple[str, str]]) -> str:
    return format_lines([f"{key} {value}" for key, value in rows])


def make_passwd_lines(accounts: Iterable[tuple[str, Account]]) -> list[str]:
    """The passwd-file line of each `(address, account)`, in the given order."""
    quota_extra: dict[int, str] = {}  # a handful of distinct quotas among all accounts
    lines = []
    for address, account in accounts:
        quota = account.quota
        extra = quota_extra.get(quota)
        if extra is None:
            extra = quota_extra[quota] = " ".join(quota_rule(quota))
        lines.append(passwd_line(address, account.password, extra))
    return lines


def make_table_texts(
    cfg: HostConfig,
    passwd: Mapping[str, str] | None = None,
    no_imap: Container[str] | None = None,
    no_pop3: Container[str] | None = None,
) -> TableTexts:
    """Every table's file body, straight from the model (no row tuples in between), lines in
    address order. The per-account rows (passwd line by address, accounts refused IMAP or
    POP3) may come ready-made (`compiler.render.fragments`); they are made here otherwise."""
    mailboxes = cfg.mailboxes
    if passwd is None or no_imap is None or no_pop3 is None:
        accounts = mailboxes_by_domain(cfg)
        passwd = dict(zip([a for a, _ in accounts], make_passwd_lines(accounts), strict=True))
        no_imap = {a for a, acc in accounts if not acc.imap}
        no_pop3 = {a for a, acc in accounts if not acc.pop3}
    return TableTexts(
        virtual_mailbox_domains=format_map(make_virtual_mailbox_domains(cfg)),
        virtual_mailbox_maps=format_lines([f"{a} {maildir_of(a)}" for a in mailboxes]),
        virtual_alias_maps=format_map(make_virtual_alias_maps(cfg)),
        sender_login_maps=format_lines([f"{a} {a}" for a in mailboxes]),
        passwd=format_lines([passwd[a] for a in mailboxes]),
        deny_imap=format_lines([a for a in mailboxes if a in no_imap]),
        deny_pop3=format_lines([a for a in mailboxes if a in no_pop3]),
    )
