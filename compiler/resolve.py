"""Resolve one host's desired state: merge policy layers, pick its domains, derive tables.

Layers, lowest first: the schema's defaults, role defaults (`roles/*/defaults.yml`), inventory
`policy`, each group of the host in listed order, the host's own `policy`. Mappings merge key
by key; any other value (lists included) replaces the lower one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from schemas.common import Frozen
from schemas.domain import Account, Domain
from schemas.inventory import HostSpec, Inventory
from schemas.policy import Limits, LimitsOverride, ServerPolicy

_SCHEMA_DEFAULTS: Mapping[str, Any] = ServerPolicy().model_dump(mode="json")


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

    @property
    def domain_names(self) -> tuple[str, ...]:
        return tuple(d.domain for d in self.domains)


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings, later layers win; non-mapping values replace."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            old = merged.get(key)
            if isinstance(old, Mapping) and isinstance(value, Mapping):
                merged[key] = merge_layers(old, value)
            else:
                merged[key] = value
    return merged


def policy_layers(
    inv: Inventory, host: str, role_defaults: Mapping[str, Any] | None = None
) -> list[Mapping[str, Any]]:
    """The override layers of `host`, lowest first (inventory policy given as its overrides)."""
    spec = inv.hosts[host]
    layers: list[Mapping[str, Any]] = [_SCHEMA_DEFAULTS, role_defaults or {}]
    layers.append(inv.policy.model_dump(mode="json", exclude_unset=True))
    layers.extend(inv.groups[g].policy for g in spec.groups if g in inv.groups)
    layers.append(spec.policy)
    return layers


def resolve_policy(
    inv: Inventory, host: str, role_defaults: Mapping[str, Any] | None = None
) -> ServerPolicy:
    return ServerPolicy.model_validate(merge_layers(*policy_layers(inv, host, role_defaults)))


def resolve_limits(default: Limits, override: LimitsOverride | None) -> Limits:
    if override is None:
        return default
    return default.model_copy(update=override.model_dump(exclude_unset=True))


def served_domains(inv: Inventory, host: str) -> tuple[Domain, ...]:
    wanted = inv.hosts[host].domains
    names = sorted(inv.domains) if wanted == "all" else sorted(set(wanted))
    return tuple(inv.domains[n] for n in names if n in inv.domains)


def resolve_host(
    inv: Inventory, host: str, role_defaults: Mapping[str, Any] | None = None
) -> HostConfig:
    """Resolve `host` of a validated inventory into its `HostConfig`."""
    spec = inv.hosts[host]
    policy = resolve_policy(inv, host, role_defaults)
    domains = served_domains(inv, host)
    default_limits = policy.limits
    mailboxes: dict[str, Account] = {}
    redirects: dict[str, tuple[str, ...]] = {}
    limits: dict[str, Limits] = {}
    # Inlined `Domain.address_of` and one shared default `Limits`: this loop runs once per
    # account (tens of thousands), so per-account calls and copies dominate a render.
    for dom in domains:
        suffix = "@" + dom.domain
        for acc in dom.accounts:
            if acc.enabled:
                name = acc.name
                address = name if "@" in name else name + suffix
                mailboxes[address] = acc
                override = acc.limits
                limits[address] = (
                    default_limits if override is None else resolve_limits(default_limits, override)
                )
        for red in dom.redirects:
            name = red.name
            redirects[name if "@" in name else name + suffix] = tuple(red.to)
    postmaster = policy.postmaster or (
        f"postmaster@{domains[0].domain}" if domains else f"postmaster@{spec.hostname}"
    )
    order = sorted(mailboxes)
    # Every value comes from the validated inventory: construct without validating again
    # (revalidating 2 x 50,000 models is most of a large render's resolve step).
    return HostConfig.model_construct(
        name=host,
        spec=spec,
        policy=policy,
        domains=domains,
        mailboxes={a: mailboxes[a] for a in order},
        redirects=dict(sorted(redirects.items())),
        limits={a: limits[a] for a in order},
        postmaster=postmaster,
    )
