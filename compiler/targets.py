"""Compile an inventory into per-host targets: resolved config, rendered tree, activations.

Pure (reads templates only). A host whose rendering fails is reported by name instead of
stopping the other hosts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from compiler.context import DomainSetCache
from compiler.fleet import Target
from compiler.render import render_host
from compiler.resolve import HostConfig, resolve_host
from compiler.roles import Roles, make_activations, role_defaults
from schemas.inventory import Inventory


@dataclass(frozen=True, slots=True)
class CompileFailure:
    host: str
    message: str


def compile_host(
    inventory: Inventory, roles: Roles, host: str, cache: DomainSetCache | None = None
) -> tuple[HostConfig, Target]:
    cfg = resolve_host(inventory, host, role_defaults(roles))
    tree = render_host(cfg, roles, cache)
    activations_for = functools.partial(make_activations, cfg, roles)
    return cfg, Target(host, inventory.hosts[host], tree, activations_for)


def compile_targets(
    inventory: Inventory, roles: Roles, hosts: Sequence[str]
) -> tuple[list[Target], list[CompileFailure]]:
    """Targets for `hosts`, and the hosts that could not be compiled (with the reason)."""
    targets: list[Target] = []
    failures: list[CompileFailure] = []
    cache = DomainSetCache()
    for host in hosts:
        try:
            targets.append(compile_host(inventory, roles, host, cache)[1])
        except Exception as exc:  # a template bug on one host must not hide the others' plans
            failures.append(CompileFailure(host, f"render: {type(exc).__name__}: {exc}"))
    return targets, failures
