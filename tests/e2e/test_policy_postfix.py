"""The policy service wired into a real Postfix rendered by the compiler (agent role on).

One host: Postfix + Dovecot from the rendered tree, `mailcfg-agent serve` started on the
rendered agent.json (state in a temp SQLite file, stopped by PID), a dnspython DNS server on
loopback answering the SPF TXT and DNSBL A records below (never the internet), and an asyncio
SMTP sink standing for every remote mail server (`default_transport`), where the agent's
whitelist notices end up.

"Outside" clients: plain cases connect from 127.0.0.x addresses outside `trusted_networks`
(the harness trusts only the server's own 127.0.0.1). SPF and DNSBL need a non-loopback client
address (the agent skips both for loopback), so those sessions connect from XCLIENT_SOURCE,
the only host in `smtpd_authorized_xclient_hosts`, and set the client address and HELO with
XCLIENT as a proxy would.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import itertools
import json
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mailhost import MailHost, MailHostError, boot_mailhost, stop_child

from schemas.inventory import Inventory
from tests.helpers import wait_for_path
from tests.runtime.dnsserver import Zone, dns_server
from tests.runtime.smtpsink import SmtpSink, smtp_sink

pytestmark = pytest.mark.e2e

PORT_BASE = 22100  # listeners at +10 … +95
DNS_PORT = 22253
SINK_PORT = 22297
PASSWORD = "policy-e2e-Secret-7"
XCLIENT_SOURCE = "127.0.0.9"
REJECT_TEXT = "Carol reads mail from approved senders only; phone her to be added"
NOTICE_TEXT = "Hello {sender},\n\n{recipient} did not get your message: you are not approved.\n"

ZONE = Zone(
    {
        # SPF: only 192.0.2.10 may send for these domains; pass.test fails hard, soft.test soft.
        "pass.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")],
        "soft.test": [("TXT", "v=spf1 ip4:192.0.2.10 ~all")],
        "nospf.test": [("A", "192.0.2.99")],
        # DNSBL: 192.0.2.66 listed; 192.0.2.77 gets a Spamhaus-style error code (not a listing).
        "66.2.0.192.dnsbl.test": [("A", "127.0.0.2", 60), ("TXT", "listed for tests")],
        "77.2.0.192.dnsbl.test": [("A", "127.255.255.254", 60)],
    }
)


def _hash(password: str) -> str:
    return subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def make_inventory() -> Inventory:
    pw = _hash(PASSWORD)
    return Inventory.model_validate(
        {
            "hosts": {"mx1": {"address": "127.0.0.1", "hostname": "mx1.example.com"}},
            "domains": {
                "example.com": {
                    "domain": "example.com",
                    "accounts": [
                        # 3 recipients per hour, then locked.
                        {"name": "alice", "password": pw, "limits": {"per_hour": 3}},
                        {
                            "name": "bob",
                            "password": pw,
                            "blacklist": {"enabled": True, "entries": ["spammer@bad.test"]},
                        },
                        {
                            "name": "carol",
                            "password": pw,
                            "whitelist": {"enabled": True, "entries": ["friend@good.test"]},
                        },
                        {"name": "dave", "password": pw},
                        {"name": "postmaster", "password": pw},
                    ],
                }
            },
        }
    )


POLICY = {
    "smtpd_error_sleep_time": "0s",
    "dovecot_auth_failure_delay": "0s",
    "whitelist_reject_text": REJECT_TEXT,
    "whitelist_notice": True,
    "whitelist_notice_text": NOTICE_TEXT,
    "spam": {
        "spf": True,
        "custom_dnsbl": [{"zone": "dnsbl.test"}],
        "nameservers": [f"127.0.0.1:{DNS_PORT}"],
        "dns_timeout": 2,
    },
    "postfix_main": {
        "smtpd_authorized_xclient_hosts": XCLIENT_SOURCE,
        # Every remote domain is "delivered" to the SMTP sink: no DNS, no internet.
        "default_transport": f"smtp:[127.0.0.1]:{SINK_PORT}",
    },
}


@dataclass
class Host:
    mh: MailHost
    sink: SmtpSink
    state: str  # the agent's state DSN
    agent_out: Path

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run an agent subcommand against the running agent's config and state."""
        return subprocess.run(
            [*agent_command(), *args, "--config", str(self.mh.agent_config), "--state", self.state],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    def wait_for_agent_log(self, text: str) -> str:
        return self.mh.wait_for_log(text, self.agent_out)


def agent_command() -> list[str]:
    exe = shutil.which("mailcfg-agent")
    return [exe] if exe else [sys.executable, "-m", "runtime"]


@contextlib.contextmanager
def run_agent(mh: MailHost, state: str, out: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(out, "ab") as log:
        proc = subprocess.Popen(
            [*agent_command(), "serve", "--config", str(mh.agent_config), "--state", state],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        if not wait_for_path(
            mh.agent_socket, time.monotonic() + 30, while_alive=lambda: proc.poll() is None
        ):
            raise MailHostError(f"agent did not start:\n{out.read_text(errors='replace')}")
        yield proc
    finally:
        stop_child(proc)


@pytest.fixture(scope="module")
def host() -> Iterator[Host]:
    state_dir = Path(tempfile.mkdtemp(prefix="mailcfg-policy-state-"))
    state = f"sqlite://{state_dir / 'state.db'}"
    try:
        with (
            dns_server(ZONE, DNS_PORT),
            smtp_sink(SINK_PORT) as sink,
            boot_mailhost(
                make_inventory(),
                "mx1",
                None,
                PORT_BASE,
                roles=("postfix", "dovecot", "agent"),
                policy=POLICY,
            ) as mh,
        ):
            out = mh.base / "log/agent.out"
            with run_agent(mh, state, out):
                yield Host(mh, sink, state, out)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(host: Host) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(host.mh.cert))
    ctx.check_hostname = False  # we dial an IP address
    return ctx


_sources = itertools.count(2)


def outside() -> str:
    """A fresh outside source address (127.0.0.2 …, skipping the XCLIENT source)."""
    n = next(_sources)
    return f"127.0.0.{n if n != 9 else next(_sources)}"


def smtp_from(mh: MailHost, source: str, port: str = "smtp") -> smtplib.SMTP:
    s = smtplib.SMTP(mh.address, mh.ports[port], timeout=30, source_address=(source, 0))
    s.ehlo("client.outside.test")
    return s


def smtp_as(mh: MailHost, client: str, helo: str) -> smtplib.SMTP:
    """A session Postfix sees as coming from `client` with HELO `helo` (XCLIENT)."""
    s = smtp_from(mh, XCLIENT_SOURCE)
    assert s.has_extn("xclient"), "XCLIENT not offered to the authorized source"
    code, text = s.docmd("XCLIENT", f"ADDR={client} NAME=[UNAVAILABLE]")
    assert code == 220, text
    s.ehlo_resp = s.helo_resp = None
    s.ehlo(helo)
    return s


def message(sender: str, subject: str) -> bytes:
    return f"From: {sender}\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def delivered(mh: MailHost, address: str, subject: str, before: int) -> bytes:
    got = mh.wait_for_messages(address, before + 1)
    found = [m for m in got if f"Subject: {subject}".encode() in m]
    assert found, f"{subject!r} not in {address}'s mailbox"
    return found[0]


# -- the hook is rendered -----------------------------------------------------------------


def test_rendered_postfix_consults_the_agent(host: Host) -> None:
    main_cf = (host.mh.postfix_config_dir / "main.cf").read_text()
    hook = f"check_policy_service {{ unix:{host.mh.agent_socket},"
    recipient = next(x for x in main_cf.splitlines() if x.startswith("smtpd_recipient_restr"))
    assert hook in recipient
    eod = next(x for x in main_cf.splitlines() if x.startswith("mailcfg_submission_eod"))
    assert hook in eod


# -- outbound: sending limit and lock -----------------------------------------------------


def submit(
    host: Host, tls: ssl.SSLContext, rcpts: list[str], subject: str
) -> dict[str, tuple[int, bytes]]:
    with smtp_from(host.mh, outside(), "submission") as s:
        s.starttls(context=tls)
        s.ehlo("client.outside.test")
        s.login("alice@example.com", PASSWORD)
        return s.sendmail("alice@example.com", rcpts, message("alice@example.com", subject))


def test_over_limit_submission_is_deferred_and_locks_the_account(
    host: Host, tls: ssl.SSLContext
) -> None:
    mh = host.mh
    pm_before = len(mh.messages("postmaster@example.com"))
    # 2 of 3 recipients this hour: accepted.
    assert submit(host, tls, ["dave@example.com", "bob@example.com"], "within limit") == {}
    # 2 more would make 4 > 3: 4xx at END-OF-MESSAGE, nothing counted, the account is locked.
    with pytest.raises(smtplib.SMTPDataError) as exc:
        submit(host, tls, ["dave@example.com", "bob@example.com"], "over limit")
    assert 400 <= exc.value.smtp_code < 500
    assert b"hourly sending limit exceeded" in exc.value.smtp_error
    locks = host.agent("locks")
    assert locks.returncode == 0, locks.stderr
    assert locks.stdout.startswith("alice@example.com\t")
    # Locked: even a message that would fit the window is deferred.
    with pytest.raises(smtplib.SMTPDataError) as exc:
        submit(host, tls, ["dave@example.com"], "while locked")
    assert 400 <= exc.value.smtp_code < 500
    assert b"account locked" in exc.value.smtp_error
    # The postmaster got the lock alert, from the same sender as the whitelist notices.
    alert = parse(mh.wait_for_messages("postmaster@example.com", pm_before + 1)[-1])
    assert "alice@example.com locked" in alert["Subject"]
    assert "<postmaster@example.com>" in alert["From"]
    assert alert["Return-Path"] == "<>"
    # Unlock lifts it: the 1-recipient message fits the hour's remaining 1.
    unlock = host.agent("unlock", "alice@example.com")
    assert unlock.returncode == 0, unlock.stderr
    assert host.agent("locks").stdout == ""
    dave_before = len(mh.messages("dave@example.com"))
    assert submit(host, tls, ["dave@example.com"], "after unlock") == {}
    delivered(mh, "dave@example.com", "after unlock", dave_before)
    assert not any(b"Subject: over limit" in m for m in mh.messages("dave@example.com"))
    assert not any(b"Subject: while locked" in m for m in mh.messages("dave@example.com"))


# -- inbound: black and white lists -------------------------------------------------------


def test_blacklisted_sender_rejected_at_rcpt(host: Host) -> None:
    with smtp_from(host.mh, outside()) as s:
        s.mail("spammer@bad.test")
        code, text = s.rcpt("bob@example.com")
        assert code == 554
        assert b"sender is on the recipient's blacklist" in text
        # Only that recipient: the same sender may still write to dave.
        assert s.rcpt("dave@example.com")[0] == 250


def test_whitelisted_sender_accepted_and_delivered(host: Host) -> None:
    before = len(host.mh.messages("carol@example.com"))
    with smtp_from(host.mh, outside()) as s:
        assert s.sendmail("friend@good.test", ["carol@example.com"], message("f", "friend")) == {}
    delivered(host.mh, "carol@example.com", "friend", before)


def test_non_whitelisted_sender_gets_the_explanation(host: Host) -> None:
    with smtp_from(host.mh, outside()) as s:
        s.mail("stranger@good.test")
        code, text = s.rcpt("carol@example.com")
    assert code == 554
    assert text.decode().endswith(f"<carol@example.com>: {REJECT_TEXT}")


# -- whitelist notice ---------------------------------------------------------------------


def reject_by_whitelist(host: Host, client: str, sender: str) -> None:
    with smtp_as(host.mh, client, "mail.pass.test") as s:
        s.mail(sender)
        code, text = s.rcpt("carol@example.com")
    assert code == 554 and REJECT_TEXT.encode() in text


def test_whitelist_notice_once_per_day_and_only_after_spf_pass(host: Host) -> None:
    sender = "someone@pass.test"
    reject_by_whitelist(host, "192.0.2.10", sender)
    host.wait_for_agent_log(f"whitelist notice to {sender} about carol@example.com: sent")
    (envelope,) = host.sink.wait_for_rcpt(sender)
    assert envelope.mail_from == ""  # null envelope sender: a notice never bounces
    notice = parse(envelope.data)
    assert notice["Auto-Submitted"] == "auto-replied"
    assert "<postmaster@example.com>" in notice["From"]
    assert notice["To"] == sender
    body = notice.get_content().replace("\r\n", "\n")
    assert body == NOTICE_TEXT.format(sender=sender, recipient="carol@example.com")

    # The same sender again the same day: rejected, no second notice.
    reject_by_whitelist(host, "192.0.2.10", sender)
    host.wait_for_agent_log(
        f"whitelist notice to {sender} about carol@example.com: not sent: already sent today"
    )
    # A forged sender (the domain does not authorise this client): SPF fail, no notice.
    forged = "forged@pass.test"
    reject_by_whitelist(host, "192.0.2.11", forged)
    host.wait_for_agent_log(
        f"whitelist notice to {forged} about carol@example.com: not sent: SPF fail"
    )

    # Nothing else was submitted: the queue is empty and the sink has the one notice.
    host.mh.flush_queue()
    assert host.mh.postqueue() == []
    assert len(host.sink.to(sender)) == 1
    assert host.sink.to(forged) == []


# -- inbound: SPF and DNSBL ---------------------------------------------------------------


def test_spf_fail_rejected(host: Host) -> None:
    with smtp_as(host.mh, "192.0.2.11", "mail.elsewhere.test") as s:
        s.mail("someone@pass.test")
        code, text = s.rcpt("dave@example.com")
    assert code == 554
    assert text.startswith(b"5.7.23 ") and b"SPF fail" in text


def test_spf_softfail_accepted_with_received_spf_header(host: Host) -> None:
    before = len(host.mh.messages("dave@example.com"))
    with smtp_as(host.mh, "192.0.2.11", "mail.elsewhere.test") as s:
        assert s.sendmail("someone@soft.test", ["dave@example.com"], message("s", "soft")) == {}
    msg = parse(delivered(host.mh, "dave@example.com", "soft", before))
    spf = msg.get_all("Received-SPF") or []
    assert len(spf) == 1 and spf[0].lower().startswith("softfail")  # RFC 7208: any case


def test_dnsbl_listed_client_rejected_naming_the_list(host: Host) -> None:
    with smtp_as(host.mh, "192.0.2.66", "mail.nospf.test") as s:
        s.mail("someone@nospf.test")
        code, text = s.rcpt("dave@example.com")
    assert code == 554
    assert b"client [192.0.2.66] blocked using dnsbl.test" in text


def test_dnsbl_error_code_is_not_a_listing(host: Host) -> None:
    before = len(host.mh.messages("dave@example.com"))
    with smtp_as(host.mh, "192.0.2.77", "mail.nospf.test") as s:
        sent = s.sendmail("someone@nospf.test", ["dave@example.com"], message("e", "dnsbl error"))
    assert sent == {}
    delivered(host.mh, "dave@example.com", "dnsbl error", before)
    line = host.wait_for_agent_log("answered 127.255.255.254 for 77.2.0.192.dnsbl.test")
    assert "WARNING" in line and "not a listing" in line


# -- inbound checks for redirects (a second host) -----------------------------------------
#
# Postfix asks the agent at RCPT, before it expands a redirect, so the agent expands it
# itself (runtime.policy.recipients): the global filter, SPF and DNSBL apply to a redirect as
# to an account, and the lists of the accounts it reaches apply too; the reply names the
# address as sent. Its own host (ports 21500 + offsets, DNS on 21553), a global filter on.

REDIRECT_PORT_BASE = 21500
REDIRECT_DNS_PORT = 21553
REDIRECT_ZONE = Zone({"pass.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")]})
REDIRECT_POLICY = {
    "smtpd_error_sleep_time": "0s",
    "global_filter": ["casino"],
    "spam": {
        "spf": True,
        "nameservers": [f"127.0.0.1:{REDIRECT_DNS_PORT}"],
        "dns_timeout": 2,
    },
    "postfix_main": {"smtpd_authorized_xclient_hosts": XCLIENT_SOURCE},
}
BLACKLIST_REPLY = b"<info@example.com>: sender is on the recipient's blacklist"


