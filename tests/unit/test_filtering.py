"""The filtering roles' model and readback: which hosts get rspamd, ClamAV and postsrsd, the
DKIM selector and Redis target they are rendered with, the DKIM record a host gives back
(untrusted: only k= and p= are taken), and `mailcfg dns` printing the keys a real apply
made on the example inventory's local hosts (the acceptance of issue 13).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from compiler.cli import main
from compiler.render.context import host_role_names
from compiler.render.filtering import dkim_selector, make_redis_server
from compiler.render.render import render_host
from compiler.render.resolve import resolve_host
from compiler.render.roles import default_roles_dir, load_roles, make_activations, role_defaults
from compiler.tools.dkimkeys import make_dkim_keys, parse_dkim_record
from compiler.tools.dnsrecords import DKIM_NOTE, quote_txt
from schemas.domain import Domain
from schemas.filtering import Dkim
from schemas.inventory import HostSpec, Inventory, Role
from tests.runtime.dnsserver import Zone, dns_server

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory"
KEY = base64.b64encode(bytes(range(256)) + bytes(38)).decode()  # 392 characters, like RSA 2048
RSPAMADM_FORM = (
    'mc2026a-mx1._domainkey IN TXT ( "v=DKIM1; k=rsa; "\n'
    f'\t"p={KEY[:250]}"\n\t"{KEY[250:]}"\n) ; \n'
)
ED25519_FORM = (
    'mc-x._domainkey IN TXT ( "v=DKIM1; k=ed25519; "\n'
    '\t"p=xtYfzfzt0ACuIvRP4/8A2h/09a9aNka3mHcJfY7tQKc=" ) ;\n'
)
ROLES = load_roles(default_roles_dir())


def test_the_record_forms_the_role_writes_parse() -> None:
    assert parse_dkim_record(RSPAMADM_FORM) == ("rsa", KEY)
    assert parse_dkim_record(f"v=DKIM1; k=rsa; p={KEY}\n") == ("rsa", KEY)
    assert parse_dkim_record(ED25519_FORM) == (
        "ed25519",
        "xtYfzfzt0ACuIvRP4/8A2h/09a9aNka3mHcJfY7tQKc=",
    )
    keys = make_dkim_keys(("example.com", "example.net"), "mc2026a-mx1", RSPAMADM_FORM)
    assert [(k.record_name, k.record_text) for k in keys] == [
        ("mc2026a-mx1._domainkey.example.com.", f"v=DKIM1; k=rsa; p={KEY}"),
        ("mc2026a-mx1._domainkey.example.net.", f"v=DKIM1; k=rsa; p={KEY}"),
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        f'"v=DKIM1; k=rsa; p={KEY}\\" ; evil"',  # an escaped quote: not a plain string
        f"v=DKIM1; k=rsa; p={KEY}; p={KEY}",  # a tag twice
        f"v=DKIM1; k=dsa; p={KEY}",
        "v=DKIM1; k=rsa; p=",
        f"v=DKIM1; k=rsa; p={KEY}\n$ORIGIN evil.test.",  # a second zone line
        f"v=DKIM1; k=rsa; p={KEY[:100]} {KEY[100:]}@x",
        "v=DKIM2; k=rsa; p=" + KEY,
        "v=DKIM1; k=rsa; p=" + "A" * 9000,
        "v=DKIM1; k=rsa; p=" + KEY + "é",
        "",
    ],
)
def test_a_record_that_is_not_a_plain_key_is_refused(hostile: str) -> None:
    with pytest.raises(ValueError):
        parse_dkim_record(hostile)


def test_selectors_are_one_label_per_host() -> None:
    assert dkim_selector("mc2026a", "mx1") == "mc2026a-mx1"
    assert dkim_selector("mc2026a", "Edge_1.b") == "mc2026a-edge-1-b"


@pytest.mark.parametrize(
    ("dsn", "server", "db", "password"),
    [
        ("redis://127.0.0.1:6379/2", "127.0.0.1:6379", "2", None),
        ("redis://redis.internal/0", "redis.internal:6379", "0", None),
        ("redis://:s3cret@10.0.0.5:6380/1", "10.0.0.5:6380", "1", "s3cret"),
        ("unix:///run/redis/redis.sock", "/run/redis/redis.sock", "0", None),
    ],
)
def test_rspamd_uses_the_agents_redis(dsn: str, server: str, db: str, password: str) -> None:
    found = make_redis_server(dsn)
    assert found is not None
    assert (found.server, found.db, found.password) == (server, db, password)


@pytest.mark.parametrize(
    "dsn",
    [
        "sqlite:///var/lib/mailcfg/agent/state.db",
        'redis://:a"b@127.0.0.1:6379/0',  # would end the UCL string
        "redis://127.0.0.1:6379/x",
        "rediss://127.0.0.1:6379/0",  # TLS: rspamd's Redis client has no such form here
        "unix://relative/path",
    ],
)
def test_a_redis_rspamd_cannot_hold_is_none(dsn: str) -> None:
    assert make_redis_server(dsn) is None


def _host(policy: dict[str, object], roles: list[Role], domains: bool = True) -> Inventory:
    spec = HostSpec(address="192.0.2.1", hostname="mx1.example.com", roles=roles, policy=policy)
    served = {"example.com": Domain(domain="example.com")} if domains else {}
    return Inventory(hosts={"mx1": spec}, domains=served)


@pytest.mark.parametrize(
    ("policy", "roles", "expected"),
    [
        ({}, [Role.POSTFIX], []),
        ({"dkim": {}}, [Role.POSTFIX], ["rspamd"]),
        ({"dmarc": {}}, [Role.POSTFIX], ["rspamd"]),
        ({"spam_actions": {}}, [Role.POSTFIX], ["rspamd"]),
        ({"antivirus": True}, [Role.POSTFIX], ["clamav", "rspamd"]),
        ({"srs": True}, [Role.POSTFIX], ["srs"]),
        # Without Postfix there is no mail to filter or sign.
        ({"dkim": {}, "antivirus": True, "srs": True}, [Role.DOVECOT], []),
    ],
)
def test_filter_roles_come_with_postfix_and_the_policy(
    policy: dict[str, object], roles: list[Role], expected: list[str]
) -> None:
    cfg = resolve_host(_host(policy, roles), "mx1", role_defaults(ROLES))
    names = host_role_names(cfg)
    assert [n for n in names if n in ("rspamd", "clamav", "srs")] == expected
    main_cf = render_host(cfg, ROLES).get("/etc/postfix/main.cf")
    if main_cf is not None:
        text = main_cf.content.decode()
        assert ("smtpd_milters = inet:127.0.0.1:11332" in text) == ("rspamd" in expected)
        assert ("sender_canonical_maps" in text) == ("srs" in expected)


def test_srs_without_a_served_domain_has_nothing_to_rewrite_into() -> None:
    cfg = resolve_host(_host({"srs": True}, [Role.POSTFIX], False), "mx1", role_defaults(ROLES))
    assert "srs" not in host_role_names(cfg)
    assert (
        "sender_canonical_maps"
        not in render_host(cfg, ROLES)["/etc/postfix/main.cf"].content.decode()
    )


# --- the acceptance: apply the example, then `mailcfg dns` ---------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """The example inventory, applied to its local hosts (the rspamd role's build makes each
    host's key with rspamadm, or openssl where rspamd is not installed)."""
    if not (shutil.which("rspamadm") or shutil.which("openssl")):
        pytest.skip("neither rspamadm nor openssl is installed")
    inv = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inv, ignore=shutil.ignore_patterns(".mailcfg"))
    return inv


