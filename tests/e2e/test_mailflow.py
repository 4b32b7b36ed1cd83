"""Mail flow through a real Postfix + Dovecot booted from the rendered tree (no agent).

Clients connect from other loopback addresses than the server's (127.0.0.1), so Postfix sees
them outside `mynetworks` and Dovecot does not count them as secured.
"""

from __future__ import annotations

import imaplib
import itertools
import poplib
import smtplib
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from mailhost import MailHost, boot_mailhost

from compiler.tools.passwd import make_password_hash
from schemas.domain import Account, Autoresponder, Domain, Redirect, SenderList
from schemas.inventory import HostSpec, Inventory

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
PORT_BASE = 20100
DOMAIN = "example.com"


def make_hash(password: str) -> str:
    return subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def make_inventory() -> Inventory:
    h = make_hash(PASSWORD)
    argon2id = make_password_hash(PASSWORD, "ARGON2ID")  # as `mailcfg passwd --scheme` makes it
    domain = Domain(
        domain=DOMAIN,
        accounts=[
            Account(name="alice", password=h, quota="100M"),
            Account(name="bob", password=h, imap=False),
            Account(name="carol", password=h, pop3=False),
            Account(name="dave", password=h, enabled=False),
            Account(
                name="erin",
                password=h,
                autoresponder=Autoresponder(subject="Away until Monday", body="Back soon."),
            ),
            Account(name="frank", password=argon2id),
        ],
        redirects=[
            Redirect(name="sales", to=["alice@example.com", "bob@example.com", "far@example.net"]),
            # A redirect on an account with a mailbox wins over the mailbox.
            Redirect(name="carol", to=["alice@example.com"]),
        ],
    )
    host = HostSpec(address="127.0.0.1", hostname="mx1.example.com")
    return Inventory(hosts={"mx1": host}, domains={DOMAIN: domain})


class SourcedIMAP(imaplib.IMAP4):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


class SourcedIMAPS(imaplib.IMAP4_SSL):
    def __init__(self, host: str, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        super().__init__(host, port, ssl_context=context, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self._source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


class SourcedPOP3(poplib.POP3):
    def __init__(self, host: str, port: int, source: str) -> None:
        self._source = source
        super().__init__(host, port, timeout=10)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self._source, 0))


class SourcedPOP3S(poplib.POP3_SSL):
    def __init__(self, host: str, port: int, source: str, context: ssl.SSLContext) -> None:
        self._source = source
        super().__init__(host, port, context=context, timeout=10)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout, (self._source, 0))
        return self.context.wrap_socket(sock, server_hostname=self.host)


@pytest.fixture(scope="module")
def mailhost() -> Iterator[MailHost]:
    with boot_mailhost(
        make_inventory(),
        "mx1",
        None,
        PORT_BASE,
        policy={"dovecot_auth_failure_delay": "0s", "smtpd_error_sleep_time": "0s"},
    ) as mh:
        yield mh


@pytest.fixture(scope="module")
def tls(mailhost: MailHost) -> ssl.SSLContext:
    """Trusts only the test host's certificate; the name is not checked (we dial an IP)."""
    ctx = ssl.create_default_context(cafile=str(mailhost.cert))
    ctx.check_hostname = False
    return ctx


_clients = itertools.count(2)


@pytest.fixture
def client_ip() -> str:
    """A fresh outside source address per test: Dovecot penalises repeated failures per IP."""
    return f"127.0.0.{next(_clients)}"


def smtp(mh: MailHost, source: str, port: str = "smtp") -> smtplib.SMTP:
    s = smtplib.SMTP(mh.address, mh.ports[port], timeout=10, source_address=(source, 0))
    s.ehlo("client.example.net")
    return s


def message(subject: str, to: str = "undisclosed-recipients:;") -> bytes:
    return f"From: x@example.net\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def test_mail_to_account_lands_in_its_mailbox(mailhost: MailHost, client_ip: str) -> None:
    subject = f"hello {uuid.uuid4()}"
    with smtp(mailhost, client_ip) as s:
        assert s.sendmail("x@example.net", ["alice@example.com"], message(subject)) == {}
    messages = mailhost.wait_for_messages("alice@example.com", 1)
    assert any(subject.encode() in m for m in messages)


