"""Every local recipient → the accounts whose sender lists apply to mail addressed to it, and
the account its rejects count for: computed once per config load, so an inbound decision is
one dict lookup whatever the redirects.

Postfix asks the policy service at RCPT, before virtual alias expansion, and cannot drop one
of the addresses a redirect expands to. So the rule is fail closed, per address as sent:

- An address reaches every local account mail to it is addressed to through redirects
  (`agent.json` `redirects`, plus the `postmaster@<domain>` aliases the compiler adds for a
  served domain that declares no such account or redirect, plus the rows of each alias domain:
  `name@<alias>` → `name@<domain>` for every account and redirect source of the domain it
  aliases, and its postmaster): the accounts it is delivered to,
  however many hops and local domains away, and the accounts on the way that forward their
  mail. An account that also has a redirect loses its mailbox to the redirect (Postfix's
  virtual aliasing runs first) unless the redirect names the account itself ("keep a copy"),
  but its own lists still apply to mail addressed to it: forwarding says where the mail goes,
  not that the account stops refusing what it refuses. A loop of redirects (which Postfix
  never delivers) reaches every account in and after the loop.
- An address of a domain with a catch-all (`agent.json` `catch_alls`) that is neither an
  account nor a redirect reaches what the catch-all target reaches: Postfix delivers it
  there, so the target's lists apply (fail closed: a guessed address never skips them).
  Unknown names of an alias domain need nothing: Postfix rejects them before asking.
- Mail to the address is refused when any account it reaches refuses the sender: its
  blacklist lists the sender, or its whitelist is on and lacks the sender. So one account
  with a whitelist behind a shared redirect (`info@` → alice, carol) makes the redirect
  accept only carol's approved senders. The reply names the address as sent (lowercased),
  never the account behind it.
- A reject counts once, for one account, so a domain's totals stay the number of refused
  recipients: a list reject for the account whose list refused (the addressed account
  first, then in address order); a global filter, SPF or DNSBL reject for the addressed
  account, or for a redirect the first account in its targets as declared (depth first);
  nothing when the address reaches no local account (a redirect to external addresses only).
- An address that reaches more than `MAX_LISTED` accounts with a list is deferred (Postfix
  itself defers a message whose alias expansion passes 1,000 recipients), and the bound
  keeps a hostile inventory from making the load quadratic.

The global filter, SPF and DNSBL do not depend on the recipient: they apply to every
recipient of a local domain, even one this table does not know (an address form Postfix
resolves but the table lacks never skips them).
"""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from runtime.policy.checks import AccountList, make_account_list
from schemas.agent import AgentAccount, AgentConfig
from schemas.graph import strongly_connected_components

MAX_LISTED = 1000


@dataclass(frozen=True, slots=True)
class LocalRecipient:
    """What the inbound checks need of one local address."""

    account: str | None  # the account a filter, SPF or DNSBL reject counts for
    blacklists: tuple[AccountList, ...] = ()
    whitelists: tuple[AccountList, ...] = ()
    too_wide: bool = False  # reaches more than MAX_LISTED accounts with a list


UNKNOWN = LocalRecipient(None)


def make_alias_graph(config: AgentConfig) -> dict[str, Sequence[str]]:
    """The redirects as Postfix's virtual_alias_maps has them (`compiler.render.tables`): the
    declared ones, `postmaster@<domain>` → the host's postmaster where a served domain
    declares neither an account nor a redirect of that name, each alias domain's rows, and
    `@<domain>` → its catch-all target (Postfix's own key for it: no address starts with @).
    A catch-all's identity rows for accounts need no entry: an account reaches itself."""
    graph: dict[str, Sequence[str]] = dict(config.redirects)
    aliases = config.alias_domains
    for domain in config.local_domains:
        address = f"postmaster@{domain}"
        if domain in aliases:
            continue  # its postmaster is one of its rows
        if address not in graph and address not in config.accounts and address != config.postmaster:
            graph[address] = (config.postmaster,)
    if aliases:
        graph.update(_alias_domain_rows(aliases, [*config.accounts, *graph]))
    for domain, target in config.catch_alls.items():
        graph["@" + domain] = (target,)
    return graph


