"""Deliverability and content filtering through real daemons booted from the rendered tree:
Postfix + Dovecot (the harness), Debian's rspamd as the milter with the rspamd role's files,
ClamAV's clamd with a local EICAR signature (never a download), postsrsd with the srs role's
settings, a DNS server on loopback (rspamd's resolver, and the one dkimpy asks) and a
receiving SMTP sink that Postfix relays outside mail to.

The DKIM key and the SRS secret are made by the roles' own `build` commands. Outside clients
are given public addresses with XCLIENT (rspamd treats loopback clients as local and skips
SPF and DMARC for them, as it should for a webmail on the host).

Ports 23400 to 23499: listeners at 23400 + the harness offsets, rspamd 23401 to 23403,
postsrsd 23404 and 23405, DNS 23406, the sink 23407, Redis 23408.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
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
from smtpsink import Sink, smtp_sink

from compiler.tools.dkimkeys import parse_dkim_record
from compiler.tools.dnsrecords import quote_txt
from runtime.policy.spf import evaluate_spf, make_sync_resolver
from schemas.domain import Account, Domain, Redirect
from schemas.filtering import SpamActions
from schemas.inventory import HostSpec, Inventory
from tests.runtime.dnsserver import Zone, dns_server

pytestmark = pytest.mark.e2e

PORT_BASE = 23400
FILTER_PORTS = {
    "rspamd_proxy": 23401,
    "rspamd_normal": 23402,
    "rspamd_controller": 23403,
    "srs_forward": 23404,
    "srs_reverse": 23405,
}
DNS_PORT = 23406
SINK_PORT = 23407
DNS_TXT = txt_lookup(DNS_PORT)
REDIS_PORT = 23408
# pw1 (tests/golden/cases.py H1).
HASH = (
    "{SHA512-CRYPT}$6$JCaYrawv3gYKm50L$GECGzDAs4VodT9z.Er1Ves5KQCYKwpgz3xvRo8tshsPQl7NxXwPBBgJ1"
    "UEi3gmyyoCiu6KsMb3swH2PvGqL6F1"
)
PASSWORD = "pw1"
SELECTOR = "mc2026a-mx1"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# Outside senders: origin.test (no DMARC) sends from 198.51.100.7; bank.test publishes
# p=reject and sends from nowhere.
ORIGIN_IP = "198.51.100.7"
FORGER_IP = "203.0.113.66"


def make_inventory() -> Inventory:
    com = Domain(
        domain="example.com",
        accounts=[
            Account(name="alice", password=HASH),
            Account(name="postmaster", password=HASH),
        ],
        redirects=[Redirect(name="keeper", to="far@sink.test")],
    )
    host = HostSpec(address="127.0.0.1", hostname="mx1.example.com")
    return Inventory(hosts={"mx1": host}, domains={"example.com": com})


def filter_policy(base: Path) -> dict[str, object]:
    return {
        "dkim": {"selector": "mc2026a"},
        "dmarc": {"enforce": True},
        # Out of reach, so a refusal below is DMARC's or ClamAV's, never the score's.
        "spam_actions": {"add_header": 50, "reject": 100},
        "antivirus": True,
        "srs": True,
        "filter_ports": FILTER_PORTS,
        "spam": {"nameservers": [f"127.0.0.1:{DNS_PORT}"], "dns_timeout": 1.0},
        # The agent's state store (the agent does not run here): rspamd's Bayes goes there.
        "policy_state": f"redis://127.0.0.1:{REDIS_PORT}/5",
        # Per-account Bayes, taught by what a user files as Junk (Dovecot IMAPSieve).
        "bayes": {"per_user": True},
        "paths": {
            "rspamd_config_dir": str(base / "etc/rspamd"),
            "rspamd_dkim_dir": str(base / "lib/rspamd-dkim"),
            "clamd_socket": str(base / "run/clamd.sock"),
            "postsrsd_secret": str(base / "etc/postsrsd.secret"),
            "postsrsd_defaults": str(base / "etc/default/postsrsd"),
        },
    }


def base_zone() -> Zone:
    return Zone(
        {
            # What `mailcfg dns` publishes for the host (its address here is 127.0.0.1).
            "example.com.": [("TXT", "v=spf1 ip4:127.0.0.1 -all"), ("MX", "10 mx1.example.com.")],
            "_dmarc.example.com.": [("TXT", "v=DMARC1; p=reject")],
            "mx1.example.com.": [("A", "127.0.0.1")],
            "origin.test.": [("TXT", f"v=spf1 ip4:{ORIGIN_IP} -all")],
            "bank.test.": [("TXT", "v=spf1 -all")],
            "_dmarc.bank.test.": [("TXT", "v=DMARC1; p=reject")],
        }
    )


@dataclass
class Lab:
    mh: MailHost
    sink: Sink
    zone: Zone
    base: Path
    procs: list[subprocess.Popen[bytes]]


def start_redis(base: Path) -> subprocess.Popen[bytes]:
    out = open(base / "log/redis.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(base)],
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    return proc


def start_clamd(base: Path, socket_path: Path) -> subprocess.Popen[bytes]:
    """clamd with one signature: EICAR's text anywhere in a scanned (decoded) part."""
    db = base / "clamdb"
    db.mkdir()
    (db / "eicar.ndb").write_text(
        f"Mailcfg.Test.EICAR:0:*:{b'EICAR-STANDARD-ANTIVIRUS-TEST-FILE'.hex()}\n"
    )
    conf = base / "etc/clamd.conf"
    conf.write_text(
        f"LocalSocket {socket_path}\nLocalSocketMode 666\nDatabaseDirectory {db}\n"
        f"Foreground yes\nLogFile {base / 'log/clamd.log'}\nPidFile {base / 'run/clamd.pid'}\n"
        "ScanMail yes\n"
    )
    out = open(base / "log/clamd.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["clamd", "--config-file", str(conf)], stdout=out, stderr=subprocess.STDOUT
    )
    out.close()
    return proc


