"""DKIM key rotation through a real Postfix + rspamd booted from the rendered tree, a DNS
server on loopback (rspamd's resolver, dkimpy's and doctor's) and a receiving SMTP sink.

With `rotate` set, the rspamd role gives rspamd both keys with `check_pubkey`: a key signs
only while the DNS serves its public key and it matches. So the next key signs exactly once
its record is published, with no apply in between, and `mailcfg doctor` (the same DNS)
says so. Then the inventory's step 2 (the next key becomes the selector, the old one is
retired with a date) leaves one signature, and doctor counts the retired record's days.

Ports 23700 to 23799: listeners at 23700 + the harness offsets, rspamd 23701 to 23703, DNS
23704, the sink 23705 (postsrsd's ports 23706 and 23707 are set but unused: no SRS here).
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dkim
import pytest
from mailhost import MailHost, boot_mailhost, listening_ports, make_traversable, stop_child
from rspamdlab import (
    message,
    postconf,
    rerender_rspamd,
    run_role_builds,
    start_rspamd,
    txt_lookup,
    wait_for,
)
from smtpsink import Received, Sink, smtp_sink

from compiler.push.dkimobserve import host_dkim_keys
from compiler.render.filtering import make_dkim_signing
from compiler.render.resolve import HostConfig
from compiler.tools.dkimkeys import parse_dkim_record
from compiler.tools.dnsrecords import make_dns_plan, quote_txt
from compiler.tools.doctor import DoctorOptions, run_doctor
from schemas.domain import Account, Domain
from schemas.filtering import Dkim
from schemas.inventory import HostSpec, Inventory

pytestmark = pytest.mark.e2e

PORT_BASE = 23700
FILTER_PORTS = {
    "rspamd_proxy": 23701,
    "rspamd_normal": 23702,
    "rspamd_controller": 23703,
    "srs_forward": 23706,
    "srs_reverse": 23707,
}
DNS_PORT = 23704
SINK_PORT = 23705
DNS_TXT = txt_lookup(DNS_PORT)
# pw1 (tests/golden/cases.py H1).
HASH = (
    "{SHA512-CRYPT}$6$JCaYrawv3gYKm50L$GECGzDAs4VodT9z.Er1Ves5KQCYKwpgz3xvRo8tshsPQl7NxXwPBBgJ1"
    "UEi3gmyyoCiu6KsMb3swH2PvGqL6F1"
)
OLD, NEW = "mc2026a-mx1", "mc2026b-mx1"


def make_inventory() -> Inventory:
    com = Domain(domain="example.com", accounts=[Account(name="alice", password=HASH)])
    host = HostSpec(address="127.0.0.1", hostname="mx1.example.com")
    return Inventory(hosts={"mx1": host}, domains={"example.com": com})


def rotation_policy(base: Path) -> dict[str, object]:
    return {
        "dkim": {"selector": "mc2026a", "rotate": {"selector": "mc2026b"}},
        "filter_ports": FILTER_PORTS,
        "spam": {"nameservers": [f"127.0.0.1:{DNS_PORT}"], "dns_timeout": 1.0},
        "paths": {
            "rspamd_config_dir": str(base / "etc/rspamd"),
            "rspamd_dkim_dir": str(base / "lib/rspamd-dkim"),
        },
    }


@dataclass
class Lab:
    mh: MailHost
    sink: Sink
    zone: object  # tests.runtime.dnsserver.Zone
    base: Path
    procs: list[subprocess.Popen[bytes]]


def record_of(lab: Lab, selector: str) -> str:
    """The TXT text of the host's key `selector`, as `mailcfg dns` prints it."""
    text = (Path(lab.mh.cfg.policy.paths.rspamd_dkim_dir) / f"{selector}.txt").read_text()
    algorithm, key = parse_dkim_record(text)
    return f"v=DKIM1; k={algorithm}; p={key}"


def publish(lab: Lab, selector: str, text: str | None) -> None:
    name = f"{selector}._domainkey.example.com."
    records = lab.zone.records  # type: ignore[attr-defined]
    if text is None:
        records.pop(name, None)
    else:
        records[name] = [("TXT", quote_txt(text))]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    from tests.runtime.dnsserver import Zone, dns_server

    base = Path(tempfile.mkdtemp(prefix="mailcfg-e2e-dkimrot-"))
    base.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    zone = Zone(
        {
            "example.com.": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("MX", "10 mx1.example.com.")],
            "mx1.example.com.": [("A", "127.0.0.1")],
        }
    )
    try:
        with (
            dns_server(zone, DNS_PORT),
            smtp_sink(SINK_PORT) as sink,
            boot_mailhost(
                make_inventory(), "mx1", base, PORT_BASE, policy=rotation_policy(base)
            ) as mh,
        ):
            (base / "log").mkdir(exist_ok=True)
            run_role_builds(mh, ["rspamd"])  # both keys, as an apply makes them
            make_traversable(base / "lib/rspamd-dkim")
            procs.append(start_rspamd(base, Path(mh.cfg.policy.paths.rspamd_config_dir)))
            postconf(mh, f"relayhost=[127.0.0.1]:{SINK_PORT}")
            logs = [base / "log/rspamd/rspamd.log", base / "log/rspamd.out"]
            wait_for(lambda: FILTER_PORTS["rspamd_proxy"] in listening_ports("127.0.0.1"),
                  "rspamd", logs)  # fmt: skip
            lab = Lab(mh, sink, zone, base, procs)
            publish(lab, OLD, record_of(lab, OLD))  # published after the first apply
            yield lab
    finally:
        for proc in reversed(procs):
            stop_child(proc)
        if os.environ.get("MAILCFG_KEEP_E2E") != "1":
            shutil.rmtree(base, ignore_errors=True)