def test_redirect_delivers_to_every_target(mailhost: MailHost, client_ip: str) -> None:
    subject = f"sales {uuid.uuid4()}"
    before_alice = len(mailhost.messages("alice@example.com"))
    before_bob = len(mailhost.messages("bob@example.com"))
    with smtp(mailhost, client_ip) as s:
        assert s.sendmail("x@example.net", ["sales@example.com"], message(subject)) == {}
    for address, before in (("alice@example.com", before_alice), ("bob@example.com", before_bob)):
        got = mailhost.wait_for_messages(address, before + 1)
        assert any(subject.encode() in m for m in got), address
    # The outside target is queued for remote delivery (no DNS here, so it bounces).
    line = mailhost.wait_for_log("to=<far@example.net>, orig_to=<sales@example.com>")
    assert "relay=" in line


def test_redirect_on_a_mailbox_account_wins(mailhost: MailHost, client_ip: str) -> None:
    subject = f"carol {uuid.uuid4()}"
    before = len(mailhost.messages("alice@example.com"))
    with smtp(mailhost, client_ip) as s:
        s.sendmail("x@example.net", ["carol@example.com"], message(subject))
    got = mailhost.wait_for_messages("alice@example.com", before + 1)
    assert any(subject.encode() in m for m in got)
    assert not any(subject.encode() in m for m in mailhost.messages("carol@example.com"))


@pytest.mark.parametrize("rcpt", ["nobody@example.com", "dave@example.com"])
def test_unknown_or_disabled_recipient_rejected_at_rcpt(
    mailhost: MailHost, client_ip: str, rcpt: str
) -> None:
    with smtp(mailhost, client_ip) as s:
        s.mail("x@example.net")
        code, text = s.rcpt(rcpt)
    assert code == 550
    assert b"User unknown" in text


def test_autoresponder_answers_once(mailhost: MailHost) -> None:
    """Dovecot's LMTP runs the rendered Sieve script: the sender gets one reply (submitted to
    the local Postfix), a second mail the same day gets none. Sent from the trusted address:
    port 25 refuses a local sender from outside."""
    before = len(mailhost.messages("bob@example.com"))
    for n in range(2):
        with smtp(mailhost, mailhost.address) as s:
            s.sendmail(
                "bob@example.com", ["erin@example.com"], message(f"to erin {n}", "erin@example.com")
            )
        mailhost.wait_for_messages("erin@example.com", n + 1)
    got = mailhost.wait_for_messages("bob@example.com", before + 1)
    replies = [m for m in got if b"Subject: Away until Monday" in m]
    assert len(replies) == 1
    assert b"Auto-Submitted: auto-replied" in replies[0]


def test_unauthenticated_relay_is_refused(mailhost: MailHost, client_ip: str) -> None:
    with smtp(mailhost, client_ip) as s:
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo("client.example.net")
        s.mail("x@example.net")  # an outside sender: a local one is refused before relaying
        code, text = s.rcpt("someone@example.org")
    assert code == 554
    assert b"Relay access denied" in text


def test_trusted_network_may_relay(mailhost: MailHost) -> None:
    """The server's own address is the only trusted network: it relays without AUTH (the
    agent's notices and local scripts), while every other address is refused (above)."""
    with smtp(mailhost, mailhost.address) as s:
        s.mail("alice@example.com")
        code, _ = s.rcpt("someone@example.org")
        s.rset()
    assert code == 250


def test_no_auth_on_port_25(mailhost: MailHost, client_ip: str, tls: ssl.SSLContext) -> None:
    with smtp(mailhost, client_ip) as s:
        assert not s.has_extn("auth")
        s.starttls(context=tls)
        s.ehlo("client.example.net")
        assert not s.has_extn("auth")