def start_postsrsd(base: Path, defaults: Path) -> subprocess.Popen[bytes]:
    """postsrsd with the srs role's /etc/default/postsrsd, as Debian's init script starts it
    (in the foreground, without its chroot and user switch)."""
    env = dict(line.split("=", 1) for line in defaults.read_text().splitlines() if "=" in line)
    out = open(base / "log/postsrsd.out", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        ["postsrsd", f"-d{env['SRS_DOMAIN']}", f"-s{env['SRS_SECRET']}",
         f"-a{env['SRS_SEPARATOR']}", f"-n{env['SRS_HASHLENGTH']}", f"-N{env['SRS_HASHMIN']}",
         f"-f{env['SRS_FORWARD_PORT']}", f"-r{env['SRS_REVERSE_PORT']}",
         f"-l{env['SRS_LISTEN_ADDR']}", f"-X{env['SRS_EXCLUDE_DOMAINS']}"],
        stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out.close()
    return proc


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    base = Path(tempfile.mkdtemp(prefix="mailcfg-e2e-rspamd-"))
    base.chmod(0o755)
    procs: list[subprocess.Popen[bytes]] = []
    zone = base_zone()
    try:
        with (
            dns_server(zone, DNS_PORT),
            smtp_sink(SINK_PORT) as sink,
            boot_mailhost(
                make_inventory(), "mx1", base, PORT_BASE, policy=filter_policy(base)
            ) as mh,
        ):
            for d in ("run", "etc/default", "log"):
                (base / d).mkdir(parents=True, exist_ok=True)
            run_role_builds(mh, ["rspamd", "srs"])
            make_traversable(base / "lib/rspamd-dkim")
            paths = mh.cfg.policy.paths
            procs.append(start_redis(base))
            procs.append(start_clamd(base, Path(paths.clamd_socket)))
            procs.append(start_postsrsd(base, Path(paths.postsrsd_defaults)))
            procs.append(start_rspamd(base, Path(paths.rspamd_config_dir)))
            postconf(
                mh,
                f"relayhost=[127.0.0.1]:{SINK_PORT}",
                "smtpd_authorized_xclient_hosts=127.0.0.0/8",
            )
            logs = [base / "log/rspamd/rspamd.log", base / "log/rspamd.out",
                    base / "log/clamd.log", base / "log/postsrsd.out"]  # fmt: skip
            wanted = {*FILTER_PORTS.values(), REDIS_PORT}
            wait_for(lambda: wanted <= listening_ports("127.0.0.1"), "rspamd and postsrsd", logs)
            wait_for(Path(paths.clamd_socket).exists, "clamd's socket", logs)
            record = (Path(paths.rspamd_dkim_dir) / f"{SELECTOR}.txt").read_text()
            algorithm, key = parse_dkim_record(record)
            zone.records[f"{SELECTOR}._domainkey.example.com."] = [
                ("TXT", quote_txt(f"v=DKIM1; k={algorithm}; p={key}"))
            ]
            yield Lab(mh, sink, zone, base, procs)
    finally:
        for proc in reversed(procs):
            stop_child(proc)
        if os.environ.get("MAILCFG_KEEP_E2E") != "1":
            shutil.rmtree(base, ignore_errors=True)


def outside(lab: Lab, ip: str) -> smtplib.SMTP:
    """A port-25 session that Postfix (and so rspamd) sees as coming from `ip`."""
    client = smtplib.SMTP(lab.mh.address, lab.mh.ports["smtp"], timeout=60,
                          source_address=("127.0.0.2", 0))  # fmt: skip
    client.ehlo("client.test")
    code, reply = client.docmd("XCLIENT", f"ADDR={ip} NAME=[UNAVAILABLE] HELO=client.test")
    assert code == 220, reply
    client.ehlo("client.test")
    return client


def test_submitted_mail_is_dkim_signed_with_the_hosts_key(lab: Lab) -> None:
    """A user's mail, submitted on 587 with STARTTLS and AUTH, leaves with a DKIM signature
    of the header From's domain under the host's selector, which dkimpy verifies against the
    record the role's key made (served by the DNS server)."""
    subject = f"signed {uuid.uuid4().hex}"
    with smtplib.SMTP(lab.mh.address, lab.mh.ports["submission"], timeout=60,
                      source_address=("127.0.0.3", 0)) as client:  # fmt: skip
        client.starttls(context=ssl._create_unverified_context())
        client.login("alice@example.com", PASSWORD)
        client.sendmail(
            "alice@example.com", ["far@sink.test"],
            message("alice@example.com", "far@sink.test", subject),
        )  # fmt: skip
    got = lab.sink.wait_for(lambda m: subject.encode() in m.data)
    assert got.mail_from == "alice@example.com"
    assert b"DKIM-Signature:" in got.data
    assert f"s={SELECTOR}".encode() in got.data and b"d=example.com" in got.data
    assert dkim.verify(got.data, dnsfunc=DNS_TXT)
    tampered = got.data.replace(b"Hello.", b"Hullo.")
    assert not dkim.verify(tampered, dnsfunc=DNS_TXT)


def test_inbound_mail_gets_authentication_results(lab: Lab) -> None:
    subject = f"inbound {uuid.uuid4().hex}"
    before = len(lab.mh.messages("alice@example.com"))
    with outside(lab, ORIGIN_IP) as client:
        client.sendmail(
            "bob@origin.test", ["alice@example.com"],
            message("bob@origin.test", "alice@example.com", subject),
        )  # fmt: skip
    delivered = lab.mh.wait_for_messages("alice@example.com", before + 1)
    got = next(m for m in delivered if subject.encode() in m)
    headers = got.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    assert b"Authentication-Results:" in headers
    assert b"spf=pass" in headers and b"smtp.mailfrom=bob@origin.test" in headers


def test_forged_from_of_a_p_reject_domain_is_refused(lab: Lab) -> None:
    """bank.test publishes p=reject and sends from nowhere (-all): its From from another
    address fails SPF and has no DKIM, so DMARC fails and rspamd refuses it at DATA. The
    spam score's reject threshold is out of reach here (100): the refusal is DMARC's."""
    mail = message("ceo@bank.test", "alice@example.com", "urgent transfer")
    with outside(lab, FORGER_IP) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("ceo@bank.test", ["alice@example.com"], mail)
    assert refused.value.smtp_code == 554, refused.value
    assert refused.value.smtp_error.startswith(b"5.7.1 ")
    message_id = mail.split(b"Message-ID: <", 1)[1].split(b"@", 1)[0].decode()
    log = lab.base / "log/rspamd/rspamd.log"
    lines = [line for line in log.read_text(errors="replace").splitlines() if message_id in line]
    assert any("Action set by DMARC" in line for line in lines), lines


def test_eicar_is_rejected_at_data(lab: Lab) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "bob@origin.test", "alice@example.com", "test"
    msg.set_content("see attachment")
    msg.add_attachment(EICAR, maintype="application", subtype="octet-stream",
                       filename="eicar.com")  # fmt: skip
    with outside(lab, ORIGIN_IP) as client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("bob@origin.test", ["alice@example.com"], msg.as_bytes())
    assert refused.value.smtp_code == 554, refused.value
    assert refused.value.smtp_error == b"5.7.1 Virus found: Mailcfg.Test.EICAR.UNOFFICIAL"


def test_redirect_outside_leaves_with_an_srs_sender_and_its_bounce_comes_back(lab: Lab) -> None:
    """Mail from origin.test to keeper@example.com (a redirect to far@sink.test) reaches the
    sink with an SRS envelope sender in example.com, whose SPF passes for this host where
    origin.test's would fail; a bounce to that SRS address goes to the original sender."""
    subject = f"forwarded {uuid.uuid4().hex}"
    with outside(lab, ORIGIN_IP) as client:
        client.sendmail(
            "bob@origin.test", ["keeper@example.com"],
            message("bob@origin.test", "keeper@example.com", subject),
        )  # fmt: skip
    got = lab.sink.wait_for(lambda m: subject.encode() in m.data)
    assert got.rcpts == ("far@sink.test",)
    assert got.mail_from.startswith("SRS0=") and got.mail_from.endswith("@example.com")
    assert "origin.test=bob" in got.mail_from
    resolver = make_sync_resolver([f"127.0.0.1:{DNS_PORT}"], 2.0)
    assert (
        evaluate_spf(resolver, got.client, got.mail_from, "mx1.example.com", "sink.test").result
        == "pass"
    )
    assert (
        evaluate_spf(resolver, got.client, "bob@origin.test", "mx1.example.com", "sink.test").result
        == "fail"
    )
    # The forwarded copy is sealed with ARC by the forwarding domain.
    assert b"ARC-Seal:" in got.data and b"d=example.com" in got.data

    bounce_subject = f"bounce {uuid.uuid4().hex}"
    with outside(lab, "192.0.2.200") as client:
        client.sendmail(
            "", [got.mail_from],
            message("MAILER-DAEMON@sink.test", got.mail_from, bounce_subject),
        )  # fmt: skip
    bounced = lab.sink.wait_for(lambda m: bounce_subject.encode() in m.data)
    assert bounced.rcpts == ("bob@origin.test",)
    assert bounced.mail_from == ""


def rewrite_actions(lab: Lab, actions: SpamActions) -> None:
    """The rspamd role's actions.conf for `actions`, installed, and rspamd restarted on it."""
    rerender_rspamd(lab.mh.cfg, lab.procs, lab.base, {"spam_actions": actions}, "actions.conf")


def spam_score(delivered: bytes) -> float:
    status = next(
        line for line in delivered.split(b"\n") if line.lower().startswith(b"x-spam-status:")
    )
    return float(status.split(b"score=")[1].split(b" ")[0].split(b";")[0])


def test_spam_actions_follow_the_inventory_thresholds(lab: Lab) -> None:
    """One message's score, then thresholds around it from the inventory's spam_actions (the
    role's actions.conf, rspamd restarted on it): over add_header it gets X-Spam: Yes, over
    rewrite_subject a ***SPAM*** subject, over reject it is refused at DATA."""

    def send(subject: str) -> None:
        with outside(lab, ORIGIN_IP) as client:
            client.sendmail(
                "bob@origin.test", ["alice@example.com"],
                message("bob@origin.test", "alice@example.com", subject),
            )  # fmt: skip

    def delivered(subject: str) -> bytes:
        count = len(lab.mh.messages("alice@example.com"))
        send(subject)
        got = lab.mh.wait_for_messages("alice@example.com", count + 1)
        return next(m for m in got if subject.encode() in m)

    probe = delivered(f"probe {uuid.uuid4().hex}")
    score = spam_score(probe)
    assert score > 1, probe  # HFILTER and RDNS symbols of a client without DNS names
    assert b"X-Spam: Yes" not in probe and b"***SPAM***" not in probe
    try:
        rewrite_actions(lab, SpamActions(add_header=score / 2, rewrite_subject=score * 2,
                                         reject=score * 4))  # fmt: skip
        subject = f"header {uuid.uuid4().hex}"
        marked = delivered(subject)
        assert b"X-Spam: Yes" in marked and f"Subject: {subject}".encode() in marked

        rewrite_actions(lab, SpamActions(add_header=score / 4, rewrite_subject=score / 2,
                                         reject=score * 4))  # fmt: skip
        subject = f"subject {uuid.uuid4().hex}"
        marked = delivered(subject)
        assert f"Subject: ***SPAM*** {subject}".encode() in marked

        rewrite_actions(lab, SpamActions(add_header=score / 4, reject=score / 2))
        with pytest.raises(smtplib.SMTPDataError) as refused:
            send(f"refused {uuid.uuid4().hex}")
        assert refused.value.smtp_code == 554
    finally:
        rewrite_actions(lab, SpamActions(add_header=50, reject=100))


def test_bayes_learns_into_the_inventorys_redis(lab: Lab) -> None:
    """policy_state is Redis: rspamd's Bayes statistics go to that server and database, per
    account (bayes.per_user)."""
    words = " ".join(f"offer{i} pills cheap discount winner{i % 7}" for i in range(40))
    spam = message("bob@origin.test", "alice@example.com", "cheap pills", words.encode())
    learn = subprocess.run(
        ["rspamc", "-h", f"127.0.0.1:{FILTER_PORTS['rspamd_controller']}", "learn_spam"],
        input=spam, capture_output=True, check=False,
    )  # fmt: skip
    assert learn.returncode == 0, learn.stdout + learn.stderr
    keys = subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), "-n", "5", "--scan", "--pattern", "*"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert b"success = true;" in learn.stdout, learn.stdout
    # The statfile's key set and its token hashes, in the database the inventory names.
    # bayes.per_user: the statistics of the message's recipient (here its To:, as rspamc
    # gives no envelope) and its token hashes, in the database the inventory names.
    assert "RSalice@example.com" in keys, keys
    assert sum(k.startswith("RSalice@example.com_") for k in keys) > 20, keys


