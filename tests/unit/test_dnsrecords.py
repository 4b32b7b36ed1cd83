"""`mailcfg dns`: the records of the example inventory as golden zone text and JSON, every
zone line read back by dnspython, TXT splitting and escaping, per-domain overrides, `--host`,
DKIM records from known keys, and hostile values that never reach a zone line.

`MAILCFG_UPDATE_GOLDEN=1` rewrites the golden files (review the diff)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
from pydantic import ValidationError

from compiler.build import BuildSession
from compiler.cli import main
from compiler.load.layers import resolve_policy
from compiler.tools.dnsrecords import (
    DKIM_NOTE,
    DkimKey,
    DnsPlan,
    format_json,
    format_zone,
    make_dns_plan,
    quote_txt,
)
from schemas.dns import DnsSettings
from schemas.inventory import HostSpec, Inventory

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory"
GOLDEN = Path(__file__).parent / "data" / "dns"
UPDATE = os.environ.get("MAILCFG_UPDATE_GOLDEN") == "1"


def example_plan(hosts: tuple[str, ...] = (), dkim: tuple[DkimKey, ...] = ()) -> DnsPlan:
    session = BuildSession.open(EXAMPLE, use_cache=False)
    if not dkim:
        return session.dns_plan(hosts)
    inventory = session.load().inventory
    policies = {h: resolve_policy(inventory, h) for h in inventory.hosts}
    return make_dns_plan(inventory, policies, hosts, dkim)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def zone_lines(text: str) -> list[list[str]]:
    """The record lines of zone text, each as [name, ttl, class, type, rdata]."""
    return [line.split("\t") for line in text.splitlines() if line and not line.startswith(";")]


# --- the example inventory --------------------------------------------------------------------


def test_example_zone_is_golden_and_every_line_parses() -> None:
    text = format_zone(example_plan())
    check_golden("example.zone", text)
    lines = zone_lines(text)
    assert len(lines) > 30
    for name, ttl, klass, rtype, rdata in lines:
        assert name.endswith(".") and klass == "IN" and ttl == "3600"
        dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata)
    # The example.com section is one zone file dnspython reads whole (absolute names).
    section = text.split("; zone example.com.\n")[1].split("\n\n")[0]
    zone = dns.zone.from_text(section, origin="example.com.", relativize=False, check_origin=False)
    assert zone.find_rdataset("example.com.", "MX")
    assert "; note: " + DKIM_NOTE in text


def test_example_json_is_golden_and_matches_the_zone() -> None:
    plan = example_plan()
    text = format_json(plan)
    check_golden("example.json", text)
    records = json.loads(text)
    assert all(set(r) == {"name", "type", "ttl", "value", "zone"} for r in records)
    assert len(records) == len(zone_lines(format_zone(plan)))
    spf = next(r for r in records if r["name"] == "example.com." and r["type"] == "TXT")
    assert spf["value"] == "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ip4:192.0.2.25 -all"
    ptr = [r for r in records if r["type"] == "PTR"]
    assert all(r["zone"] is None for r in ptr) and len(ptr) == 3


def test_example_records_follow_the_inventory() -> None:
    plan = example_plan()
    by = {(r.name, r.type): r.value for r in plan.records}
    assert by[("_dmarc.example.org.", "TXT")] == (
        "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.com"
    )
    # Reports about example.org go to example.com, which must authorise them (RFC 7489 7.1).
    assert by[("example.org._report._dmarc.example.com.", "TXT")] == "v=DMARC1"
    assert by[("10.2.0.192.in-addr.arpa.", "PTR")] == "mx1.example.com."
    # example.org is served by mx1 only: one MX, and mx2's address is not in its SPF.
    assert [r.value for r in plan.records if r.name == "example.org." and r.type == "MX"] == [
        "10 mx1.example.com."
    ]
    assert "192.0.2.25" not in by[("example.org.", "TXT")]
    policy = next(d for d in plan.domains if d.domain == "example.com").mta_sts_policy
    assert policy == (
        "version: STSv1\r\nmode: testing\r\nmx: mx1.example.com\r\nmx: mx2.example.com\r\n"
        "max_age: 604800\r\n"
    )


def test_mta_sts_id_changes_exactly_with_the_policy(tmp_path: Path) -> None:
    ids = {d.domain: d.mta_sts_id for d in example_plan().domains}
    copy = tmp_path / "inv"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".mailcfg"))
    main_file = copy / "mailcfg.yml"
    main_file.write_text(main_file.read_text().replace("max_age: 604800", "max_age: 86400"))
    changed = {d.domain: d.mta_sts_id for d in BuildSession.open(copy).dns_plan().domains}
    assert ids.keys() == changed.keys() and all(ids[d] != changed[d] for d in ids)
    main_file.write_text(main_file.read_text().replace("ttl: 3600", "ttl: 7200"))
    again = {d.domain: d.mta_sts_id for d in BuildSession.open(copy).dns_plan().domains}
    assert again == changed  # the TTL is not in the policy file


def test_host_selects_its_domains_and_its_own_records() -> None:
    plan = example_plan(("mx2",))
    assert [d.domain for d in plan.domains] == ["example.com"]
    # The domain's records still name every host that serves it.
    mx = [r.value for r in plan.records if r.type == "MX"]
    assert mx == ["10 mx1.example.com.", "10 mx2.example.com."]
    assert [r.name for r in plan.host_records if r.type == "A"] == ["mx2.example.com."]


def test_a_domain_file_overrides_dmarc_and_mta_sts(tmp_path: Path) -> None:
    copy = tmp_path / "inv"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns(".mailcfg"))
    domain_file = copy / "domains" / "example.org.yml"
    domain_file.write_text(
        domain_file.read_text() + "\ndns:\n  dmarc: {policy: reject}\n  mta_sts: {mode: enforce}\n"
    )
    plan = BuildSession.open(copy).dns_plan()
    by = {(r.name, r.type): r.value for r in plan.records}
    assert by[("_dmarc.example.org.", "TXT")].startswith("v=DMARC1; p=reject; rua=mailto:")
    assert by[("_dmarc.example.com.", "TXT")].startswith("v=DMARC1; p=quarantine;")
    org = next(d for d in plan.domains if d.domain == "example.org")
    assert org.mta_sts_policy is not None and "mode: enforce\r\n" in org.mta_sts_policy


def test_dkim_records_from_known_keys() -> None:
    key = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "x" * 350 + "IDAQAB"
    plan = example_plan(dkim=(DkimKey("example.com", "mc2026a", key),))
    zone = format_zone(plan)
    (line,) = [x for x in zone_lines(zone) if x[0] == "mc2026a._domainkey.example.com."]
    rdata = dns.rdata.from_text("IN", "TXT", line[4])
    assert b"".join(rdata.strings).decode() == f"v=DKIM1; k=rsa; p={key}"  # type: ignore[attr-defined]
    assert all(len(s) <= 255 for s in rdata.strings)  # type: ignore[attr-defined]
    assert DKIM_NOTE not in zone


def test_cli_dns_formats_and_policy_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dns", str(EXAMPLE), "--format", "json", "--offline"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) and DKIM_NOTE in err
    assert main(["dns", str(EXAMPLE), "--mta-sts-policy", "example.org"]) == 0
    assert capsys.readouterr().out.startswith("version: STSv1\r\nmode: testing\r\n")
    assert main(["dns", str(EXAMPLE), "--host", "nosuch"]) == 1
    assert "unknown host(s) nosuch" in capsys.readouterr().err


# --- TXT quoting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "v=spf1 -all",
        'say "hi" \\ there',
        "x" * 255,
        "y" * 256,
        "z" * 700,
        'a"\\' * 200,  # escapes never split across two strings
        "line\nbreak\ttab\x00nul\x7f",
        "é unicode ☃",
    ],
)
def test_quote_txt_round_trips_through_dnspython(text: str) -> None:
    quoted = quote_txt(text)
    assert "\n" not in quoted and "\r" not in quoted
    rdata = dns.rdata.from_text("IN", "TXT", quoted)
    strings = rdata.strings  # type: ignore[attr-defined]
    assert b"".join(strings) == text.encode()
    assert all(len(s) <= 255 for s in strings)
    assert len(strings) == max(1, -(-len(text.encode()) // 255))


def test_quote_txt_escapes() -> None:
    assert quote_txt('a"b\\c') == '"a\\"b\\\\c"'
    assert quote_txt("a\nb") == '"a\\010b"'
    assert quote_txt("x" * 256) == f'"{"x" * 255}" "x"'


# --- hostile values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rua",
    [
        'x"@example.com',
        "x@example.com\n$ORIGIN evil.example.",
        "x;p=none@example.com",
        "a,b@example.com",
        "x!10m@example.com",
        "x@exa mple.com",
    ],
)
def test_a_hostile_report_address_is_refused(rua: str) -> None:
    with pytest.raises(ValidationError):
        DnsSettings.model_validate({"dmarc": {"rua": rua}})
    with pytest.raises(ValidationError):
        DnsSettings.model_validate({"tls_rpt": {"rua": rua}})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "169.254.1.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:192.0.2.1",
        "224.0.0.1",
        "0.0.0.0",
        "192.0.2.1%eth0",
        "192.0.2.1\n",
        "mx1.example.com",
        "192.0.2.1 A 6.6.6.6",
    ],
)
def test_a_non_public_address_is_refused(address: str) -> None:
    with pytest.raises(ValidationError):
        HostSpec.model_validate(
            {"address": "192.0.2.1", "hostname": "mx.example.com", "public_addresses": [address]}
        )


def test_a_hostile_dkim_key_stays_inside_its_record() -> None:
    """Keys come from the hosts: whatever one holds, it is one quoted TXT value."""
    hostile = 'AAAA"\n@ 60 IN A 6.6.6.6\n; "'
    plan = example_plan(dkim=(DkimKey("example.com", "s1", hostile),))
    text = format_zone(plan)
    assert "\n@ 60 IN A" not in text
    (line,) = [x for x in zone_lines(text) if x[0] == "s1._domainkey.example.com."]
    rdata = dns.rdata.from_text("IN", "TXT", line[4])
    assert b"".join(rdata.strings).decode().endswith(hostile)  # type: ignore[attr-defined]


def test_inventory_records_are_the_validated_values() -> None:
    """No record value holds a character that could end a zone line or a TXT string."""
    inventory: Inventory = BuildSession.open(EXAMPLE, use_cache=False).load().inventory
    plan = make_dns_plan(inventory, {h: resolve_policy(inventory, h) for h in inventory.hosts})
    for record in plan.records:
        assert all(0x20 <= ord(c) < 0x7F for c in record.name + record.value), record
        assert '"' not in record.value and "\\" not in record.value