def _alias_domain_rows(
    aliases: Mapping[str, str], addresses: Sequence[str]
) -> dict[str, Sequence[str]]:
    """`name@<alias>` → `name@<domain>` for each of `addresses` in a domain with an alias
    domain, and postmaster (`compiler.render.tables.make_alias_domain_aliases`)."""
    by_target: dict[str, list[str]] = {}
    for alias, target in aliases.items():
        by_target.setdefault(target, []).append(alias)
    rows: dict[str, Sequence[str]] = {}
    for alias, target in aliases.items():
        rows[f"postmaster@{alias}"] = (f"postmaster@{target}",)
    for address in addresses:
        local, _, domain = address.rpartition("@")
        for alias in by_target.get(domain, ()):
            rows[f"{local}@{alias}"] = (address,)
    return rows


class CatchAllRecipients(dict[str, LocalRecipient]):
    """A recipient index of a config with catch-alls: an address it lacks, in a domain with
    a catch-all, is looked up as the catch-all (`@<domain>`), as Postfix delivers it."""

    def get(self, address: str, default: LocalRecipient | None = None) -> LocalRecipient | None:  # type: ignore[override]
        found = dict.get(self, address)
        if found is None:
            found = dict.get(self, "@" + address.rpartition("@")[2])
        return found if found is not None else default


def index_recipients(config: AgentConfig) -> dict[str, LocalRecipient]:
    """Every account and redirect address of `config` → its `LocalRecipient`."""
    accounts = config.accounts
    black = _lists(accounts, "blacklist")
    white = _lists(accounts, "whitelist")
    listed = black.keys() | white.keys()
    graph = make_alias_graph(config)
    out: dict[str, LocalRecipient] = {}
    for address in accounts:
        if address not in graph:
            own = (address,) if address in listed else ()
            out[address] = _make_recipient(address, address, own, black, white)
    first, reach = _expand(graph, accounts, listed)
    for address in graph:
        out[address] = _make_recipient(address, first[address], reach[address], black, white)
    return CatchAllRecipients(out) if config.catch_alls else out


def _lists(accounts: Mapping[str, AgentAccount], which: str) -> dict[str, AccountList]:
    out = {}
    for address, account in accounts.items():
        lst = make_account_list(address, getattr(account, which))
        if lst is not None:
            out[address] = lst
    return out


def _make_recipient(
    address: str,
    first: str | None,
    listed: Collection[str] | None,
    black: Mapping[str, AccountList],
    white: Mapping[str, AccountList],
) -> LocalRecipient:
    if listed is None:
        return LocalRecipient(first, too_wide=True)
    if not listed:
        return LocalRecipient(first)
    order = sorted(listed, key=lambda a: (a != address, a))
    return LocalRecipient(
        first,
        tuple(black[a] for a in order if a in black),
        tuple(white[a] for a in order if a in white),
    )


def _expand(
    graph: Mapping[str, Sequence[str]], accounts: Container[str], listed: AbstractSet[str]
) -> tuple[dict[str, str | None], dict[str, frozenset[str] | None]]:
    """For each address of `graph`: the account its rejects count for, and the accounts with
    a list it reaches (None: more than MAX_LISTED). The addresses of a loop reach the same
    accounts; each loop (strongly connected component) is finished after every one it leads
    to, so its accounts are its members' and its successors' (linear but for the unions,
    which the bound caps)."""
    first: dict[str, str | None] = {}
    reach: dict[str, frozenset[str] | None] = {}
    for comp in strongly_connected_components(graph):
        inside = set(comp)
        own = [n for n in comp if n in listed]
        parts: list[frozenset[str]] = []
        wide = False
        for node in comp:
            for t in graph[node]:
                if t in inside:
                    continue
                if t in graph:
                    part = reach[t]
                    if part is None:
                        wide = True
                    elif part:
                        parts.append(part)
                elif t in listed:
                    own.append(t)
        found: frozenset[str] | None
        if wide:
            found = None
        elif not own and len(parts) <= 1:
            found = parts[0] if parts else _NONE  # shared, not copied: chains stay linear
        else:
            found = frozenset(own).union(*parts)
            if len(found) > MAX_LISTED:
                found = None
        counted = _first_account(comp, inside, graph, accounts, first)
        for node in comp:
            first[node] = node if node in accounts else counted
            reach[node] = found
    return first, reach


_NONE: frozenset[str] = frozenset()


def _first_account(
    comp: Sequence[str],
    inside: AbstractSet[str],
    graph: Mapping[str, Sequence[str]],
    accounts: Container[str],
    first: Mapping[str, str | None],
) -> str | None:
    """A member that is an account, else the first account of the targets as declared."""
    members = sorted(comp)
    for node in members:
        if node in accounts:
            return node
    for node in members:
        for t in graph[node]:
            if t in inside:
                continue
            found = first[t] if t in graph else (t if t in accounts else None)
            if found is not None:
                return found
    return None
