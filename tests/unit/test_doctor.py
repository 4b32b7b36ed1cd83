"""`mailcfg doctor` against a real DNS server on loopback (`tests.runtime.dnsserver`) serving
the example inventory's records, and a tiny STARTTLS server with a test CA: the correct zone
is all ok; each broken record (as a data table) gives exactly its fail or warn line and
leaves every other check ok. Ports 23300-23399."""

from __future__ import annotations

import datetime as dt
import json
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from compiler.build import BuildSession
from compiler.cli import main
from compiler.load.layers import resolve_policy
from compiler.tools.dnsrecords import DkimKey, DnsPlan, make_dns_plan, quote_txt
from compiler.tools.doctor import DoctorOptions, Status, doctor_exit_code, run_doctor
from tests.runtime.dnsserver import Record, Zone, dns_server

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory"
DNS_PORT, SMTP_PORT, BAD_SMTP_PORT = 23301, 23302, 23303
RESOLVER = f"127.0.0.1:{DNS_PORT}"
KEY_COM = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" + "c" * 300 + "IDAQAB"
KEY_ORG = "MCowBQYDK2VwAyEA" + "o" * 28
DKIM = (DkimKey("example.com", "mc2026a", KEY_COM), DkimKey("example.org", "mc2026a", KEY_ORG))
Records = dict[str, list[Record]]


def example_plan() -> DnsPlan:
    inventory = BuildSession.open(EXAMPLE, use_cache=False).load().inventory
    policies = {h: resolve_policy(inventory, h) for h in inventory.hosts}
    return make_dns_plan(inventory, policies, dkim_keys=DKIM)


def correct_records(plan: DnsPlan) -> Records:
    """The plan's records as the DNS server serves them (TXT in zone form)."""
    records: Records = {}
    for r in plan.records:
        value = quote_txt(r.value) if r.type == "TXT" else r.value
        records.setdefault(r.name, []).append((r.type, value))
    return records


