"""The JSON Schemas for editors (`mailcfg schema --kind inventory|domain`, committed under
`schemas/json/`): they cannot go stale, the example files point at them and validate, and on a
table of documents they agree with the loader: what `validate` accepts they accept (the forms
the validators convert included), and they refuse unknown keys, bad addresses and wrong types.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import textwrap
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from compiler.cli import main
from compiler.load.diagnostics import InventoryError
from compiler.load.inventory import load_inventory
from compiler.load.yamlload import parse_yaml
from compiler.tools.schema import KINDS, Kind, format_json_schema, json_schema
from schemas.inventory import Inventory
from tests.golden import cases as golden_cases

REPO = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO / "schemas" / "json"
UNIT = Path(__file__).parent
BASE = UNIT / "bad_inventories" / "_base"
# The shipped example (with modelines) and the other valid inventories of the repository.
EXAMPLE = REPO / "inventory"
VALID_INVENTORIES = (EXAMPLE, UNIT / "data" / "inventories" / "good", BASE)
MODELINE = "# yaml-language-server: $schema="


def _files(inventory: Path) -> list[tuple[Kind, Path]]:
    domains = sorted((inventory / "domains").glob("*.yml"))
    return [("inventory", inventory / "mailcfg.yml"), *(("domain", f) for f in domains)]


def _validator(kind: Kind) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def _schema_errors(kind: Kind, data: Any) -> list[str]:
    return [error.message for error in _validator(kind).iter_errors(data)]


def _yaml(text: str) -> Any:
    """The data as the loader reads it (YAML 1.2, as yaml-language-server reads it too)."""
    return parse_yaml(textwrap.dedent(text).encode()).data


# --- the committed files --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_committed_schema_is_what_mailcfg_schema_prints(kind: Kind) -> None:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["schema", "--kind", kind]) == 0
    committed = (SCHEMA_DIR / f"{kind}.schema.json").read_text()
    assert out.getvalue() == committed == format_json_schema(kind), (
        f"schemas/json/{kind}.schema.json is stale: mailcfg schema --kind {kind} > it"
    )


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_draft_2020_12_and_refuses_unknown_keys(kind: Kind) -> None:
    schema = json_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)  # patterns compile, too
    assert schema["additionalProperties"] is False
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition:
            assert definition["additionalProperties"] is False, name


def _patterns(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        own = {schema["pattern"]} if isinstance(schema.get("pattern"), str) else set()
        return own.union(*(_patterns(v) for v in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_patterns(v) for v in schema))
    return set()


@pytest.mark.skipif(shutil.which("node") is None, reason="no node to compile ECMAScript regexes")
def test_every_pattern_is_an_ecmascript_regex() -> None:
    """Editors run the patterns as ECMAScript (Unicode mode), not Python `re`."""
    patterns = sorted(set().union(*(_patterns(json_schema(k)) for k in KINDS)))
    script = "for (const p of JSON.parse(require('fs').readFileSync(0))) new RegExp(p, 'u');"
    result = subprocess.run(
        ["node", "-e", script], input=json.dumps(patterns), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- every valid file validates ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "file"),
    [pair for inv in VALID_INVENTORIES for pair in _files(inv)],
    ids=lambda v: str(v.relative_to(REPO)) if isinstance(v, Path) else v,
)
def test_valid_file_validates_against_its_schema(kind: Kind, file: Path) -> None:
    assert _schema_errors(kind, parse_yaml(file.read_bytes()).data) == []


def test_the_valid_inventories_are_valid() -> None:
    for inventory in VALID_INVENTORIES:
        load_inventory(inventory)


@pytest.mark.parametrize(("kind", "file"), _files(EXAMPLE), ids=lambda v: getattr(v, "name", v))
def test_example_file_names_its_schema_in_a_modeline(kind: Kind, file: Path) -> None:
    first = file.read_text().splitlines()[0]
    assert first.startswith(MODELINE), f"{file.name} starts with {first!r}"
    target = (file.parent / first.removeprefix(MODELINE)).resolve()
    assert target == SCHEMA_DIR / f"{kind}.schema.json"


@pytest.mark.parametrize("case", ["minimal", "full", "no_agent"])
def test_golden_inventories_as_json_validate(case: str) -> None:
    """Every field of the golden inventories, written out as values (a full policy too)."""
    inventory: Inventory = getattr(golden_cases, case)()[0]
    data = inventory.model_dump(mode="json", warnings=False)  # no_agent sets roles unvalidated
    for domain in data.pop("domains").values():
        assert _schema_errors("domain", domain) == []
    assert _schema_errors("inventory", data) == []


# --- the schema agrees with the loader --------------------------------------------------------

BLF = "{BLF-CRYPT}$2b$12$1.bvD2JGivMxXj64XddFyOe2th8Ti5BNJWgAYM4gEHsd1m4j0GoYm"
MD5 = "{MD5-CRYPT}$1$/0FlUclv$hAvuorFl2DVrbFFfv3GLw/"

# (what, domain file, valid): each document is checked by the loader and by the schema.
DOMAIN_DOCUMENTS = [
    ("sizes with a unit", f"accounts: [{{name: a, password: '{BLF}', quota: 45 MB}}]", True),
    ("size in bytes", f"accounts: [{{name: a, password: '{BLF}', quota: 0}}]", True),
    ("a legacy hash", f"accounts: [{{name: a, password: '{MD5}'}}]", True),
    ("full address name", f"accounts: [{{name: A@Example.com, password: '{BLF}'}}]", True),
    ("yes/no booleans", f"accounts: [{{name: a, password: '{BLF}', imap: no, pop3: Yes}}]", True),
    (
        "number as a string",
        f"accounts: [{{name: a, password: '{BLF}', limits: {{per_hour: '5'}}}}]",
        True,
    ),
    ("a single target", "redirects: [{name: info, to: alice@example.com}]", True),
    ("a target list", "redirects: [{name: info, to: [a@example.com, b@example.org]}]", True),
    (
        "autoresponder dates",
        f"""\
        accounts:
          - name: a
            password: '{BLF}'
            autoresponder: {{subject: Away, body: "Back\\n\\tsoon", start: 2024-07-01}}
        """,
        True,
    ),
    (
        "sender patterns",
        f"""\
        accounts:
          - {{name: a, password: '{BLF}', whitelist: {{entries: ['@example.org', b@x.example]}}}}
        """,
        True,
    ),
    ("unknown key", f"accounts: [{{name: a, password: '{BLF}', qouta: 1G}}]", False),
    ("unknown top-level key", "redirect: []", False),
    ("plaintext password", "accounts: [{name: a, password: hunter2}]", False),
    ("bad target address", "redirects: [{name: info, to: 'alice at example.com'}]", False),
    (
        "target with a newline",
        'redirects: [{name: info, to: "a@example.com\\nb@x.example"}]',
        False,
    ),
    ("no targets", "redirects: [{name: info, to: []}]", False),
    ("name with a space", f"accounts: [{{name: al ice, password: '{BLF}'}}]", False),
    ("size without a number", f"accounts: [{{name: a, password: '{BLF}', quota: lots}}]", False),
    ("boolean of another word", f"accounts: [{{name: a, password: '{BLF}', imap: maybe}}]", False),
    (
        "list instead of a mapping",
        f"accounts: [{{name: a, password: '{BLF}', limits: [1]}}]",
        False,
    ),
    ("admin with a space", "admins: ['@alice bob']", False),
]


@pytest.mark.parametrize(
    ("what", "body", "valid"), DOMAIN_DOCUMENTS, ids=[d[0] for d in DOMAIN_DOCUMENTS]
)
def test_domain_schema_agrees_with_the_loader(
    what: str, body: str, valid: bool, tmp_path: Path
) -> None:
    text = "domain: example.com\n" + textwrap.dedent(body)
    inv = tmp_path / "inv"
    shutil.copytree(BASE, inv)
    (inv / "domains" / "example.com.yml").write_text(text)
    assert _loads(inv) is valid, f"the loader: {what}"
    assert (_schema_errors("domain", _yaml(text)) == []) is valid, f"the schema: {what}"


POLICY_DOCUMENTS = [
    ("size with a unit", "message_size_limit: 45M", True),
    ("size in bytes", "message_size_limit: 45000000", True),
    ("port as a string", "listeners: {submission: {port: '2525'}}", True),
    ("on/off booleans", "helo_required: off", True),
    ("number as a string", "spam: {dns_timeout: '2.5'}", True),
    ("nested typo", "spam: {spf_check: true}", False),
    ("unknown key", "mesage_size_limit: 45M", False),
    ("bad domain", "external_senders: [{domain: exa mple.com, networks: [192.0.2.0/24]}]", False),
    ("size with a bad unit", "message_size_limit: 45X", False),
    ("port as a word", "listeners: {submission: {port: submission}}", False),
    ("list instead of a mapping", "limits: [a]", False),
    ("relative path", "paths: {mail_root: var/vmail}", False),
]


@pytest.mark.parametrize(
    ("what", "line", "valid"), POLICY_DOCUMENTS, ids=[d[0] for d in POLICY_DOCUMENTS]
)
@pytest.mark.parametrize("layer", ["inventory", "host"])
def test_inventory_schema_agrees_with_the_loader(
    what: str, line: str, valid: bool, layer: str, tmp_path: Path
) -> None:
    inv = tmp_path / "inv"
    shutil.copytree(BASE, inv)
    main_file = inv / "mailcfg.yml"
    text = main_file.read_text()
    if layer == "inventory":
        text += f"  {line}\n"
    else:
        text = text.replace(
            "    root: hosts/mx2\n", f"    root: hosts/mx2\n    policy:\n      {line}\n"
        )
    main_file.write_text(text)
    assert _loads(inv) is valid, f"the loader: {what}"
    assert (_schema_errors("inventory", _yaml(text)) == []) is valid, f"the schema: {what}"


HOST = {"address": "192.0.2.10", "hostname": "mx1.example.com", "transport": "local"}


@pytest.mark.parametrize(
    ("what", "key", "value", "valid"),
    [
        ("as written in _base", "root", "hosts/mx1", True),
        ("a list of served domains", "domains", "[example.com]", True),
        ("unknown host key", "colour", "blue", False),
        ("bad host name", "hostname", "mx 1.example.com", False),
        ("bad transport", "transport", "ftp", False),
        ("bad served domain", "domains", "[example..com]", False),
        ("bad group name", "groups", "[-edge]", False),
        ("bad port", "ssh", "{port: 0}", False),
    ],
)
def test_inventory_schema_agrees_with_the_loader_on_hosts(
    what: str, key: str, value: str, valid: bool, tmp_path: Path
) -> None:
    host = {"root": "hosts/mx1", **HOST, key: value}
    lines = "".join(f"    {k}: {v}\n" for k, v in host.items())
    text = f"schema_version: 1\nhosts:\n  mx1:\n{lines}"
    inv = tmp_path / "inv"
    shutil.copytree(BASE, inv)
    (inv / "mailcfg.yml").write_text(text)
    assert _loads(inv) is valid, f"the loader: {what}"
    assert (_schema_errors("inventory", _yaml(text)) == []) is valid, f"the schema: {what}"


@pytest.mark.parametrize(("name", "valid"), [("mx1", True), ("-mx1", False), ("mx 1", False)])
def test_inventory_schema_checks_host_names_and_their_hosts(
    name: str, valid: bool, tmp_path: Path
) -> None:
    text = f"schema_version: 1\nhosts:\n  {name}:\n    root: hosts/mx1\n"
    text += "".join(f"    {k}: {v}\n" for k, v in HOST.items())
    inv = tmp_path / "inv"
    shutil.copytree(BASE, inv)
    (inv / "mailcfg.yml").write_text(text)
    assert _loads(inv) is valid
    assert (_schema_errors("inventory", _yaml(text)) == []) is valid
    # A host under any name is checked: a missing address is an error.
    no_address = text.replace("    address: 192.0.2.10\n", "")
    assert _schema_errors("inventory", _yaml(no_address))


def _loads(inventory: Path) -> bool:
    try:
        load_inventory(inventory)
    except InventoryError:
        return False
    return True
