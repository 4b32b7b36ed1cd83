"""JSON Schema of the inventory files, one per kind, for editors (completion and checks while
typing): `inventory` for `mailcfg.yml`, `domain` for `domains/<domain>.yml`.

The schemas come from the models and accept every file `mailcfg validate` accepts, as written:
- `mailcfg.yml`'s `policy` entries (inventory, groups, hosts) are partial `ServerPolicy`
  overrides, described as such (every key optional) instead of the free-form mappings the
  Python model takes before the layers are merged;
- the forms the validators convert are allowed: sizes with a unit and a single redirect target
  (declared beside their types in `schemas/`), and what pydantic's lax mode reads from YAML 1.2
  scalars: `yes`/`no`/`on`/`off`... in a boolean field, a number written as a string (added
  here, for every boolean, integer and number field);
- strings carry a pattern and a length bound (`schemas.common.json_string`) that accept at
  least every valid value, so an editor flags most mistakes; `mailcfg validate` stays the
  authority. Unknown keys are refused everywhere (`additionalProperties: false`), and the
  names of hosts, groups and `postfix_main` parameters are checked like their values.

`schemas/json/<kind>.schema.json` are these schemas committed for the example files'
`yaml-language-server` modelines; a test keeps them equal to `format_json_schema`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from schemas.domain import Domain
from schemas.inventory import InventoryFile
from schemas.policy import ServerPolicy

DRAFT = "https://json-schema.org/draft/2020-12/schema"
Kind = Literal["inventory", "domain"]
KINDS: tuple[Kind, ...] = ("inventory", "domain")


def _any_case(*words: str) -> str:
    """An alternation of `words` (letters and digits) in any case: JSON Schema has no flags."""
    return "|".join(
        "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word) for word in words
    )


# What pydantic's lax mode reads as a boolean or a number from a string (YAML 1.2 reads
# `yes`, `on` or a quoted number as a string).
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "t", "f", "y", "n", "1", "0")
_BOOLEAN_TEXT = {"type": "string", "pattern": f"^(?:{_any_case(*_BOOLEAN_WORDS)})$"}
_INTEGER_TEXT = {"type": "string", "pattern": r"^\s*[+-]?[0-9][0-9_]*(?:\.0*)?\s*$"}
_DECIMAL = r"(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?"
_NUMBER_TEXT = {
    "type": "string",
    "pattern": rf"^\s*[+-]?(?:{_DECIMAL}|{_any_case('inf', 'infinity', 'nan')})\s*$",
}
_AS_TEXT = {"boolean": _BOOLEAN_TEXT, "integer": _INTEGER_TEXT, "number": _NUMBER_TEXT}
_ANNOTATIONS = ("title", "description", "default")
_VALUES = ("default", "const", "enum", "examples")


def _accept_lax_scalars(schema: Any, *, widen: bool = True) -> Any:
    """`schema` where every boolean, integer and number also accepts what pydantic's lax mode
    converts from a string. A `const` or `enum` is exact; a branch beside a string branch (a
    size: bytes, or a string with a unit) is not widened: that string is the validator's own
    form. Values (defaults, enums) are data, not schemas, and are left as they are."""
    if isinstance(schema, list):
        return [_accept_lax_scalars(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _VALUES:
            out[key] = value
        elif key == "anyOf":
            beside_text = any(branch.get("type") == "string" for branch in value)
            out[key] = [_accept_lax_scalars(b, widen=not beside_text) for b in value]
        elif key in ("properties", "$defs"):
            out[key] = {name: _accept_lax_scalars(v) for name, v in value.items()}
        else:
            out[key] = _accept_lax_scalars(value)
    text = _AS_TEXT.get(out.get("type", ""))
    if not widen or text is None or "const" in out or "enum" in out:
        return out
    annotations = {k: out.pop(k) for k in _ANNOTATIONS if k in out}
    return {"anyOf": [out, dict(text)], **annotations}


def _check_every_key(schema: Any) -> Any:
    """`schema` where a mapping with constrained keys (pydantic writes `patternProperties`)
    checks each key's pattern and each value: with `patternProperties` alone, a key that does
    not match (a host named `-mx`) would be allowed and its value never checked."""
    if isinstance(schema, list):
        return [_check_every_key(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _VALUES else _check_every_key(v) for k, v in schema.items()}
    patterns = out.get("patternProperties")
    if isinstance(patterns, dict) and len(patterns) == 1 and "additionalProperties" not in out:
        ((pattern, values),) = patterns.items()
        del out["patternProperties"]
        out["propertyNames"] = {**out.get("propertyNames", {}), "pattern": pattern}
        out["additionalProperties"] = values
    return out


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
    return {
        **schema,
        "title": "mailcfg inventory (mailcfg.yml)",
        "$comment": "Made by `mailcfg schema --kind inventory`; do not edit.",
    }


def _domain_schema() -> dict[str, Any]:
    return {
        **Domain.model_json_schema(),
        "title": "mailcfg domain file (domains/<domain>.yml)",
        "$comment": "Made by `mailcfg schema --kind domain`; do not edit.",
    }


def json_schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema of one kind of inventory file."""
    schema = _inventory_schema() if kind == "inventory" else _domain_schema()
    return {"$schema": DRAFT, **_accept_lax_scalars(_check_every_key(schema))}


def format_json_schema(kind: Kind) -> str:
    """`json_schema(kind)` as `mailcfg schema --kind` prints it and as it is committed."""
    return json.dumps(json_schema(kind), indent=2, sort_keys=True) + "\n"