@pytest.mark.parametrize("port", ["submission", "submission_alt"])
def test_submission_requires_starttls_then_auth(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext, port: str
) -> None:
    with smtp(mailhost, client_ip, port) as s:
        assert not s.has_extn("auth")
        code, text = s.mail("alice@example.com")
        assert code == 530 and b"STARTTLS" in text
        s.rset()
        s.starttls(context=tls)
        s.ehlo("client.example.net")
        assert "PLAIN" in s.esmtp_features["auth"].upper()
        s.mail("alice@example.com")
        code, _ = s.rcpt("someone@example.org")
        assert code == 554  # not authenticated yet: no relay
        s.rset()
        s.login("alice@example.com", PASSWORD)
        assert s.sendmail("alice@example.com", ["alice@example.com"], message("sub")) == {}


def test_submission_rejects_wrong_password(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    with smtp(mailhost, client_ip, "submission") as s:
        s.starttls(context=tls)
        s.ehlo("client.example.net")
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login("alice@example.com", "wrong password")
    assert err.value.smtp_code == 535


def test_submission_user_may_only_send_as_self(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    with smtp(mailhost, client_ip, "submission") as s:
        s.starttls(context=tls)
        s.ehlo("client.example.net")
        s.login("bob@example.com", PASSWORD)
        s.mail("alice@example.com")
        code, text = s.rcpt("alice@example.com")
    assert code == 553
    assert b"not owned by user bob@example.com" in text


def test_smtps_implicit_tls_login(mailhost: MailHost, client_ip: str, tls: ssl.SSLContext) -> None:
    with smtplib.SMTP_SSL(
        mailhost.address,
        mailhost.ports["smtps"],
        timeout=10,
        context=tls,
        source_address=(client_ip, 0),
    ) as s:
        s.ehlo("client.example.net")
        s.login("alice@example.com", PASSWORD)
        subject = f"smtps {uuid.uuid4()}"
        before = len(mailhost.messages("bob@example.com"))
        assert s.sendmail("alice@example.com", ["bob@example.com"], message(subject)) == {}
    got = mailhost.wait_for_messages("bob@example.com", before + 1)
    assert any(subject.encode() in m for m in got)


def test_imap_plaintext_login_refused_before_tls(mailhost: MailHost, client_ip: str) -> None:
    imap = SourcedIMAP(mailhost.address, mailhost.ports["imap"], client_ip)
    try:
        assert "LOGINDISABLED" in imap.capabilities
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("alice@example.com", PASSWORD)
    finally:
        imap.shutdown()


def test_imap_starttls_login(mailhost: MailHost, client_ip: str, tls: ssl.SSLContext) -> None:
    imap = SourcedIMAP(mailhost.address, mailhost.ports["imap"], client_ip)
    imap.starttls(ssl_context=tls)
    typ, _ = imap.login("alice@example.com", PASSWORD)
    assert typ == "OK"
    typ, _ = imap.select("INBOX", readonly=True)
    assert typ == "OK"
    imap.logout()


def test_imaps_login_and_wrong_password(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    typ, _ = imap.login("alice@example.com", PASSWORD)
    assert typ == "OK"
    imap.logout()
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("alice@example.com", "wrong password")
    finally:
        imap.shutdown()


def test_imaps_login_with_an_argon2id_hash_from_mailcfg_passwd(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    assert imap.login("frank@example.com", PASSWORD)[0] == "OK"
    imap.logout()
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login("frank@example.com", PASSWORD + "!")
    finally:
        imap.shutdown()


def test_imap_disabled_account_cannot_use_imap(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            imap.login("bob@example.com", PASSWORD)
    finally:
        imap.shutdown()
    # ...but POP3 works for bob.
    pop = SourcedPOP3S(mailhost.address, mailhost.ports["pop3s"], client_ip, tls)
    assert pop.user("bob@example.com").startswith(b"+OK")
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    pop.quit()


def test_pop3_starttls_and_pop3s(mailhost: MailHost, client_ip: str, tls: ssl.SSLContext) -> None:
    pop = SourcedPOP3(mailhost.address, mailhost.ports["pop3"], client_ip)
    with pytest.raises(poplib.error_proto):
        pop.user("alice@example.com")
        pop.pass_(PASSWORD)  # plaintext before STLS: refused
    pop.close()
    pop = SourcedPOP3(mailhost.address, mailhost.ports["pop3"], client_ip)
    pop.stls(context=tls)
    pop.user("alice@example.com")
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    count, _ = pop.stat()
    assert count >= 1
    pop.quit()
    pop = SourcedPOP3S(mailhost.address, mailhost.ports["pop3s"], client_ip, tls)
    pop.user("alice@example.com")
    with pytest.raises(poplib.error_proto):
        pop.pass_("wrong password")
    pop.close()


def test_pop3_disabled_account_cannot_use_pop3(
    mailhost: MailHost, client_ip: str, tls: ssl.SSLContext
) -> None:
    pop = SourcedPOP3S(mailhost.address, mailhost.ports["pop3s"], client_ip, tls)
    pop.user("carol@example.com")
    with pytest.raises(poplib.error_proto):
        pop.pass_(PASSWORD)
    pop.close()
    imap = SourcedIMAPS(mailhost.address, mailhost.ports["imaps"], client_ip, tls)
    assert imap.login("carol@example.com", PASSWORD)[0] == "OK"
    imap.logout()


@pytest.mark.parametrize(
    ("inbound", "rcpt_code"), [("DUNNO", 250), ("DEFER_IF_PERMIT", 450)], ids=["dunno", "defer"]
)
def test_missing_policy_socket_applies_the_fail_actions(inbound: str, rcpt_code: int) -> None:
    """With the agent role but no agent running, Postfix 3.7 tries the socket `try_limit`
    times (a 'No such file or directory' warning each), then answers `default_action`: the
    configured fail-safe, not a blanket deferral."""
    port_base = 20300 if inbound == "DUNNO" else 20400
    with boot_mailhost(
        make_inventory(),
        "mx1",
        None,
        port_base,
        roles=("postfix", "dovecot", "agent"),
        policy={"policy_fail_action_inbound": inbound, "policy_fail_action_outbound": "DEFER"},
    ) as mh:
        with smtp(mh, "127.0.0.2") as s:
            s.mail("x@example.net")
            code, _ = s.rcpt("alice@example.com")
        assert code == rcpt_code
        with smtp(mh, "127.0.0.2", "submission") as s:
            s.starttls(context=ssl._create_unverified_context())
            s.ehlo("client.example.net")
            s.login("alice@example.com", PASSWORD)
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("alice@example.com", ["bob@example.com"], message("eod"))
        assert err.value.smtp_code == 450
        assert b"End-of-data rejected" in err.value.smtp_error
        line = mh.wait_for_log("problem talking to server")
        assert str(mh.agent_socket) in line


def test_agent_policy_hook_end_to_end() -> None:
    """With the agent running (harness `start_agent=True`), the rendered hook reaches it: a
    blacklisted sender is rejected at RCPT, another sender passes."""
    h = make_hash(PASSWORD)
    domain = Domain(
        domain=DOMAIN,
        accounts=[
            Account(
                name="alice",
                password=h,
                blacklist=SenderList(enabled=True, entries=["bad@example.net"]),
            )
        ],
    )
    inv = Inventory(
        hosts={"mx1": HostSpec(address="127.0.0.1", hostname="mx1.example.com")},
        domains={DOMAIN: domain},
    )
    with (
        boot_mailhost(
            inv,
            "mx1",
            None,
            20500,
            roles=("postfix", "dovecot", "agent"),
            start_agent=True,
            policy={"spam": {"spf": False}},
        ) as mh,
        smtp(mh, "127.0.0.2") as s,
    ):
        s.mail("bad@example.net")
        code, text = s.rcpt("alice@example.com")
        assert code == 554
        assert b"blacklist" in text
        s.rset()
        s.mail("good@example.net")
        assert s.rcpt("alice@example.com")[0] == 250
