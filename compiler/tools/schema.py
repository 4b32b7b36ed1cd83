"""JSON Schema of the inventory files, for editors (autocompletion and checks while typing).

`mailcfg.yml` is `InventoryFile`, whose `policy` entries (inventory, groups, hosts) are partial
`ServerPolicy` overrides: the exported schema describes them as such (every key optional),
instead of the free-form mappings the Python model accepts. Domain files are `Domain`.
"""

from __future__ import annotations

from typing import Any

from schemas.domain import Domain
from schemas.inventory import InventoryFile
from schemas.policy import ServerPolicy

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _without_required(schema: Any) -> Any:
    """A partial override: drop `required` everywhere (a layer may set any subset)."""
    if isinstance(schema, dict):
        return {k: _without_required(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_without_required(v) for v in schema]
    return schema


def _inventory_schema() -> dict[str, Any]:
    schema = InventoryFile.model_json_schema()
    policy = _without_required(ServerPolicy.model_json_schema(ref_template="#/$defs/{model}"))
    defs = schema.setdefault("$defs", {})
    for name, definition in policy.pop("$defs", {}).items():
        defs.setdefault(name, definition)
    defs["PolicyOverride"] = {
        **policy,
        "title": "PolicyOverride",
        "description": "Any part of the server policy; merged defaults < groups < host.",
    }
    ref = {"$ref": "#/$defs/PolicyOverride"}
    schema["properties"]["policy"] = ref
    for model in ("HostSpec", "GroupSpec"):
        defs[model]["properties"]["policy"] = ref
    schema["$schema"] = DRAFT
    schema["title"] = "mailcfg.yml"
    return schema


def _domain_schema() -> dict[str, Any]:
    schema = Domain.model_json_schema()
    schema["$schema"] = DRAFT
    schema["title"] = "mailcfg domain file (domains/<domain>.yml)"
    return schema


def export_json_schema() -> dict[str, Any]:
    """`{"mailcfg.yml": schema, "domains/*.yml": schema}`."""
    return {"mailcfg.yml": _inventory_schema(), "domains/*.yml": _domain_schema()}
