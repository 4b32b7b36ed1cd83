"""Resolve one host's desired state: merge policy layers, pick its domains, derive tables.

The layers and how they merge are `compiler.load.layers` (the loader validates each host's
merged policy with them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import Field

from compiler.load.layers import resolve_policy
from schemas.common import Frozen
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory
from schemas.policy import Limits, LimitsOverride, ServerPolicy

V = TypeVar("V")


class HostConfig(Frozen):
    """Fully resolved desired state of one host: what its roles need, nothing else."""

    name: str
    spec: HostSpec
    policy: ServerPolicy
    domains: tuple[Domain, ...]
    # Enabled accounts of served domains, by full address (lower case), sorted.
    mailboxes: dict[str, Account] = Field(default_factory=dict)
    # Redirects of served domains: source address → targets. Wins over a mailbox.
    redirects: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    # Resolved sending limits per enabled account.
    limits: dict[str, Limits] = Field(default_factory=dict)
    postmaster: str
    # Alias domains of served domains: alias → the served domain it delivers as, sorted.
    alias_domains: dict[str, str] = Field(default_factory=dict)

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.domain for d in self.domains)

    @property
    def catch_alls(self) -> dict[str, str]:
        """Served domain → its catch-all target, for the domains that have one."""
        return {d.domain: d.catch_all for d in self.domains if d.catch_all}


def resolve_limits(default: Limits, override: LimitsOverride | None) -> Limits:
    if override is None:
        return default
    return default.model_copy(update=override.model_dump(exclude_unset=True))


def served_alias_domains(inv: Inventory, domains: tuple[Domain, ...]) -> dict[str, str]:
    """The alias domains of `domains`: a host serves an alias domain exactly when it serves
    the domain it aliases."""
    names = {d.domain for d in domains}
    return {a: t for a, t in sorted(inv.alias_domains.items()) if t in names}


def served_domains(inv: Inventory, host: str) -> tuple[Domain, ...]:
    wanted = inv.hosts[host].domains
    names = sorted(inv.domains) if wanted == "all" else sorted(set(wanted))
    return tuple(inv.domains[n] for n in names if n in inv.domains)


@dataclass(frozen=True, slots=True)
class ServedAccounts:
    """The mailboxes and redirects of a set of served domains, by address, sorted: they
    depend on the domains alone, so hosts serving the same domains share one (read-only)."""

    domains: tuple[Domain, ...]
    mailboxes: dict[str, Account]
    redirects: dict[str, tuple[str, ...]]
    # The mailboxes with their own limits (most accounts use the host's default).
    overrides: tuple[tuple[str, LimitsOverride], ...]
    # The addresses in declaration order (domain by domain, as their render fragments list
    # them), and where each address of the sorted tables is in it: the fragment join takes
    # its rows in this order instead of looking every address up (`compiler.render.join`).
    declared_mailboxes: list[str] = field(default_factory=list)
    mailbox_order: list[int] = field(default_factory=list)
    declared_redirects: list[str] = field(default_factory=list)
    redirect_order: list[int] = field(default_factory=list)


def index_domains(domains: tuple[Domain, ...]) -> ServedAccounts:
    mailboxes: dict[str, Account] = {}
    redirects: dict[str, tuple[str, ...]] = {}
    overrides: dict[str, LimitsOverride] = {}
    # `Domain.address_of` inlined: this loop runs once per account (tens of thousands).
    for dom in domains:
        suffix = "@" + dom.domain
        for acc in dom.accounts:
            if acc.enabled:
                name = acc.name
                address = name if "@" in name else name + suffix
                mailboxes[address] = acc
                if acc.limits is not None:
                    overrides[address] = acc.limits
        for red in dom.redirects:
            name = red.name
            redirects[name if "@" in name else name + suffix] = tuple(red.to)
    declared_mailboxes, mailbox_order, sorted_mailboxes = _sorted_table(mailboxes)
    declared_redirects, redirect_order, sorted_redirects = _sorted_table(redirects)
    return ServedAccounts(
        domains=domains,
        mailboxes=sorted_mailboxes,
        redirects=sorted_redirects,
        overrides=tuple(sorted(overrides.items())),
        declared_mailboxes=declared_mailboxes,
        mailbox_order=mailbox_order,
        declared_redirects=declared_redirects,
        redirect_order=redirect_order,
    )


def _sorted_table(table: dict[str, V]) -> tuple[list[str], list[int], dict[str, V]]:
    """`table`'s keys in its order, the permutation that sorts them, and the sorted table."""
    keys = list(table)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    values = list(table.values())
    pairs = zip(map(keys.__getitem__, order), map(values.__getitem__, order), strict=True)
    return keys, order, dict(pairs)


@dataclass(slots=True)
class ServedAccountsCache:
    """`index_domains` once per distinct set of served domains, for the hosts of one run.
    Keyed by the identity of the inventory's `Domain` objects (the entry keeps them alive)."""

    entries: dict[tuple[int, ...], ServedAccounts] = field(default_factory=dict)

    def get(self, domains: tuple[Domain, ...]) -> ServedAccounts:
        key = tuple(map(id, domains))
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = index_domains(domains)
        return entry

    def find(self, cfg: HostConfig) -> ServedAccounts | None:
        """The entry `cfg`'s tables were resolved from (they are its very dicts), if any."""
        entry = self.entries.get(tuple(map(id, cfg.domains)))
        if entry is None or entry.mailboxes is not cfg.mailboxes:
            return None
        return entry if entry.redirects is cfg.redirects else None


def _resolve_all_limits(default: Limits, served: ServedAccounts) -> dict[str, Limits]:
    """Each mailbox's limits: `default` unless overridden; equal overrides share one
    resolved object (fewer copies here, fewer distinct values to encode in agent.json)."""
    limits = dict.fromkeys(served.mailboxes, default)
    resolved: dict[tuple[object, ...], Limits] = {}
    for address, override in served.overrides:
        key = (frozenset(override.model_fields_set), *override.__dict__.values())
        value = resolved.get(key)
        if value is None:
            value = resolved[key] = resolve_limits(default, override)
        limits[address] = value
    return limits


def resolve_host(
    inv: Inventory,
    host: str,
    role_defaults: Mapping[str, Any] | None = None,
    accounts: ServedAccountsCache | None = None,
) -> HostConfig:
    """Resolve `host` of a validated inventory into its `HostConfig`. Hosts resolved with one
    `accounts` cache share the mailbox and redirect tables of the domains they both serve."""
    spec = inv.hosts[host]
    policy = resolve_policy(inv, host, role_defaults)
    domains = served_domains(inv, host)
    served = accounts.get(domains) if accounts is not None else index_domains(domains)
    postmaster = policy.postmaster or (
        f"postmaster@{domains[0].domain}" if domains else f"postmaster@{spec.hostname}"
    )
    # Every value comes from the validated inventory: construct without validating again
    # (revalidating 2 x 50,000 models is most of a large render's resolve step).
    return HostConfig.model_construct(
        name=host,
        spec=spec,
        policy=policy,
        domains=domains,
        mailboxes=served.mailboxes,
        redirects=served.redirects,
        limits=_resolve_all_limits(policy.limits, served),
        postmaster=postmaster,
        alias_domains=served_alias_domains(inv, domains),
    )
