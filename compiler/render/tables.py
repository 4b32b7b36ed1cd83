"""The row rules of the lookup tables: Postfix maps and Dovecot passwd-file and deny files.

Each kind of row is made by one function here (`passwd_line` with `quota_rule`,
`mailbox_row`, `sender_login_row`, `alias_row`, `make_postmaster_aliases`,
`make_catch_all_aliases`, `make_alias_domain_aliases`, `make_alias_domain_senders`,
`deny_rows`, `make_virtual_mailbox_domains`); `compiler.render.fragments` applies them to each
domain's accounts and redirects, and `compiler.render.join` lays the rows of a host's domains out as
`TableTexts`, the file bodies the roles write. Keys and values are already restricted by
`schemas.common` (no whitespace, ':' or ',' in addresses; hashes checked by
`schemas.password`), so nothing here needs escaping.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass

from compiler.render.resolve import HostConfig
from schemas.domain import Account


@dataclass(frozen=True, slots=True)
class TableTexts:
    """Each table as its file body: one row per line, every line ending in a newline (a
    Postfix map row is `key value`). Built with one `join` each: a template loop over
    50,000 rows costs more than the rest of a render."""

    virtual_mailbox_domains: str
    virtual_mailbox_maps: str
    virtual_alias_maps: str
    sender_login_maps: str
    passwd: str
    deny_imap: str
    deny_pop3: str


def passwd_line(user: str, password: str, extra: str) -> str:
    """One line of Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra`.
    uid/gid/home come from the userdb's `default_fields`, so they stay empty here. All 8
    fields even when the extras are empty: a 2-field line is a passdb-only entry ("User ...
    is missing userdb info")."""
    return f"{user}:{password}::::::{extra}"


def quota_rule(quota: int) -> tuple[str, ...]:
    """Dovecot quota extra field for a quota in bytes; 0 means unlimited (no rule)."""
    return (f"userdb_quota_rule=*:storage={quota}B",) if quota > 0 else ()


def make_passwd_lines(accounts: Iterable[tuple[str, Account]]) -> list[str]:
    """The passwd-file line of each `(address, account)`, in the given order: its password
    hash and its quota rule as the extra fields."""
    quota_extra: dict[int, str] = {}  # a handful of distinct quotas among all accounts
    lines = []
    for address, account in accounts:
        quota = account.quota
        extra = quota_extra.get(quota)
        if extra is None:
            extra = quota_extra[quota] = " ".join(quota_rule(quota))
        lines.append(passwd_line(address, account.password, extra))
    return lines


def maildir_of(address: str) -> str:
    """An account's maildir relative to the mail root: `domain/local/`."""
    local, _, domain = address.partition("@")
    return f"{domain}/{local}/"


def mailbox_row(address: str) -> str:
    """virtual_mailbox_maps: an enabled account → its maildir relative to the mail root
    (informational for Postfix: delivery goes over LMTP, the map only says which recipients
    exist)."""
    return f"{address} {maildir_of(address)}"


def sender_login_row(address: str, login: str | None = None) -> str:
    """sender_login_maps: after SASL login each account may use its own address only as the
    envelope sender (the Dovecot login name is the full address), and its name in an alias
    domain (`login`: the account's address)."""
    return f"{address} {login or address}"


def alias_row(source: str, targets: Sequence[str]) -> str:
    """virtual_alias_maps: a redirect (it wins over a mailbox: virtual aliasing runs before
    mailbox delivery)."""
    return f"{source} {', '.join(targets)}"


def make_postmaster_aliases(cfg: HostConfig) -> list[tuple[str, tuple[str, ...]]]:
    """`postmaster@<domain>` → the host's postmaster, for each served domain that declares
    neither an account nor a redirect of that name (RFC 5321 requires postmaster to exist),
    in domain order, as `(source, targets)` for `alias_row`."""
    rows: list[tuple[str, tuple[str, ...]]] = []
    for domain in cfg.domain_names:
        address = f"postmaster@{domain}"
        if address in cfg.redirects or address in cfg.mailboxes or address == cfg.postmaster:
            continue
        rows.append((address, (cfg.postmaster,)))
    return rows


def make_catch_all_aliases(
    domain: str, target: str, accounts: Iterable[str], redirects: Container[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """A catch-all's rows for `alias_row`: `@domain` → `target`, and each enabled account
    of the domain (`accounts`, in order) that is no redirect source to itself. Virtual
    aliasing runs before the mailbox lookup, so without its identity row an account's mail
    would go to the catch-all too; a redirect keeps its own row, and an address that maps to
    itself is delivered there."""
    rows: list[tuple[str, tuple[str, ...]]] = [(f"@{domain}", (target,))]
    rows += [(a, (a,)) for a in accounts if a not in redirects]
    return rows


def make_alias_domain_aliases(
    alias: str, target: str, addresses: Iterable[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """An alias domain's rows for `alias_row`: the same name in `alias` → each of
    `addresses` (the enabled accounts and redirect sources of the domain `target`, in
    order), then postmaster when they lack it. One row per address, no `@alias @target`
    wildcard: an unknown name of the alias domain stays unknown, rejected at RCPT."""
    rows: list[tuple[str, tuple[str, ...]]] = []
    has_postmaster = False
    for address in addresses:
        local = address.rpartition("@")[0]
        has_postmaster = has_postmaster or local == "postmaster"
        rows.append((f"{local}@{alias}", (address,)))
    if not has_postmaster:
        rows.append((f"postmaster@{alias}", (f"postmaster@{target}",)))
    return rows


def make_alias_domain_senders(alias: str, accounts: Iterable[str]) -> list[str]:
    """sender_login_maps rows of an alias domain: each enabled account of the domain it
    aliases (`accounts`, in order) may send as its name in `alias`."""
    return [sender_login_row(f"{a.rpartition('@')[0]}@{alias}", a) for a in accounts]


def deny_rows(accounts: Iterable[tuple[str, Account]], protocol: str) -> list[str]:
    """The accounts refused `protocol` ("imap" | "pop3"), in the given order: read by a
    `deny = yes` passdb whose file name is chosen by the service name (`%s`)."""
    return [address for address, account in accounts if not getattr(account, protocol)]


def make_virtual_mailbox_domains(cfg: HostConfig) -> list[str]:
    """virtual_mailbox_domains: every served domain, sorted."""
    return [f"{name} OK" for name in sorted(cfg.domain_names)]


def format_lines(lines: Iterable[str]) -> str:
    """Lines joined into a file body: each one newline-terminated, "" for none."""
    text = "\n".join(lines)
    return text + "\n" if text else ""
