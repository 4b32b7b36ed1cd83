"""The join: a host's domain-sized files put together from the fragments of its domains.

`make_domain_set_data` gives what a host's files derive from its served domains alone (and its
postmaster): the tables (`TableTexts`: Postfix maps, passwd-file, deny files), the Sieve
scripts of its autoresponders and the domain-only parts of agent.json (`SharedAgentText`). It
is the one render path of those files, for the CLI and for library callers alike: the rows
come from per-domain fragments (`compiler.render.fragments`), read from a `FragmentCache` when
there is one and they name exactly the host's mailboxes and redirects (always so for a host of
the cache's inventory), else made from the host config's own rows (`make_host_fragments`),
and `join_fragments` lays them out in address order by one permutation per column, no
per-account work but a lookup. A host's alias domains (`HostConfig.alias_domains`) add
their rows here, from the fragment of the domain each one aliases (`tables`'
`make_alias_domain_aliases` and `make_alias_domain_senders`), and make that domain's
autoresponder scripts again with the alias addresses. `DomainSetCache` shares the result
between the hosts of one run that serve the same domains. With a `FragmentCache`, a full join
is kept as a joined base, and a later run whose domains changed in a few files only splices
their new rows into it (`compiler.render.joincache`) instead of reading every fragment.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter
from typing import Any, TypeVar

from compiler.render.agentconfig import SharedAgentText, around_limits
from compiler.render.fragments import DomainFragment, FragmentCache, make_host_fragments
from compiler.render.joincache import JoinedBases, changed_domains, splice_base
from compiler.render.resolve import HostConfig, ServedAccounts, ServedAccountsCache
from compiler.render.sieve import (
    SieveScript,
    invert_redirects,
    make_account_script,
    reaching_addresses,
)
from compiler.render.tables import (
    TableTexts,
    alias_row,
    format_lines,
    make_alias_domain_aliases,
    make_alias_domain_senders,
    make_postmaster_aliases,
    make_virtual_mailbox_domains,
)
from schemas.domain import Account

T = TypeVar("T")


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
    alias_domains: dict[str, str] = field(default_factory=dict)
    catch_alls: dict[str, str] = field(default_factory=dict)

    def serves(self, cfg: HostConfig) -> bool:
        """Whether this data is `make_domain_set_data(cfg)`: equal accounts and redirects in
        the same order, names, catch-alls, alias domains and postmaster (hosts resolved
        together share the dicts)."""
        return (
            self.postmaster == cfg.postmaster
            and self.domain_names == cfg.domain_names
            and self.alias_domains == cfg.alias_domains
            and self.catch_alls == cfg.catch_alls
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
    `fragments` gives each domain's rows (from disk when cached), `accounts` the tables the
    hosts were resolved with (their declaration order spares the join its lookups)."""

    fragments: FragmentCache | None = None
    accounts: ServedAccountsCache | None = None
    entries: list[DomainSetData] = field(default_factory=list)

    def get(self, cfg: HostConfig) -> DomainSetData:
        for entry in self.entries:
            if entry.serves(cfg):
                return entry
        served = self.accounts.find(cfg) if self.accounts is not None else None
        entry = make_domain_set_data(cfg, self.fragments, served)
        self.entries.append(entry)
        return entry


def make_domain_set_data(
    cfg: HostConfig, cache: FragmentCache | None = None, served: ServedAccounts | None = None
) -> DomainSetData:
    """The domain-derived data of `cfg`, joined from `cache`'s fragments of its domains when
    they name exactly its mailboxes and redirects, else from fragments of its own rows.
    `served`: the tables `cfg` was resolved with (`ServedAccountsCache.find`), if known."""
    joined = None
    if cache is not None:
        bases = _open_bases(cache)
        joined = _splice(cfg, cache, bases) if bases is not None else None
        if joined is None:
            fragments = [cache.get(domain) for domain in cfg.domains]
            joined = join_fragments(cfg, fragments, served)
            if joined is not None and bases is not None:
                bases.write(cfg, cache.content_keys(cfg.domains), fragments, joined)
    if joined is None:
        joined = join_fragments(cfg, make_host_fragments(cfg))
        assert joined is not None, "fragments made from a config name exactly its rows"
    return joined


