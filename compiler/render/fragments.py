"""Per-domain render fragments: what a host's domain-sized files take from one domain alone.

A fragment holds a domain's ready-made rows, each made by its row rule (`compiler.render.tables`,
`.agentconfig`, `.sieve`): for its enabled accounts (declaration order) the Dovecot passwd
line, the virtual_mailbox_maps and sender_login_maps rows, the agent.json entry split around
its limits, the accounts refused IMAP or POP3; for its redirects (declaration order) the
virtual_alias_maps row and the agent.json entry; for its catch-all, if any, the
virtual_alias_maps rows (`tables.make_catch_all_aliases`); and the Sieve script of each enabled
autoresponder, made with the aliases that reach it through the fragment's own redirects
(`compiler.render.join` makes it again when a redirect of another fragment leads into the
domain). `make_fragment` is the one maker: `make_domain_fragment` applies it to a `Domain`,
`make_host_fragments` to the rows of a `HostConfig` grouped by domain (for a host without a
cache, or a hand-built one whose rows its domains do not declare). `compiler.render.join` puts
every host's files together from the fragments of the domains it serves.

`FragmentCache` keeps fragments on disk (a `compiler.cache.packstore` store), keyed by the domain
file's content key from the parse cache (file bytes + schema and loader code) under a
fingerprint of the code that makes them, so after editing one domain file only that domain's
rows are made again. Fragments are pickles: `compiler.cache.packstore` loads only files tagged with
the user's key (`compiler.cache.cachedir`).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import compiler
from compiler.cache.packstore import Codec, PackStore, open_pack_store
from compiler.render.agentconfig import make_account_entries, redirect_entry
from compiler.render.resolve import HostConfig
from compiler.render.sieve import (
    has_responder,
    invert_redirects,
    make_account_script,
    reaching_addresses,
)
from compiler.render.tables import (
    alias_row,
    deny_rows,
    mailbox_row,
    make_catch_all_aliases,
    make_passwd_lines,
    sender_login_row,
)
from schemas.domain import Account, Domain

_FORMAT = b"mailcfg-fragment-5"
_CODE = (
    "render/fragments.py",
    "render/tables.py",
    "render/agentconfig.py",
    "render/sieve.py",
    "render/join.py",  # and the joined bases made from fragments
    "render/joincache.py",
    "cache/packstore.py",
)
SUBDIRECTORY = "fragments"


@dataclass(frozen=True, slots=True)
class ResponderScript:
    """An enabled autoresponder's Sieve script, made with `aliases` (the addresses that
    reach the account through its own domain's redirects)."""

    address: str
    aliases: tuple[str, ...]
    script: str


@dataclass(frozen=True, slots=True)
class DomainFragment:
    """Rows of one domain (`domain`; "" for rows of a hand-built host that no served domain
    declares). The account tuples run parallel to `addresses` (its enabled accounts), the
    redirect tuples parallel to `sources` (its redirects, each source once with its last
    declaration, as `resolve.index_domains` keeps them)."""

    domain: str
    addresses: tuple[str, ...]
    passwd: tuple[str, ...]
    mailbox_rows: tuple[str, ...]  # `address maildir`
    sender_rows: tuple[str, ...]  # `address address`
    agent_before: tuple[str, ...]  # `    "address": {"blacklist": ..., "limits": `
    agent_after: tuple[str, ...]  # `, "whitelist": ...}`
    no_imap: tuple[str, ...]
    no_pop3: tuple[str, ...]
    sources: tuple[str, ...]
    alias_rows: tuple[str, ...]  # `source target, target`
    agent_redirects: tuple[str, ...]  # `    "source": ["target", "target"]`
    outside_targets: tuple[str, ...]  # redirect targets in other domains
    catch_all_rows: tuple[str, ...]  # `@domain target` and `address address`; () without
    responders: tuple[ResponderScript, ...]  # last: `_to_row` stores it apart


def make_fragment(
    domain: str,
    accounts: Sequence[tuple[str, Account]],
    redirects: Mapping[str, tuple[str, ...]],
    reverse: Mapping[str, Sequence[str]] | None = None,
    catch_all: str | None = None,
) -> DomainFragment:
    """The fragment of `domain` with the enabled `(address, account)`s, the redirects and
    the catch-all target given. A responder's aliases are found in `reverse`
    (`sieve.invert_redirects`), by default over `redirects` alone."""
    if reverse is None:
        reverse = invert_redirects(redirects)
    responders = []
    for address, account in accounts:
        if has_responder(account):
            aliases = reaching_addresses(address, reverse)
            script = make_account_script(address, account, aliases)
            responders.append(ResponderScript(address, tuple(aliases), script))
    before, after = make_account_entries(accounts)
    suffix = "@" + domain
    catch_all_rows: tuple[str, ...] = ()
    if catch_all is not None:
        rows = make_catch_all_aliases(domain, catch_all, (a for a, _ in accounts), redirects)
        catch_all_rows = tuple(alias_row(s, to) for s, to in rows)
    return DomainFragment(
        domain=domain,
        addresses=tuple(a for a, _ in accounts),
        passwd=tuple(make_passwd_lines(accounts)),
        mailbox_rows=tuple(mailbox_row(a) for a, _ in accounts),
        sender_rows=tuple(sender_login_row(a) for a, _ in accounts),
        agent_before=tuple(before),
        agent_after=tuple(after),
        no_imap=tuple(deny_rows(accounts, "imap")),
        no_pop3=tuple(deny_rows(accounts, "pop3")),
        sources=tuple(redirects),
        alias_rows=tuple(alias_row(s, to) for s, to in redirects.items()),
        agent_redirects=tuple(redirect_entry(s, to) for s, to in redirects.items()),
        outside_targets=tuple(
            sorted({t for to in redirects.values() for t in to if not t.endswith(suffix)})
        ),
        catch_all_rows=catch_all_rows,
        responders=tuple(responders),
    )


