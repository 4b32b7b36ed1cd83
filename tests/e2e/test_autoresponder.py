"""Autoresponders through real Postfix + Dovecot LMTP + Pigeonhole, from the rendered tree.

Each negative case uses a sender that has never been answered, so "no reply" can't be the
once-per-day rule hiding a missing guard. "No reply" is judged only after the original was
delivered (Sieve has run) and Postfix's queue is empty (any reply would have been delivered).
"""

from __future__ import annotations

import smtplib
import subprocess
import time
from collections.abc import Iterator

import pytest
from mailhost import MailHost, boot_mailhost

from schemas.domain import Account, Autoresponder, Domain, Redirect, SenderList
from schemas.inventory import HostSpec, Inventory

pytestmark = pytest.mark.e2e

PORT_BASE = 24100
SENDERS = ("s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8")
SUBJECT = 'Out of office: "back" \\ soon'


def make_inventory() -> Inventory:
    h = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", "pw-not-used-here"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    responder = Autoresponder(subject=SUBJECT, body='I am away.\n"Quoted" line.\n.\nEnd.')
    accounts = [
        Account(name="erin", password=h, autoresponder=responder),
        Account(
            name="wendy",
            password=h,
            whitelist=SenderList(enabled=True, entries=["s7@example.com"]),
            autoresponder=Autoresponder(subject="Wendy away", body="Later.", only_whitelisted=True),
        ),
        *(Account(name=s, password=h) for s in SENDERS),
    ]
    domain = Domain(
        domain="example.com",
        accounts=accounts,
        redirects=[Redirect(name="sales", to=["erin@example.com"])],
    )
    host = HostSpec(address="127.0.0.1", hostname="mx1.example.com")
    return Inventory(hosts={"mx1": host}, domains={"example.com": domain})


@pytest.fixture(scope="module")
def mailhost() -> Iterator[MailHost]:
    # The test's client (127.0.0.2, outside trusted_networks) sends as local accounts so that
    # replies land in mailboxes: port 25 refuses that unless external_senders allows it.
    allow = {"external_senders": [{"domain": "example.com", "networks": ["127.0.0.2/32"]}]}
    with boot_mailhost(make_inventory(), "mx1", None, PORT_BASE, policy=allow) as mh:
        yield mh


def send(mh: MailHost, sender: str, rcpt: str, to_header: str, extra: str = "") -> None:
    body = f"From: {sender}\r\nTo: {to_header}\r\nSubject: hello\r\n{extra}\r\ntext\r\n"
    with smtplib.SMTP(mh.address, mh.ports["smtp"], timeout=10,
                      source_address=("127.0.0.2", 0)) as s:  # fmt: skip
        s.ehlo("client.example.net")
        s.sendmail(sender, [rcpt], body.encode())


def settle(mh: MailHost, rcpt: str, count: int) -> None:
    """The original is delivered (Sieve ran) and nothing is left in the queue."""
    mh.wait_for_messages(rcpt, count)
    deadline = time.monotonic() + 30
    while mh.postqueue():
        assert time.monotonic() < deadline, f"queue not empty: {mh.postqueue()}"
        mh.flush_queue()
        time.sleep(0.2)


def replies(mh: MailHost, sender: str, subject: str = SUBJECT) -> list[bytes]:
    return [m for m in mh.messages(sender) if subject.encode() in m]


def delivered(mh: MailHost, rcpt: str) -> int:
    return len(mh.messages(rcpt))


def test_one_reply_per_sender_per_day_also_through_an_alias(mailhost: MailHost) -> None:
    n = delivered(mailhost, "erin@example.com")
    # Addressed to the alias: the reply must know sales@ is erin's (:addresses).
    send(mailhost, "s1@example.com", "sales@example.com", "sales@example.com")
    settle(mailhost, "erin@example.com", n + 1)
    got = mailhost.wait_for_messages("s1@example.com", 1)
    assert len(replies(mailhost, "s1@example.com")) == 1
    reply = got[0]
    assert b"Auto-Submitted: auto-replied" in reply
    assert b"\\\\" not in reply  # the subject's backslash is not doubled in the mail
    # Same sender again, directly and through the alias: no second reply that day.
    send(mailhost, "s1@example.com", "erin@example.com", "erin@example.com")
    send(mailhost, "s1@example.com", "sales@example.com", "sales@example.com")
    settle(mailhost, "erin@example.com", n + 3)
    assert len(replies(mailhost, "s1@example.com")) == 1


@pytest.mark.parametrize(
    ("sender", "headers"),
    [
        ("s2@example.com", "List-Id: <team.lists.example.com>\r\n"),
        ("s3@example.com", "Precedence: bulk\r\n"),
        ("s4@example.com", "Auto-Submitted: auto-generated\r\n"),
        ("s5@example.com", "List-Unsubscribe: <mailto:leave@lists.example.com>\r\n"),
    ],
)
def test_list_bulk_and_automatic_mail_get_no_reply(
    mailhost: MailHost, sender: str, headers: str
) -> None:
    n = delivered(mailhost, "erin@example.com")
    send(mailhost, sender, "erin@example.com", "erin@example.com", headers)
    settle(mailhost, "erin@example.com", n + 1)
    assert replies(mailhost, sender) == []


def vacation_sent(mh: MailHost) -> int:
    return mh.dovecot_log.read_text(errors="replace").count("sent vacation response")


def test_null_sender_gets_no_reply(mailhost: MailHost) -> None:
    n, sent = delivered(mailhost, "erin@example.com"), vacation_sent(mailhost)
    send(mailhost, "", "erin@example.com", "erin@example.com")
    settle(mailhost, "erin@example.com", n + 1)
    assert vacation_sent(mailhost) == sent


def test_only_whitelisted_answers_only_the_whitelist(mailhost: MailHost) -> None:
    n = delivered(mailhost, "wendy@example.com")
    send(mailhost, "s6@example.com", "wendy@example.com", "wendy@example.com")
    send(mailhost, "s7@example.com", "wendy@example.com", "wendy@example.com")
    settle(mailhost, "wendy@example.com", n + 2)
    mailhost.wait_for_messages("s7@example.com", 1)
    assert len(replies(mailhost, "s7@example.com", "Wendy away")) == 1
    assert replies(mailhost, "s6@example.com", "Wendy away") == []
