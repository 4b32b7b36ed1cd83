"""Lookup tables derived from a `HostConfig`: Postfix maps and Dovecot passwd-files.

Every table is computed here from the model, never written by hand, as sorted `(key, value)`
rows so renders are deterministic (`HostConfig.mailboxes` and `.redirects` are already sorted
by address, so they are iterated as they are). Keys and values are already restricted by
`schemas.common` (no whitespace, ':' or ',' in addresses; hashes checked by
`schemas.password`), so nothing here needs escaping. Templates only lay the rows out.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.resolve import HostConfig

Rows = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One line of Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra`.
    uid/gid/home come from the userdb's `default_fields`, so they stay empty here."""

    user: str
    password: str
    extra: tuple[str, ...] = ()

    def line(self) -> str:
        # All 8 fields even when the extras are empty: a 2-field line is a passdb-only entry
        # ("User ... is missing userdb info").
        return f"{self.user}:{self.password}::::::{' '.join(self.extra)}"


@dataclass(frozen=True, slots=True)
class Tables:
    virtual_mailbox_domains: Rows
    virtual_mailbox_maps: Rows
    virtual_alias_maps: Rows
    sender_login_maps: Rows
    passwd: tuple[PasswdEntry, ...]
    deny_imap: tuple[str, ...]
    deny_pop3: tuple[str, ...]


def make_virtual_mailbox_domains(cfg: HostConfig) -> Rows:
    return tuple((name, "OK") for name in sorted(cfg.domain_names))


def make_virtual_mailbox_maps(cfg: HostConfig) -> Rows:
    """Enabled accounts → their maildir path relative to the mail root (informational for
    Postfix: delivery goes over LMTP, the map only says which recipients exist)."""
    return tuple(
        (address, f"{address.split('@')[1]}/{address.split('@')[0]}/") for address in cfg.mailboxes
    )


def make_virtual_alias_maps(cfg: HostConfig) -> Rows:
    """Redirects (they win over a mailbox: virtual aliasing runs before mailbox delivery) and
    `postmaster@<domain>` → the host's postmaster for each served domain that declares neither
    an account nor a redirect of that name (RFC 5321 requires postmaster to exist)."""
    rows: dict[str, str] = {src: ", ".join(targets) for src, targets in cfg.redirects.items()}
    for domain in cfg.domain_names:
        address = f"postmaster@{domain}"
        if address in rows or address in cfg.mailboxes or address == cfg.postmaster:
            continue
        rows[address] = cfg.postmaster
    return tuple(sorted(rows.items()))


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