# --- a STARTTLS server with a test CA -----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_file: Path
    good: ssl.SSLContext  # a certificate for mx1.example.com and mx2.example.com
    wrong: ssl.SSLContext  # one for another name


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(tmp: Path) -> Pki:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("mailcfg test CA"))
        .issuer_name(_name("mailcfg test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def server_context(names: list[str]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = tmp / f"{names[0]}.pem"
        pem.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pem)
        return context

    return Pki(
        tmp / "ca.pem",
        server_context(["mx1.example.com", "mx2.example.com"]),
        server_context(["other.example.net"]),
    )


class _Smtp(socketserver.StreamRequestHandler):
    """Just enough ESMTP: EHLO (offering STARTTLS before TLS), STARTTLS, QUIT."""

    def handle(self) -> None:
        sock: socket.socket | ssl.SSLSocket = self.request
        sock.settimeout(5)
        reader = sock.makefile("rb")
        sock.sendall(b"220 test ESMTP\r\n")
        tls = False
        while line := reader.readline():
            verb = line.strip().upper().split(b" ")[0]
            if verb == b"EHLO":
                sock.sendall(b"250 test\r\n" if tls else b"250-test\r\n250 STARTTLS\r\n")
            elif verb == b"STARTTLS" and not tls:
                sock.sendall(b"220 go ahead\r\n")
                try:
                    sock = self.server.context.wrap_socket(sock, server_side=True)  # type: ignore[attr-defined]
                except (ssl.SSLError, OSError):
                    return
                reader, tls = sock.makefile("rb"), True
            elif verb == b"QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"502 no\r\n")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def starttls_server(port: int, context: ssl.SSLContext) -> Iterator[None]:
    server = _SmtpServer(("127.0.0.1", port), _Smtp)
    server.context = context  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def smtp(pki: Pki) -> Iterator[None]:
    with starttls_server(SMTP_PORT, pki.good):
        yield


def doctor(records: Records, pki: Pki, *, silent: tuple[str, ...] = (), port: int = SMTP_PORT):
    options = DoctorOptions(
        resolver=RESOLVER,
        timeout=1.0,
        smtp_address="127.0.0.1",
        smtp_port=port,
        ca_file=str(pki.ca_file),
    )
    with dns_server(Zone(records, silent=silent), DNS_PORT):
        return run_doctor(example_plan(), options)


# --- the correct zone ---------------------------------------------------------------------------


def test_the_correct_zone_is_all_ok(pki: Pki, smtp: None) -> None:
    checks = doctor(correct_records(example_plan()), pki)
    assert [c for c in checks if c.status is not Status.OK] == []
    kinds = {c.check.split(" ")[0] for c in checks}
    assert kinds == {
        "MX",
        "SPF",
        "DKIM",
        "DMARC",
        "MTA-STS",
        "TLS-RPT",
        "A/AAAA",
        "PTR",
        "DNSBL",
        "SMTP",
    }
    assert doctor_exit_code(checks) == 0
    # Every address of every sending host is checked against SPF; every zone of each host.
    assert sum(c.check.startswith("SPF mx") for c in checks) == 3 + 2
    assert sum(c.check.startswith("DNSBL") for c in checks) == 3 * 2


# --- each kind of broken record -----------------------------------------------------------------


def _set(name: str, rtype: str, *values: str) -> Callable[[Records], None]:
    def change(records: Records) -> None:
        kept = [r for r in records.get(name, []) if r[0] != rtype]
        records[name] = kept + [(rtype, v) for v in values]

    return change


def _set_spf(value: str) -> Callable[[Records], None]:
    def change(records: Records) -> None:
        others = [r for r in records["example.com."] if not r[1].startswith('"v=spf1')]
        records["example.com."] = [*others, ("TXT", quote_txt(value))]

    return change


BROKEN: list[tuple[str, Callable[[Records], None], set[tuple[str, str, str]], str]] = [
    ("missing MX", _set("example.com.", "MX"), {("fail", "example.com", "MX")}, "no MX"),
    (
        "MX without a host",
        _set("example.com.", "MX", "10 mx1.example.com."),
        {("fail", "example.com", "MX")},
        "MX does not name mx2.example.com.",
    ),
    (
        "SPF without a host",
        _set_spf("v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"),
        {("fail", "example.com", "SPF mx2")},
        "192.0.2.25 is not covered: fail",
    ),
    ("SPF +all", _set_spf("v=spf1 +all"), {("fail", "example.com", "SPF")}, "ends in +all"),
    (
        "SPF ~all",
        _set_spf("v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 ip4:192.0.2.25 ~all"),
        {("warn", "example.com", "SPF")},
        "ends in ~all, the inventory says -all",
    ),
    ("no SPF", _set_spf("v=spf2 nothing"), {("fail", "example.com", "SPF")}, "no SPF record"),
    (
        "missing DMARC",
        lambda r: r.pop("_dmarc.example.org."),
        {("fail", "example.org", "DMARC")},
        "no DMARC record",
    ),
    (
        "unparseable DMARC",
        _set("_dmarc.example.org.", "TXT", '"v=DMARC1; p=maybe"'),
        {("fail", "example.org", "DMARC")},
        "unparseable",
    ),
    (
        "DMARC weaker than the inventory",
        _set("_dmarc.example.com.", "TXT", '"v=DMARC1; p=none"'),
        {("warn", "example.com", "DMARC")},
        "p=none, the inventory says p=quarantine",
    ),
    (
        "stale MTA-STS id",
        _set("_mta-sts.example.com.", "TXT", '"v=STSv1; id=20240101"'),
        {("fail", "example.com", "MTA-STS")},
        "stale id 20240101",
    ),
    (
        "missing TLS-RPT",
        lambda r: r.pop("_smtp._tls.example.org."),
        {("fail", "example.org", "TLS-RPT")},
        "no TLS-RPT record",
    ),
    (
        "DKIM key not the host's",
        _set("mc2026a._domainkey.example.com.", "TXT", '"v=DKIM1; k=rsa; p=AAAA"'),
        {("fail", "example.com", "DKIM mc2026a")},
        "the published key is not the host's",
    ),
    (
        "PTR mismatch",
        _set("25.2.0.192.in-addr.arpa.", "PTR", "mail.example.net."),
        {("fail", "mx2", "PTR 192.0.2.25")},
        "names mail.example.net, not the HELO name mx2.example.com",
    ),
    (
        "A record missing",
        _set("mx2.example.com.", "A"),
        {("fail", "mx2", "A/AAAA"), ("fail", "mx2", "PTR 192.0.2.25")},
        "mx2.example.com does not resolve to 192.0.2.25",
    ),
    (
        "listed on a DNSBL",
        _set("25.2.0.192.zen.spamhaus.org.", "A", "127.0.0.2"),
        {("fail", "mx2", "DNSBL zen.spamhaus.org 192.0.2.25")},
        "listed (127.0.0.2)",
    ),
    (
        "DNSBL error code",
        _set("10.2.0.192.zen.spamhaus.org.", "A", "127.255.255.254"),
        {("warn", "mx1", "DNSBL zen.spamhaus.org 192.0.2.10")},
        "no listing",
    ),
]


@pytest.mark.parametrize(
    ("case", "change", "expected", "message"), BROKEN, ids=[b[0] for b in BROKEN]
)
def test_each_broken_record_gives_its_line(
    pki: Pki,
    smtp: None,
    case: str,
    change: Callable[[Records], None],
    expected: set[tuple[str, str, str]],
    message: str,
) -> None:
    records = correct_records(example_plan())
    change(records)
    checks = doctor(records, pki)
    found = {(c.status.value, c.subject, c.check) for c in checks if c.status is not Status.OK}
    assert found == expected
    assert any(message in c.message for c in checks if c.status is not Status.OK), checks
    assert all(c.fix for c in checks if c.status is Status.FAIL)
    assert doctor_exit_code(checks) == (1 if any(s == "fail" for s, _, _ in expected) else 0)


def test_a_dns_server_that_does_not_answer_fails_the_check(pki: Pki, smtp: None) -> None:
    checks = doctor(correct_records(example_plan()), pki, silent=("_dmarc.example.com.",))
    (bad,) = [c for c in checks if c.status is not Status.OK]
    assert (bad.status, bad.subject, bad.check) == (Status.FAIL, "example.com", "DMARC")
    assert bad.message.startswith("could not check: no answer for _dmarc.example.com TXT")


def test_smtp_certificate_for_another_name_and_no_server(pki: Pki) -> None:
    records = correct_records(example_plan())
    with starttls_server(BAD_SMTP_PORT, pki.wrong):
        checks = doctor(records, pki, port=BAD_SMTP_PORT)
    bad = [c for c in checks if c.status is not Status.OK]
    assert {(c.subject, c.check) for c in bad} == {
        ("mx1", f"SMTP 127.0.0.1:{BAD_SMTP_PORT}"),
        ("mx2", f"SMTP 127.0.0.1:{BAD_SMTP_PORT}"),
    }
    assert all("certificate not valid for mx" in c.message for c in bad)
    checks = doctor(records, pki, port=BAD_SMTP_PORT)  # nothing listens now
    bad = [c for c in checks if c.status is not Status.OK]
    assert len(bad) == 2 and all("no SMTP with STARTTLS" in c.message for c in bad)


# --- the command --------------------------------------------------------------------------------


def test_cli_doctor_exit_codes_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    """Without DKIM keys (no rspamd role yet) DKIM warns, which passes (exit 0); a failure
    exits 1; `--format json` is one document, errors included."""
    inventory = BuildSession.open(EXAMPLE, use_cache=False).load().inventory
    policies = {h: resolve_policy(inventory, h) for h in inventory.hosts}
    records = correct_records(make_dns_plan(inventory, policies))
    args = ["doctor", str(EXAMPLE), "--resolver", RESOLVER, "--no-smtp", "--timeout", "1"]
    zone = Zone(records)
    with dns_server(zone, DNS_PORT):
        code = main(args)
        out = capsys.readouterr().out
        assert code == 0
        assert "warn  example.com  DKIM: no signing keys yet; enable `dkim` (rspamd role)" in out
        assert out.endswith(" warn, 0 fail\n")
        zone.records.pop("_dmarc.example.com.")
        code = main([*args, "--format", "json"])
        doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert doc["counts"]["fail"] == 1 and doc["errors"] == []
    (fail,) = [c for c in doc["checks"] if c["status"] == "fail"]
    assert fail["check"] == "DMARC" and fail["fix"].startswith("publish _dmarc.example.com.")
    code = main(["doctor", str(EXAMPLE), "--host", "nosuch", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    assert (
        code == 1
        and doc["checks"] == []
        and "unknown host(s) nosuch" in doc["errors"][0]["message"]
    )
    assert main(["doctor", str(EXAMPLE), "--resolver", "not-an-ip"]) == 1
    assert "is not a name server" in capsys.readouterr().err