def make_domain_fragment(domain: Domain) -> DomainFragment:
    """The fragment of `domain`'s enabled accounts and its redirects, their addresses as
    `resolve.index_domains` names them."""
    accounts = [(domain.address_of(acc.name), acc) for acc in domain.accounts if acc.enabled]
    redirects = {domain.address_of(red.name): tuple(red.to) for red in domain.redirects}
    return make_fragment(domain.domain, accounts, redirects, catch_all=domain.catch_all)


def make_host_fragments(cfg: HostConfig) -> list[DomainFragment]:
    """Fragments of exactly `cfg`'s mailboxes and redirects: one per served domain (in
    `cfg.domains` order) of the rows whose address is in it, and should a hand-built config
    hold rows of other domains, one more of those (its aliases worked out over all of
    `cfg.redirects`, as no domain's own redirects tell them)."""
    names = list(dict.fromkeys(cfg.domain_names))
    accounts: dict[str, list[tuple[str, Account]]] = {name: [] for name in names}
    redirects: dict[str, dict[str, tuple[str, ...]]] = {name: {} for name in names}
    other_accounts: list[tuple[str, Account]] = []
    other_redirects: dict[str, tuple[str, ...]] = {}
    for address, account in cfg.mailboxes.items():
        accounts.get(address.rpartition("@")[2], other_accounts).append((address, account))
    for source, targets in cfg.redirects.items():
        redirects.get(source.rpartition("@")[2], other_redirects)[source] = targets
    catch_alls = cfg.catch_alls
    fragments = [
        make_fragment(name, accounts[name], redirects[name], catch_all=catch_alls.get(name))
        for name in names
    ]
    if other_accounts or other_redirects:
        reverse = invert_redirects(cfg.redirects)
        fragments.append(make_fragment("", other_accounts, other_redirects, reverse))
    return fragments


def code_fingerprint() -> str:
    h = hashlib.sha256(_FORMAT)
    h.update(f"{sys.version_info[:2]}".encode())
    directory = Path(compiler.__file__).parent
    for name in _CODE:
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:16]


# On disk a fragment is a plain tuple of its fields (its scripts tuples too): pickle restores
# tuples and strings without a Python call per object, a dataclass with one (a fifth slower).
def _to_row(fragment: DomainFragment) -> tuple[object, ...]:
    fields = [getattr(fragment, name) for name in DomainFragment.__slots__]
    fields[-1] = tuple((r.address, r.aliases, r.script) for r in fragment.responders)
    return tuple(fields)


def _from_row(row: Any) -> DomainFragment:
    fields: list[Any] = list(row)
    fields[-1] = tuple(ResponderScript(*r) for r in fields[-1])
    return DomainFragment(*fields)


_CODEC: Codec[DomainFragment] = Codec(decode=_from_row, encode=_to_row)


@dataclass(frozen=True, slots=True)
class FragmentCache:
    """Fragments of the domains of one loaded inventory, from disk when their key is known.
    `keys` maps each `Domain` object of that inventory (by identity; `domains` keeps them
    alive) to its content key; a domain without a key is simply made.

    A cold run writes one file, a run after an edit one small file per fragment made (see
    `compiler.cache.packstore`). Should the pack be written again, it keeps the fragments of every
    domain of the inventory that are at hand, not only those of the hosts rendered, so that
    rendering some hosts does not drop the others' fragments."""

    domains: Mapping[str, Domain]
    keys: dict[int, str]
    store: PackStore[DomainFragment]
    bases: Path | None = None  # where the joins of these fragments are kept (`render.joincache`)

    MAX_LOOSE = 64

    @classmethod
    def open(
        cls,
        directory: Path,
        domains: Mapping[str, Domain],
        domain_keys: Mapping[str, str],
        bases: Path | None = None,
    ) -> FragmentCache:
        store = open_pack_store(directory, code_fingerprint(), _CODEC, max_loose=cls.MAX_LOOSE)
        keys = {id(d): domain_keys[name] for name, d in domains.items() if name in domain_keys}
        return cls(domains, keys, store, bases)

    def get(self, domain: Domain) -> DomainFragment:
        return self._fragment(domain, self.store.get)

    def _fragment(
        self, domain: Domain, read: Callable[[str], DomainFragment | None]
    ) -> DomainFragment:
        """`domain`'s fragment by its content key through `read`, made (and stored) when
        `read` has none; made without the store for a domain that has no key."""
        key = self.keys.get(id(domain))
        if key is None or self.domains.get(domain.domain) is not domain:
            return make_domain_fragment(domain)
        fragment = read(key)
        if fragment is None:
            fragment = make_domain_fragment(domain)
            self.store.put(key, fragment)
        return fragment

    def content_keys(self, domains: Sequence[Domain]) -> dict[str, str]:
        """The content key of each of `domains` (by name) that has one."""
        keys = {}
        for domain in domains:
            key = self.keys.get(id(domain))
            if key is not None and self.domains.get(domain.domain) is domain:
                keys[domain.domain] = key
        return keys

    def peek(self, domain: Domain) -> DomainFragment:
        """As `get`, but never reading the pack (`PackStore.peek`): a fragment made by an
        earlier run after an edit is read, any other made again (a few domains only)."""
        return self._fragment(domain, self.store.peek)

    def save(self) -> None:
        """Store the fragments made by this run."""
        self.store.save(keep=self.keys.values())