def redis_keys(pattern: str) -> list[str]:
    return subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), "-n", "5", "--scan", "--pattern", pattern],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip


def learns(user: str, kind: str) -> int:
    """How many messages rspamd learnt as `kind` (spam or ham) into `user`'s statistics."""
    out = subprocess.run(
        ["redis-cli", "-p", str(REDIS_PORT), "-n", "5", "hget", f"RS{user}", f"learns_{kind}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    return int(out or 0)


def test_filing_mail_as_junk_teaches_the_users_own_bayes(lab: Lab) -> None:
    """bayes.per_user + learn_from_junk: moving a message into Junk over IMAP learns it as
    spam for that account (Dovecot's IMAPSieve pipes it to rspamc as the vmail user), a copy
    into Trash teaches nothing, out of Junk into the inbox relearns it as ham; nobody else's
    statistics change."""
    user, other = "postmaster@example.com", "alice@example.com"
    others = (learns(other, "spam"), learns(other, "ham"))
    words = " ".join(f"lottery{i} prize claim urgent transfer{i % 5}" for i in range(40))
    mail = message("win@origin.test", user, "You won", words.encode())
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    logs = [lab.base / "log/rspamd/rspamd.log", Path(lab.mh.cfg.policy.paths.dovecot_log)]
    imap = imaplib.IMAP4("127.0.0.1", lab.mh.ports["imap"], timeout=20)
    try:
        imap.starttls(ssl_context=tls)
        imap.login(user, PASSWORD)
        assert imap.append("INBOX", None, None, mail)[0] == "OK"
        imap.select("INBOX")
        assert imap.uid("MOVE", "1:*", "Junk")[0] == "OK"
        wait_for(lambda: learns(user, "spam") == 1, "a spam learn", logs, timeout=30)
        imap.select("Junk")
        assert imap.uid("COPY", "1:*", "Trash")[0] == "OK"
        # IMAPSieve runs (and its pipe returns) before the command's reply.
        assert (learns(user, "spam"), learns(user, "ham")) == (1, 0)
        assert imap.uid("MOVE", "1:*", "INBOX")[0] == "OK"
        wait_for(lambda: learns(user, "ham") == 1, "a ham learn", logs, timeout=30)
    finally:
        imap.logout()
    assert (learns(other, "spam"), learns(other, "ham")) == others
