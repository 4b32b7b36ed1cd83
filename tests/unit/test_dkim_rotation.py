"""DKIM rotation as data (`tests/unit/data/dkim_rotation/cases.yml`): an inventory's `dkim`,
the day, and what the DNS serves under each of the host's selectors, through the real
pieces (the schema, `make_dkim_signing`, observe's `host_dkim_keys`, doctor's
`dkim_verdict`), give each key's status and message; the inventories the loader refuses
give their error. The DNS lookup itself is the e2e test's (test_rspamd_dkim_rotation).
"""

from __future__ import annotations

import base64
import hashlib
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from compiler.load.yamlload import parse_yaml
from compiler.push.dkimobserve import host_dkim_keys
from compiler.render.filtering import make_dkim_signing
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, role_defaults
from compiler.tools.dkimrotation import dkim_verdict
from schemas.domain import Domain
from schemas.filtering import Dkim
from schemas.inventory import HostSpec, Inventory, Role

CASES_FILE = Path(__file__).parent / "data/dkim_rotation/cases.yml"
CASES: list[dict[str, Any]] = parse_yaml(CASES_FILE.read_bytes()).data
DEFAULTS = role_defaults(load_roles(default_roles_dir()))


def _key(seed: str) -> str:
    """A stand-in public key (base64, RSA-sized) that differs per seed."""
    return base64.b64encode(hashlib.sha512(seed.encode()).digest() * 5).decode()


def _verdicts(case: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    spec = HostSpec(
        address="192.0.2.1",
        hostname="mx1.example.com",
        roles=[Role.POSTFIX],
        policy={"dkim": case["dkim"]},
    )
    inventory = Inventory(
        hosts={"mx1": spec}, domains={"example.com": Domain(domain="example.com")}
    )
    sign = make_dkim_signing(resolve_host(inventory, "mx1", DEFAULTS))
    assert sign is not None
    records = {k.record_path: f"v=DKIM1; k=rsa; p={_key(k.selector)}" for k in sign.published}
    keys, _notes = host_dkim_keys("mx1", sign, records)
    today = date.fromisoformat(case["today"])
    found = {}
    for key in keys:
        served = case.get("dns", {}).get(key.selector, "own")
        published = {"own": [key.public_key], "other": [_key("another")], "none": []}[served]
        found[key.selector] = dkim_verdict(key, published, "publish it", today)
    return found


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_rotation_case(case: dict[str, Any]) -> None:
    if "refused" in case:
        with pytest.raises(ValidationError) as refused:
            Dkim.model_validate(case["dkim"])
        assert case["refused"] in str(refused.value)
        return
    verdicts = _verdicts(case)
    for selector, (status, text) in case["expect"].items():
        got_status, message, fix = verdicts[selector]
        assert got_status == status, (selector, verdicts[selector])
        if text.startswith("fix:"):
            assert text.removeprefix("fix:") == fix, (selector, verdicts[selector])
        else:
            assert text in message, (selector, verdicts[selector])


def test_each_retirement_day_is_counted_from_its_own_date() -> None:
    """Two retired keys of one host: each gets its own day and the delay of the inventory."""
    case = {
        "dkim": {
            "selector": "mc2026c",
            "retired_selectors": [
                {"selector": "mc2026a", "retired": "2026-11-01"},
                {"selector": "mc2026b", "retired": "2026-12-05"},
            ],
        },
        "today": "2026-12-07",
    }
    verdicts = _verdicts(case)
    assert (
        verdicts["mc2026a-mx1"][0] == "warn"
        and "may go since 2026-11-08" in verdicts["mc2026a-mx1"][1]
    )
    assert verdicts["mc2026b-mx1"][0] == "ok" and "until 2026-12-12" in verdicts["mc2026b-mx1"][1]
    assert verdicts["mc2026c-mx1"] == ("ok", "the host's key is published", "")