def _open_bases(cache: FragmentCache) -> JoinedBases | None:
    store = cache.store
    if store.directory is None or cache.bases is None:
        return None
    return JoinedBases.open(cache.bases, store.key, store.tag)


def _splice(cfg: HostConfig, cache: FragmentCache, bases: JoinedBases) -> DomainSetData | None:
    """`cfg`'s data from its joined base with the changed domains' rows spliced in
    (`compiler.render.joincache`), or None when a full join must make it."""
    base = bases.read(cfg)
    if base is None:
        return None
    changed = changed_domains(base, cache.content_keys(cfg.domains))
    if changed is None:
        return None
    by_name = {domain.domain: domain for domain in cfg.domains}
    spliced = splice_base(base, cfg, [cache.peek(by_name[name]) for name in changed])
    if spliced is None:
        return None
    return DomainSetData(
        mailboxes=cfg.mailboxes,
        redirects=cfg.redirects,
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=spliced.tables,
        autoresponders=spliced.autoresponders,
        agent_text=spliced.agent_text,
        alias_domains=cfg.alias_domains,
        catch_alls=cfg.catch_alls,
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


def _order(
    names: list[str], wanted: dict[str, Any], declared: list[str], order: list[int]
) -> list[int] | None:
    """As `_positions(names, wanted, len(wanted))`: `order` itself when `names` are the
    `declared` keys that `order` sorts into `wanted` (no lookup per name)."""
    if len(order) == len(wanted) == len(declared) and names == declared:
        return order
    return _positions(names, wanted, len(wanted))


def _column(fragments: Sequence[DomainFragment], name: str) -> list[str]:
    return list(chain.from_iterable(getattr(f, name) for f in fragments))


def _pick(column: Sequence[T], order: Sequence[int]) -> list[T]:
    return list(map(column.__getitem__, order))


def _sorted_order(keys: Sequence[str], order: list[int]) -> list[int]:
    """`order` rearranged for `keys` sorted (no work when they are: a resolved config's)."""
    ordered = sorted(keys)
    if ordered == list(keys):
        return order
    return _pick(order, _positions(keys, ordered, len(keys)) or [])


def join_fragments(
    cfg: HostConfig, fragments: Sequence[DomainFragment], served: ServedAccounts | None = None
) -> DomainSetData | None:
    """`cfg`'s domain-derived data from the rows of `fragments` (tables in `cfg.mailboxes` /
    `.redirects` order, agent.json entries by address), or None if they do not name exactly
    `cfg`'s mailboxes and redirects. `served`: the tables `cfg` was resolved with."""
    mailboxes, redirects = cfg.mailboxes, cfg.redirects
    if served is None:
        served = ServedAccounts((), {}, {}, ())
    addresses, sources = _column(fragments, "addresses"), _column(fragments, "sources")
    order = _order(addresses, mailboxes, served.declared_mailboxes, served.mailbox_order)
    by_source = _order(sources, redirects, served.declared_redirects, served.redirect_order)
    if order is None or by_source is None:
        return None
    no_imap = set(_column(fragments, "no_imap"))
    no_pop3 = set(_column(fragments, "no_pop3"))
    aliases = _alias_domain_rows(cfg, fragments)
    sender_rows = _pick(_column(fragments, "sender_rows"), order)
    if aliases.senders:
        sender_rows = sorted([*sender_rows, *aliases.senders], key=_row_key)
    tables = TableTexts(
        virtual_mailbox_domains=format_lines(make_virtual_mailbox_domains(cfg)),
        virtual_mailbox_maps=format_lines(_pick(_column(fragments, "mailbox_rows"), order)),
        virtual_alias_maps=_alias_map_text(
            cfg, _pick(_column(fragments, "alias_rows"), by_source), fragments, aliases.rows
        ),
        sender_login_maps=format_lines(sender_rows),
        passwd=format_lines(_pick(_column(fragments, "passwd"), order)),
        deny_imap=format_lines([a for a in mailboxes if a in no_imap] if no_imap else []),
        deny_pop3=format_lines([a for a in mailboxes if a in no_pop3] if no_pop3 else []),
    )
    agent_order = _sorted_order(list(mailboxes), order)
    agent_by_source = _sorted_order(list(redirects), by_source)
    agent_text = SharedAgentText(
        addresses=tuple(sorted(mailboxes)),
        around=around_limits(
            _pick(_column(fragments, "agent_before"), agent_order),
            _pick(_column(fragments, "agent_after"), agent_order),
        ),
        redirects=",\n".join(_pick(_column(fragments, "agent_redirects"), agent_by_source)),
    )
    return DomainSetData(
        mailboxes=mailboxes,
        redirects=redirects,
        domain_names=cfg.domain_names,
        postmaster=cfg.postmaster,
        tables=tables,
        autoresponders=tuple(_join_autoresponders(cfg, fragments, aliases.rows)),
        agent_text=agent_text,
        alias_domains=cfg.alias_domains,
        catch_alls=cfg.catch_alls,
    )


def _row_key(row: str) -> str:
    return row.partition(" ")[0]


@dataclass(frozen=True, slots=True)
class AliasDomainRows:
    """A host's alias-domain rows: virtual_alias_maps `(source, targets)` and
    sender_login_maps lines."""

    rows: list[tuple[str, tuple[str, ...]]]
    senders: list[str]


def _alias_domain_rows(cfg: HostConfig, fragments: Sequence[DomainFragment]) -> AliasDomainRows:
    """The rows of `cfg`'s alias domains, each from the fragment of the domain it aliases:
    its enabled accounts and its redirect sources (an address both is one row)."""
    rows: list[tuple[str, tuple[str, ...]]] = []
    senders: list[str] = []
    if not cfg.alias_domains:
        return AliasDomainRows(rows, senders)
    by_domain = {f.domain: f for f in fragments}
    for alias, target in cfg.alias_domains.items():
        fragment = by_domain[target]
        addresses = dict.fromkeys((*fragment.addresses, *fragment.sources))
        rows += make_alias_domain_aliases(alias, target, addresses)
        senders += make_alias_domain_senders(alias, fragment.addresses)
    return AliasDomainRows(rows, senders)


def _alias_map_text(
    cfg: HostConfig,
    redirect_rows: list[str],
    fragments: Sequence[DomainFragment] = (),
    alias_domain_rows: Sequence[tuple[str, tuple[str, ...]]] = (),
) -> str:
    """virtual_alias_maps: the redirect rows (in `cfg.redirects` order), the postmaster
    aliases, the catch-all rows of `fragments` and `alias_domain_rows`, sorted by source."""
    keys = list(cfg.redirects)
    rows = list(redirect_rows)
    for source, targets in [*make_postmaster_aliases(cfg), *alias_domain_rows]:
        keys.append(source)
        rows.append(alias_row(source, targets))
    for fragment in fragments:
        if fragment.catch_all_rows:
            keys += map(_row_key, fragment.catch_all_rows)
            rows += fragment.catch_all_rows
    if keys != sorted(keys):
        rows = _pick(rows, sorted(range(len(keys)), key=keys.__getitem__))
    return format_lines(rows)


def _join_autoresponders(
    cfg: HostConfig,
    fragments: Sequence[DomainFragment],
    alias_domain_rows: Sequence[tuple[str, tuple[str, ...]]] = (),
) -> list[SieveScript]:
    """The fragments' Sieve scripts, by address. A script's aliases come from its own
    fragment's redirects unless a redirect of another fragment or an alias domain leads into
    its domain: only then are they worked out over all of `cfg.redirects` and
    `alias_domain_rows`, and the script made again if they differ (every path into a domain
    from outside passes such a redirect or row)."""
    entered = {
        t.rpartition("@")[2] for f in fragments if f.outside_targets for t in f.outside_targets
    }
    entered.update(cfg.alias_domains.values())
    mailboxes = cfg.mailboxes
    reverse: dict[str, list[str]] | None = None
    scripts = []
    for fragment in fragments:
        reached = fragment.domain in entered
        for responder in fragment.responders:
            script = responder.script
            if reached:
                if reverse is None:
                    reverse = invert_redirects({**cfg.redirects, **dict(alias_domain_rows)})
                aliases = reaching_addresses(responder.address, reverse)
                if tuple(aliases) != responder.aliases:
                    address = responder.address
                    script = make_account_script(address, mailboxes[address], aliases)
            scripts.append(SieveScript(responder.address, script))
    scripts.sort(key=attrgetter("address"))
    return scripts
