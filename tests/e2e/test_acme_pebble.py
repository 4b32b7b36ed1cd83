"""ACME end to end: one namespace host over SSH with real Postfix, Dovecot and certbot, and
Debian's `pebble` ACME server on the lab bridge, never the internet.

The real http-01 path: pebble (198.18.0.1:23200, its HTTPS from a CA the test makes, trusted
by the host through `tls.acme.ca_bundle`) asks a DNS server on loopback (127.0.0.1:23253) for
the host's names, which answer the host's address, and fetches the challenge from certbot's
standalone server in the host on the port pebble's config names (`httpPort` 23280 = the
inventory's `http_port`). PEBBLE_VA_NOSLEEP=1 skips pebble's random validation delay.

The host sees its own /etc/letsencrypt, /var/lib/letsencrypt and /var/log/letsencrypt
(bind mounts in the mount namespace of its sshd, like its /var/lib/mailcfg), so certbot acts
on the host's lineage only. The story, in order: one apply obtains the certificate and
Postfix and Dovecot validate and serve it; `certbot renew --force-renewal` (as certbot's
timer would run it) reloads them through the deploy hook and `activate`; the next plan and
apply find nothing to change.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from netns import NetnsLab, wait_until
from pebble import PebblePorts, running_pebble
from test_push import Fleet, FleetHost

from tests.runtime.dnsserver import Zone, dns_server

pytestmark = pytest.mark.e2e

PORTS = PebblePorts(acme=23200, management=23201, http_01=23280, tls_alpn=23281)
DNS_PORT = 23253
CERTBOT_DIRS = ("/etc/letsencrypt", "/var/lib/letsencrypt", "/var/log/letsencrypt")
LIVE = "etc/letsencrypt/live/mailcfg"


@dataclass
class Acme:
    fleet: Fleet
    host: FleetHost
    letsencrypt: Path  # what the host sees as /etc/letsencrypt
    ca: Path

    @property
    def names(self) -> list[str]:
        return [f"mx.{self.host.domain}", f"imap.{self.host.domain}"]

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(
            (self.letsencrypt / "live/mailcfg/cert.pem").read_bytes()
        )

    def in_host(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.fleet.lab.run_in_host(self.host.net, command, check=False, timeout=300)


def bind_certbot_dirs(lab: NetnsLab, host: FleetHost) -> Path:
    """The host's own certbot directories, bound in its sshd's mount namespace."""
    private = host.net.root / "certbot"
    for directory in CERTBOT_DIRS:
        source = private / directory.strip("/").replace("/", "-")
        source.mkdir(parents=True, exist_ok=True)
        Path(directory).mkdir(parents=True, exist_ok=True)  # the mount point
        lab.run_in_host(host.net, f"mount --bind {source} {directory}")
    return private / "etc-letsencrypt"


@pytest.fixture(scope="module")
def acme(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Acme]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd, Postfix, Dovecot)")
    workdir = tmp_path_factory.mktemp("acme")
    with NetnsLab() as lab:
        fleet = Fleet(lab, workdir, names=("a",))
        host = fleet.hosts["a"]
        letsencrypt = bind_certbot_dirs(lab, host)
        names = [f"mx.{host.domain}", f"imap.{host.domain}"]
        zone = Zone({name: [("A", host.net.address)] for name in names})
        with (
            dns_server(zone, DNS_PORT) as dns,
            running_pebble(workdir / "pebble", PORTS, dns) as ca,
        ):
            state = Acme(fleet, host, letsencrypt, ca)
            fleet.host_policy["a"] = {
                "tls": {
                    "cert": f"/{LIVE}/fullchain.pem",
                    "key": f"/{LIVE}/privkey.pem",
                    "acme": {
                        "email": f"hostmaster@{host.domain}",
                        "directory": PORTS.directory,
                        "names": [state.names[1]],
                        "http_port": PORTS.http_01,
                        "ca_bundle": str(ca),
                    },
                }
            }
            fleet.write_inventory()
            try:
                yield state
            finally:
                fleet.stop_services(host)


def served_certificate(host: FleetHost) -> x509.Certificate:
    """The certificate Dovecot presents after IMAP STARTTLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4(host.net.address, 143, timeout=20) as imap:
        imap.starttls(ssl_context=ctx)
        der = imap.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def smtp_certificate(host: FleetHost) -> x509.Certificate:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(host.net.address, 25, timeout=20) as smtp:
        smtp.starttls(context=ctx)
        der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_one_apply_obtains_a_certificate_from_pebble_that_postfix_and_dovecot_serve(
    acme: Acme,
) -> None:
    fleet, host = acme.fleet, acme.host
    result = fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    cert = acme.certificate()
    issuer = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert "Pebble" in str(issuer), issuer
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(acme.names)
    main_cf = (host.postfix_dir / "main.cf").read_text()
    assert f"smtpd_tls_cert_file = /{LIVE}/fullchain.pem\n" in main_cf
    assert f"ssl_cert = </{LIVE}/fullchain.pem\n" in host.dovecot_conf.read_text()
    # Postfix and Dovecot validated it (the apply's validate step) and now serve it.
    fleet.start_services(host)
    assert served_certificate(host).serial_number == cert.serial_number
    assert smtp_certificate(host).serial_number == cert.serial_number
    # No snakeoil warning for this host: its pair is certbot's.
    assert "snakeoil" not in result.stderr


def test_renewal_reloads_postfix_and_dovecot_through_activate(acme: Acme) -> None:
    host = acme.host
    before = acme.certificate().serial_number
    maillog = host.base / "log/mail.log"
    reloads_before = maillog.read_text().count("reload -- version")
    master_pid = (host.queue_dir / "pid/master.pid").read_text().strip()
    renew = acme.in_host(
        f"REQUESTS_CA_BUNDLE={acme.ca} certbot renew --force-renewal --no-random-sleep-on-renew"
    )
    assert renew.returncode == 0, renew.stdout + renew.stderr
    after = acme.certificate().serial_number
    assert after != before
    # The deploy hook ran `activate`: its reply is in certbot's log.
    log = (acme.letsencrypt.parent / "var-log-letsencrypt/letsencrypt.log").read_text()
    hook = [line for line in log.splitlines() if "hook" in line.lower() or '"roles"' in line]
    assert any("renewal-hooks/deploy/mailcfg" in line for line in hook), hook
    assert any('"roles": ["dovecot", "postfix"]' in line for line in hook), log[-4000:]
    # Postfix reread its config (same master), Dovecot serves the new certificate.
    wait_until(
        lambda: maillog.read_text().count("reload -- version") > reloads_before,
        "Postfix's reload in the mail log",
    )
    assert (host.queue_dir / "pid/master.pid").read_text().strip() == master_pid
    assert served_certificate(host).serial_number == after
    assert smtp_certificate(host).serial_number == after


def test_next_plan_and_apply_have_nothing_to_change(acme: Acme) -> None:
    serial = acme.certificate().serial_number
    plan = acme.fleet.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    result = acme.fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no changes" in result.stdout, result.stdout
    assert acme.certificate().serial_number == serial  # certbot renewed nothing