def send_signed(lab: Lab) -> Received:
    """alice's mail, submitted with AUTH, as the sink receives it."""
    subject = f"rotation {uuid.uuid4().hex}"
    with smtplib.SMTP(lab.mh.address, lab.mh.ports["submission"], timeout=60,
                      source_address=("127.0.0.3", 0)) as client:  # fmt: skip
        client.starttls(context=ssl._create_unverified_context())
        client.login("alice@example.com", "pw1")
        client.sendmail(
            "alice@example.com", ["far@sink.test"],
            message("alice@example.com", "far@sink.test", subject),
        )  # fmt: skip
    return lab.sink.wait_for(lambda m: subject.encode() in m.data)


def signatures(data: bytes) -> dict[str, bool]:
    """Each DKIM signature's selector and whether dkimpy verifies it against the DNS."""
    verifier = dkim.DKIM(data)
    headers = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    found = {}
    for index, value in enumerate(headers):
        tags = dict(
            t.strip().split(b"=", 1) for t in value.replace(b"\r\n", b"").split(b";") if b"=" in t
        )
        assert tags[b"d"] == b"example.com", value
        found[tags[b"s"].decode()] = dkim.DKIM(data).verify(idx=index, dnsfunc=DNS_TXT)
    assert len(found) == len(headers), headers
    return found


def doctor_dkim(lab: Lab, cfg: HostConfig, today: date) -> dict[str, tuple[str, str]]:
    """doctor's DKIM checks of the host's keys (read from its key directory, as observe
    does) against the loopback DNS server: selector -> (status, message)."""
    sign = make_dkim_signing(cfg)
    assert sign is not None
    records = {
        k.record_path: Path(k.record_path).read_text()
        for k in sign.published
        if Path(k.record_path).exists()
    }
    keys, _notes = host_dkim_keys("mx1", sign, records)
    plan = make_dns_plan(make_inventory(), {"mx1": cfg.policy}, (), keys, [])
    options = DoctorOptions(resolver=f"127.0.0.1:{DNS_PORT}", timeout=2.0, smtp=False, today=today)
    return {
        c.check.removeprefix("DKIM "): (c.status.value, c.message)
        for c in run_doctor(plan, options)
        if c.check.startswith("DKIM ")
    }


def restart_rspamd_with(lab: Lab, dkim_: Dkim) -> HostConfig:
    """The rspamd role's dkim_signing.conf for `dkim_`, installed, and rspamd restarted."""
    return rerender_rspamd(lab.mh.cfg, lab.procs, lab.base, {"dkim": dkim_}, "dkim_signing.conf")


def test_the_next_key_signs_once_the_dns_serves_it(lab: Lab) -> None:
    """Step 1 of a rotation, one apply: both keys are made and given to rspamd. While the next
    key is not in the DNS (or another key is published under its selector) mail carries only
    the current key's signature; once its record is added to the DNS server the next message
    carries both, each verified by dkimpy. rspamd asks the DNS before each signature and
    keeps no cache of its own: no restart, no wait. Doctor reports each state."""
    today = date(2026, 12, 7)
    cfg = lab.mh.cfg
    conf = (Path(cfg.policy.paths.rspamd_config_dir) / "local.d/dkim_signing.conf").read_text()
    assert f'selector = "{OLD}"' in conf and f'selector = "{NEW}"' in conf

    assert signatures(send_signed(lab).data) == {OLD: True}
    checks = doctor_dkim(lab, cfg, today)
    assert checks[OLD] == ("ok", "the host's key is published")
    assert checks[NEW][0] == "warn" and "not published yet" in checks[NEW][1], checks

    # Another key under the next selector (a stale or mistyped record): not signed with.
    publish(lab, NEW, record_of(lab, OLD))
    assert signatures(send_signed(lab).data) == {OLD: True}
    assert doctor_dkim(lab, cfg, today)[NEW][0] == "fail"

    publish(lab, NEW, record_of(lab, NEW))
    assert signatures(send_signed(lab).data) == {OLD: True, NEW: True}
    status, said = doctor_dkim(lab, cfg, today)[NEW]
    assert status == "ok" and f"next key {NEW} published and matching: signing with both" in said
    assert "set selector: mc2026b" in said and "{selector: mc2026a, retired: 2026-12-07}" in said


def test_after_the_switch_only_the_new_key_signs_and_the_old_record_is_counted_down(
    lab: Lab,
) -> None:
    """Step 2: `selector: mc2026b` and mc2026a retired on 2026-12-07 (rendered, rspamd
    restarted as an apply reloads it): one signature, the new key's; the old record stays
    published and doctor says until when, then that it may go."""
    publish(lab, NEW, record_of(lab, NEW))
    retired = Dkim.model_validate(
        {"selector": "mc2026b", "retired_selectors": [{"selector": "mc2026a",
                                                        "retired": "2026-12-07"}]}
    )  # fmt: skip
    try:
        cfg = restart_rspamd_with(lab, retired)
        assert signatures(send_signed(lab).data) == {NEW: True}
        checks = doctor_dkim(lab, cfg, date(2026, 12, 9))
        assert checks[NEW] == ("ok", "the host's key is published")
        assert checks[OLD] == (
            "ok",
            f"retired {OLD} since 2026-12-07: keep its record until 2026-12-14, then remove "
            "it and drop mc2026a from retired_selectors",
        )
        status, said = doctor_dkim(lab, cfg, date(2026, 12, 14))[OLD]
        assert status == "warn" and "its record may go since 2026-12-14" in said
        assert doctor_dkim(lab, cfg, date(2026, 12, 6))[OLD][0] == "fail"  # in the future
    finally:
        restart_rspamd_with(lab, lab.mh.cfg.policy.dkim or Dkim())