def make_redirect_inventory() -> Inventory:
    pw = _hash(PASSWORD)
    return Inventory.model_validate(
        {
            "hosts": {"mx1": {"address": "127.0.0.1", "hostname": "mx1.example.com"}},
            "domains": {
                "example.com": {
                    "domain": "example.com",
                    "accounts": [
                        {
                            "name": "bob",
                            "password": pw,
                            "blacklist": {"enabled": True, "entries": ["spammer@bad.test"]},
                        },
                        {"name": "dave", "password": pw},
                        {"name": "postmaster", "password": pw},
                    ],
                    "redirects": [{"name": "info", "to": "bob@example.com"}],
                },
                # Two hops across local domains: help@example.org → info@ → bob@.
                "example.org": {
                    "domain": "example.org",
                    "redirects": [{"name": "help", "to": "info@example.com"}],
                },
            },
        }
    )


@pytest.fixture(scope="module")
def redirect_host() -> Iterator[MailHost]:
    with (
        dns_server(REDIRECT_ZONE, REDIRECT_DNS_PORT),
        boot_mailhost(
            make_redirect_inventory(),
            "mx1",
            None,
            REDIRECT_PORT_BASE,
            roles=("postfix", "dovecot", "agent"),
            policy=REDIRECT_POLICY,
            start_agent=True,
        ) as mh,
    ):
        yield mh


