"""The policy layers of a host and how they merge, lowest first: the schema's defaults, role
defaults (`roles/*/defaults.yml`), inventory `policy`, each group of the host in listed order,
the host's own `policy`. Mappings merge key by key; any other value (lists included) replaces
the lower one. Here (not in `render`) because the loader validates each host's merged policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.inventory import Inventory
from schemas.policy import ServerPolicy

_SCHEMA_DEFAULTS: Mapping[str, Any] = ServerPolicy().model_dump(mode="json")


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
