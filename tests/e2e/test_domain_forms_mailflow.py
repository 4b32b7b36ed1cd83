"""Forward and keep a copy, a catch-all and an alias domain through a real Postfix + Dovecot
booted from the rendered tree, with the agent answering Postfix's policy requests.

One host (listeners at 23000 + offsets, 23010 … 23095): example.com holds alice, bob (with a
blacklist) and keeper, who forwards and keeps a copy; example.org has a catch-all to bob and
one account, carol; alias.test is an alias domain of example.com. Clients connect from other
loopback addresses than the server's, so Postfix sees them outside `mynetworks`; the agent
skips SPF and DNSBL for loopback clients, its lists still apply.
"""

from __future__ import annotations

import itertools
import smtplib
import uuid
from collections.abc import Iterator

import pytest
from mailhost import MailHost, boot_mailhost

from schemas.domain import Account, Domain, Redirect, SenderList
from schemas.inventory import HostSpec, Inventory

pytestmark = pytest.mark.e2e

PORT_BASE = 23000
# A fixed SHA512-CRYPT hash: nobody logs in here.
HASH = (
    "{SHA512-CRYPT}$6$JCaYrawv3gYKm50L$GECGzDAs4VodT9z.Er1Ves5KQCYKwpgz3xvRo8tshsPQl7NxXwPBBgJ1"
    "UEi3gmyyoCiu6KsMb3swH2PvGqL6F1"
)
HATED = "spammer@bob-hates.test"


def make_inventory() -> Inventory:
    com = Domain(
        domain="example.com",
        accounts=[
            Account(name="alice", password=HASH),
            Account(
                name="bob",
                password=HASH,
                blacklist=SenderList(enabled=True, entries=["@bob-hates.test"]),
            ),
            Account(name="keeper", password=HASH),
            Account(name="postmaster", password=HASH),
        ],
        redirects=[
            # Forward and keep a copy: keeper's own mailbox, bob's, and an outside address.
            Redirect(
                name="keeper", to=["keeper@example.com", "bob@example.com", "far@outside.test"]
            ),
        ],
    )
    org = Domain(
        domain="example.org",
        accounts=[Account(name="carol", password=HASH)],
        catch_all="bob@example.com",
    )
    host = HostSpec(address="127.0.0.1", hostname="mx1.example.com")
    return Inventory(
        hosts={"mx1": host},
        domains={"example.com": com, "example.org": org},
        alias_domains={"alias.test": "example.com"},
    )


@pytest.fixture(scope="module")
def mailhost() -> Iterator[MailHost]:
    with boot_mailhost(
        make_inventory(),
        "mx1",
        None,
        PORT_BASE,
        roles=("postfix", "dovecot", "agent"),
        policy={"smtpd_error_sleep_time": "0s", "postmaster": "postmaster@example.com"},
        start_agent=True,
    ) as mh:
        yield mh


_clients = itertools.count(2)


@pytest.fixture
def client_ip() -> str:
    return f"127.0.0.{next(_clients)}"


def smtp(mh: MailHost, source: str) -> smtplib.SMTP:
    s = smtplib.SMTP(mh.address, mh.ports["smtp"], timeout=10, source_address=(source, 0))
    s.ehlo("client.sender.test")
    return s


def message(subject: str) -> bytes:
    return f"From: x@sender.test\r\nTo: you\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def send(mh: MailHost, source: str, rcpt: str) -> bytes:
    """Send a fresh message to `rcpt` from outside; its unique subject."""
    subject = f"to {rcpt} {uuid.uuid4()}"
    with smtp(mh, source) as s:
        assert s.sendmail("x@sender.test", [rcpt], message(subject)) == {}
    return subject.encode()


def delivered(mh: MailHost, address: str, subject: bytes, before: int) -> bool:
    return any(subject in m for m in mh.wait_for_messages(address, before + 1))


def rcpt_reply(mh: MailHost, source: str, sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtp(mh, source) as s:
        s.mail(sender)
        reply = s.rcpt(rcpt)
        s.rset()
    return reply


def test_keep_a_copy_lands_in_the_mailbox_and_at_every_target(
    mailhost: MailHost, client_ip: str
) -> None:
    before = {a: len(mailhost.messages(a)) for a in ("keeper@example.com", "bob@example.com")}
    subject = send(mailhost, client_ip, "keeper@example.com")
    for address, count in before.items():
        assert delivered(mailhost, address, subject, count), address
    line = mailhost.wait_for_log("to=<far@outside.test>, orig_to=<keeper@example.com>")
    assert "relay=" in line


def test_catch_all_takes_unknown_addresses_and_leaves_accounts_alone(
    mailhost: MailHost, client_ip: str
) -> None:
    before_bob = len(mailhost.messages("bob@example.com"))
    subject = send(mailhost, client_ip, "whoever@example.org")
    assert delivered(mailhost, "bob@example.com", subject, before_bob)
    before_carol = len(mailhost.messages("carol@example.org"))
    before_bob = len(mailhost.messages("bob@example.com"))
    subject = send(mailhost, client_ip, "carol@example.org")
    assert delivered(mailhost, "carol@example.org", subject, before_carol)
    assert not any(subject in m for m in mailhost.messages("bob@example.com")[before_bob:])


def test_alias_domain_delivers_as_its_target(mailhost: MailHost, client_ip: str) -> None:
    before = len(mailhost.messages("alice@example.com"))
    subject = send(mailhost, client_ip, "alice@alias.test")
    assert delivered(mailhost, "alice@example.com", subject, before)


def test_unknown_name_of_an_alias_domain_is_rejected_at_rcpt(
    mailhost: MailHost, client_ip: str
) -> None:
    code, text = rcpt_reply(mailhost, client_ip, "x@sender.test", "nobody@alias.test")
    assert code == 550
    assert b"User unknown" in text


def test_alias_domain_sender_from_outside_is_refused(mailhost: MailHost, client_ip: str) -> None:
    # smtpd_delay_reject: the sender restriction answers at RCPT.
    code, text = rcpt_reply(mailhost, client_ip, "alice@alias.test", "bob@example.com")
    assert code == 553
    assert b"not logged in" in text


@pytest.mark.parametrize(
    ("rcpt", "refused"),
    [
        ("bob@alias.test", True),  # the alias of bob: bob's blacklist
        ("whoever@example.org", True),  # the catch-all reaches bob
        ("keeper@example.com", True),  # the copy goes to bob as well
        ("carol@example.org", False),  # an account of the catch-all domain: its own lists
        ("alice@alias.test", False),
    ],
)
def test_agent_applies_the_lists_behind_each_form(
    mailhost: MailHost, client_ip: str, rcpt: str, refused: bool
) -> None:
    code, text = rcpt_reply(mailhost, client_ip, HATED, rcpt)
    if refused:
        assert code == 554 or code == 550, text
        assert b"blacklist" in text
        assert f"<{rcpt}>".encode() in text  # the address as sent, not the account
    else:
        assert code == 250, text