def counters_of(mh: MailHost, account: str) -> dict[str, int]:
    """Today's statistics counters of `account`, from the running agent's state."""
    res = subprocess.run(
        [*agent_command(), "stats", "--config", str(mh.agent_config), "--format", "json",
         "--account", account],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    rows = json.loads(res.stdout)
    total: dict[str, int] = {}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, int):
                total[name] = total.get(name, 0) + value
    return total


def counted_since(mh: MailHost, before: dict[str, int]) -> dict[str, int]:
    after = counters_of(mh, "bob@example.com")
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def test_redirect_refuses_a_sender_its_account_blacklists(redirect_host: MailHost) -> None:
    mh = redirect_host
    before = counters_of(mh, "bob@example.com")
    with smtp_from(mh, outside()) as s:
        s.mail("spammer@bad.test")
        code, text = s.rcpt("info@example.com")
        assert code == 554 and text.endswith(BLACKLIST_REPLY)
        assert b"bob" not in text  # never the account behind the redirect
        # However it is written (Postfix unquotes it before asking the agent).
        code, text = s.rcpt('"INFO"@Example.com')
        assert code == 554 and text.endswith(BLACKLIST_REPLY)
        code, text = s.rcpt("help@example.org")  # through another local domain
        assert code == 554
        assert text.endswith(b"<help@example.org>: sender is on the recipient's blacklist")
        assert s.rcpt("dave@example.com")[0] == 250  # only what reaches bob
    # Each reject counted once, for the account whose list refused.
    assert counted_since(mh, before) == {"rejected": 3, "blacklist_blocked": 3}


