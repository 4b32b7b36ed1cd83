"""The exported JSON Schema describes both file kinds and partial policy overrides."""

from __future__ import annotations

import json

from compiler.tools.schema import export_json_schema


def test_schema_has_both_files_and_is_json() -> None:
    schema = export_json_schema()
    assert set(schema) == {"mailcfg.yml", "domains/*.yml"}
    json.dumps(schema)
    assert "accounts" in schema["domains/*.yml"]["properties"]


def test_policy_overrides_are_typed_and_all_optional() -> None:
    main = export_json_schema()["mailcfg.yml"]
    defs = main["$defs"]
    ref = {"$ref": "#/$defs/PolicyOverride"}
    assert main["properties"]["policy"] == ref
    assert defs["HostSpec"]["properties"]["policy"] == ref
    assert defs["GroupSpec"]["properties"]["policy"] == ref
    assert "limits" in defs["PolicyOverride"]["properties"]
    # `listeners: {smtp: {enabled: false}}` is a valid override: no required keys there.
    assert "required" not in defs["Listener"]
    # The host itself still requires its address.
    assert "address" in defs["HostSpec"]["required"]


def test_every_ref_resolves() -> None:
    for schema in export_json_schema().values():
        text = json.dumps(schema)
        for name in {part.split('"')[0] for part in text.split('"#/$defs/')[1:]}:
            assert name in schema["$defs"], name