def _dns(inv: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, str]:
    assert main(["dns", str(inv), *extra]) == 0
    out, err = capsys.readouterr()
    return out, err


def _public_key(key_file: Path) -> str:
    der = subprocess.run(
        ["openssl", "pkey", "-in", str(key_file), "-pubout", "-outform", "DER"],
        capture_output=True,
        check=True,
    ).stdout
    return base64.b64encode(der).decode()


def test_dns_prints_each_hosts_key_after_the_first_apply(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = _dns(example, capsys)
    assert "_domainkey" not in out
    assert "; note: mx1: DKIM selector mc2026a-mx1: no key yet; `mailcfg apply` makes it" in out

    assert main(["apply", str(example), "--yes"]) == 0
    capsys.readouterr()
    records = json.loads(_dns(example, capsys, "--format", "json")[0])
    dkim = {(r["name"], r["value"]) for r in records if "._domainkey." in r["name"]}
    keys = {
        host: _public_key(example / f".mailcfg/hosts/{host}/var/lib/rspamd/dkim/mc2026a-{host}.key")
        for host in ("mx1", "mx2")
    }
    # mx1 serves both domains, mx2 only example.com.
    assert dkim == {
        ("mc2026a-mx1._domainkey.example.com.", f"v=DKIM1; k=rsa; p={keys['mx1']}"),
        ("mc2026a-mx1._domainkey.example.org.", f"v=DKIM1; k=rsa; p={keys['mx1']}"),
        ("mc2026a-mx2._domainkey.example.com.", f"v=DKIM1; k=rsa; p={keys['mx2']}"),
    }
    assert {r["zone"] for r in records if "._domainkey." in r["name"]} == {
        "example.com",
        "example.org",
    }
    key_file = example / ".mailcfg/hosts/mx1/var/lib/rspamd/dkim/mc2026a-mx1.key"
    assert key_file.stat().st_mode & 0o777 == 0o640
    # The private key is in no release and no plan.
    private = key_file.read_text().splitlines()[1]
    releases = example / ".mailcfg/hosts/mx1/var/lib/mailcfg"
    assert not [
        p for p in releases.rglob("*") if p.is_file() and private.encode() in p.read_bytes()
    ]
    assert main(["plan", str(example)]) == 0
    assert private not in capsys.readouterr().out

    # A second apply keeps the key; --offline asks no host.
    assert main(["apply", str(example), "--yes"]) == 0
    assert _public_key(key_file) == keys["mx1"]
    capsys.readouterr()
    out, _ = _dns(example, capsys, "--offline")
    assert "_domainkey" not in out and DKIM_NOTE in out


def test_an_unusable_record_on_a_host_gives_a_note_not_a_record(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apply", str(example), "--yes", "--host", "mx2"]) == 0
    record = example / ".mailcfg/hosts/mx2/var/lib/rspamd/dkim/mc2026a-mx2.txt"
    record.write_text('v=DKIM1; k=rsa; p=AAAA"\n$INCLUDE /etc/passwd\n')
    capsys.readouterr()
    out, _ = _dns(example, capsys)
    assert "_domainkey" not in out
    assert "; note: mx2: DKIM selector mc2026a-mx2: " in out and "is unusable" in out
    assert "$INCLUDE" not in out


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_the_roles_build_makes_the_key_once(
    algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rspamd role's build, run as the on-host program runs it on a local root: the key
    and its record appear under the root, 0640 and 0644; a second run keeps them."""
    if shutil.which("rspamadm") is None:
        pytest.skip("rspamd is not installed")
    cfg = resolve_host(
        _host({"dkim": {"algorithm": algorithm}}, [Role.POSTFIX]), "mx1", role_defaults(ROLES)
    )
    (activation,) = make_activations(cfg, ROLES, ["rspamd"])
    root = tmp_path / "root"
    root.mkdir()

    def build() -> None:
        for command in activation.build:
            subprocess.run(
                command, shell=True, check=True, cwd=root, env={"MAILCFG_ROOT": str(root),
                                                                "PATH": "/usr/bin:/bin"},
            )  # fmt: skip

    build()
    key = root / "var/lib/rspamd/dkim/mc2026a-mx1.key"
    record = key.with_suffix(".txt")
    assert key.stat().st_mode & 0o777 == 0o640 and record.stat().st_mode & 0o777 == 0o644
    kind, public = parse_dkim_record(record.read_text())
    assert kind == algorithm
    before = key.read_bytes()
    build()
    assert key.read_bytes() == before and parse_dkim_record(record.read_text()) == (kind, public)
    assert not list(key.parent.glob("*.new"))


def _set_dkim(inv: Path, lines: str) -> None:
    text = (inv / "mailcfg.yml").read_text()
    start = text.index("\n  dkim:\n") + 1
    end = text.index("\n  dmarc:\n", start) + 1
    (inv / "mailcfg.yml").write_text(text[:start] + "  dkim:\n" + lines + text[end:])


def _dkim_records(inv: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    records = json.loads(_dns(inv, capsys, "--format", "json")[0])
    return {
        r["name"]: r["value"] for r in records if r["name"].endswith("._domainkey.example.com.")
    }


def test_a_rotation_publishes_the_next_key_first_and_keeps_the_old_one_published(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signing_conf = example / ".mailcfg/hosts/mx2/etc/rspamd/local.d/dkim_signing.conf"
    assert main(["apply", str(example), "--yes", "--host", "mx2"]) == 0
    capsys.readouterr()
    old = _dkim_records(example, capsys)["mc2026a-mx2._domainkey.example.com."]
    assert 'selector = "mc2026a-mx2"; },\n    ];' in signing_conf.read_text()

    # Step 1: the next key is made and printed; rspamd is given both keys and signs with
    # each one only while the DNS serves it (check_pubkey).
    _set_dkim(example, "    selector: mc2026a\n    rotate: {selector: mc2026b}\n")
    assert main(["apply", str(example), "--yes", "--host", "mx2"]) == 0
    capsys.readouterr()
    out, _ = _dns(example, capsys)
    assert "; note: mx2: DKIM rotation to mc2026b-mx2: publish its record" in out
    step1 = _dkim_records(example, capsys)
    assert step1["mc2026a-mx2._domainkey.example.com."] == old
    upcoming = step1["mc2026b-mx2._domainkey.example.com."]
    assert upcoming != old
    conf = signing_conf.read_text()
    assert "check_pubkey = true;\nallow_pubkey_mismatch = false;\n" in conf
    assert (
        '      { path = "/var/lib/rspamd/dkim/mc2026a-mx2.key"; selector = "mc2026a-mx2"; },\n'
        '      { path = "/var/lib/rspamd/dkim/mc2026b-mx2.key"; selector = "mc2026b-mx2"; },\n'
    ) in conf

    # Step 2: only the new key signs; the old record is still printed while it is retired.
    _set_dkim(
        example,
        "    selector: mc2026b\n"
        "    retired_selectors: [{selector: mc2026a, retired: 2026-12-07}]\n",
    )
    assert main(["apply", str(example), "--yes", "--host", "mx2"]) == 0
    capsys.readouterr()
    out, _ = _dns(example, capsys)
    assert (
        "; note: mx2: DKIM selector mc2026a-mx2: retired on 2026-12-07: keep its record until "
        "2026-12-14, then remove it and drop mc2026a from retired_selectors"
    ) in out
    step2 = _dkim_records(example, capsys)
    assert step2["mc2026b-mx2._domainkey.example.com."] == upcoming
    assert step2["mc2026a-mx2._domainkey.example.com."] == old
    conf = signing_conf.read_text()
    assert 'selector = "mc2026b-mx2";' in conf and 'selector = "mc2026a-mx2"' not in conf

    # Step 3: retired for good (mx1 was never applied here: it has no key to print).
    _set_dkim(example, "    selector: mc2026b\n")
    assert set(_dkim_records(example, capsys)) == {"mc2026b-mx2._domainkey.example.com."}


def test_a_selector_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="named twice"):
        Dkim(selector="mc2026a", rotate={"selector": "mc2026a"})
    with pytest.raises(ValueError, match="named twice"):
        Dkim(selector="mc2026b", retired_selectors=["mc2026b"])
    with pytest.raises(ValueError, match="named twice"):
        Dkim.model_validate(
            {"selector": "c", "rotate": {"selector": "a"}, "retired_selectors": [{"selector": "a"}]}
        )


def test_the_older_rotation_fields_still_load() -> None:
    """`next_selector: X` is `rotate: {selector: X}`; a bare retired selector has no date."""
    dkim = Dkim.model_validate({"next_selector": "mc2026b", "retired_selectors": ["mc2025z"]})
    assert dkim.rotate is not None and dkim.rotate.selector == "mc2026b"
    assert dkim.next_selector == "mc2026b"
    assert [(r.selector, r.retired) for r in dkim.retired_selectors] == [("mc2025z", None)]
    with pytest.raises(ValueError, match="not both"):
        Dkim.model_validate({"next_selector": "b", "rotate": {"selector": "c"}})


@pytest.mark.parametrize("day", ["1700000000", 1700000000, "2026-02-30", "07.12.2026", "soon"])
def test_a_retirement_day_is_a_real_iso_date(day: object) -> None:
    with pytest.raises(ValueError, match="retired"):
        Dkim.model_validate({"retired_selectors": [{"selector": "mc2026a", "retired": day}]})


DOCTOR_DNS_PORT = 23450  # issue 13's range (23400-23499)


def _zone_of(records: list[dict[str, object]]) -> dict[str, list[tuple[str, str]]]:
    zone: dict[str, list[tuple[str, str]]] = {}
    for r in records:
        value = str(r["value"])
        if r["type"] == "TXT":
            value = quote_txt(value)
        zone.setdefault(str(r["name"]), []).append((str(r["type"]), value))
    return zone


def test_doctor_checks_the_hosts_keys_against_the_dns(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an apply, doctor compares each DKIM record in the DNS with the key the host
    holds: the records `mailcfg dns` printed are ok; another key under a selector fails."""
    assert main(["apply", str(example), "--yes"]) == 0
    capsys.readouterr()
    records = json.loads(_dns(example, capsys, "--format", "json")[0])
    zone = Zone(_zone_of(records))

    def dkim_checks() -> dict[tuple[str, str], str]:
        with dns_server(zone, DOCTOR_DNS_PORT):
            main(["doctor", str(example), "--format", "json", "--no-smtp",
                  "--resolver", f"127.0.0.1:{DOCTOR_DNS_PORT}", "--timeout", "2"])  # fmt: skip
        checks = json.loads(capsys.readouterr().out)["checks"]
        return {
            (c["subject"], c["check"]): c["status"] for c in checks if c["check"].startswith("DKIM")
        }

    assert dkim_checks() == {
        ("example.com", "DKIM mc2026a-mx1"): "ok",
        ("example.com", "DKIM mc2026a-mx2"): "ok",
        ("example.org", "DKIM mc2026a-mx1"): "ok",
    }
    name = "mc2026a-mx2._domainkey.example.com."
    zone.records[name] = [("TXT", quote_txt(f"v=DKIM1; k=rsa; p={KEY}"))]
    assert dkim_checks()[("example.com", "DKIM mc2026a-mx2")] == "fail"
    del zone.records[name]
    assert dkim_checks()[("example.com", "DKIM mc2026a-mx2")] == "fail"


def test_an_unreachable_host_gives_a_note_and_the_others_records_still_print(
    example: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["apply", str(example), "--yes", "--host", "mx1"]) == 0
    text = (example / "mailcfg.yml").read_text()
    local = "    transport: local\n    root: .mailcfg/hosts/mx2\n    ssh:\n      user: deploy\n"
    assert local in text
    (example / "mailcfg.yml").write_text(
        text.replace("    address: 192.0.2.25\n", "    address: 127.0.0.1\n")
        .replace(
            local, "    transport: ssh\n    ssh:\n      connect_timeout: 2\n      user: deploy\n"
        )
        .replace("      port: 2222\n", "      port: 23452\n")  # nothing listens there
    )
    capsys.readouterr()
    out, _ = _dns(example, capsys)
    assert "; note: mx2: DKIM keys not read (" in out and "no records from this host" in out
    assert "mc2026a-mx1._domainkey.example.com." in out
    assert "mc2026a-mx2._domainkey" not in out