def test_redirect_refuses_a_global_filter_sender(redirect_host: MailHost) -> None:
    mh = redirect_host
    before = counters_of(mh, "bob@example.com")
    with smtp_from(mh, outside()) as s:
        s.mail("big.casino@promo.test")
        code, text = s.rcpt("info@example.com")
    assert code == 554 and text.endswith(b"Sender rejected by the server's input filter")
    assert counted_since(mh, before) == {"rejected": 1}


def test_redirect_refuses_an_spf_fail(redirect_host: MailHost) -> None:
    mh = redirect_host
    before = counters_of(mh, "bob@example.com")
    with smtp_as(mh, "192.0.2.11", "mail.elsewhere.test") as s:
        s.mail("someone@pass.test")
        code, text = s.rcpt("info@example.com")
    assert code == 554
    assert text.startswith(b"5.7.23 ") and b"SPF fail" in text
    assert counted_since(mh, before) == {"rejected": 1, "spf_blocked": 1}


def test_redirect_delivers_normal_mail(redirect_host: MailHost) -> None:
    mh = redirect_host
    before = len(mh.messages("bob@example.com"))
    with smtp_as(mh, "192.0.2.10", "mail.pass.test") as s:
        sent = s.sendmail(
            "friend@pass.test", ["info@example.com"], message("friend@pass.test", "via info")
        )
    assert sent == {}
    delivered(mh, "bob@example.com", "via info", before)
    with smtp_from(mh, outside()) as s:
        sent = s.sendmail("friend@good.test", ["help@example.org"], message("f", "via help"))
    assert sent == {}
    delivered(mh, "bob@example.com", "via help", before + 1)
