"""The whitelist notice: who may get one, what it says, once per sender and recipient a day,
only after SPF pass; sent in the background through a real SMTP sink, SPF from a real DNS
server on loopback."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import threading
from collections.abc import Iterator, Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from runtime.notify import (
    WHITELIST_NOTICE_TTL,
    NoticeJob,
    deliver_whitelist_notice,
    make_lock_alert,
    make_notice_job,
    make_whitelist_notice,
    notice_from,
    send_mail,
)
from runtime.policy.checks import check_blacklist, check_whitelist
from runtime.policy.connection import run_policy_service
from runtime.policy.engine import Policy
from runtime.policy.service import PolicyService
from runtime.state.base import StateStore
from runtime.state.sqlite import SqliteStore
from schemas.agent import AgentConfig
from schemas.domain import SenderList
from tests.runtime.dnsserver import Zone, dns_server
from tests.runtime.policy_fixtures import encode, inbound, make_config
from tests.runtime.smtpsink import smtp_sink

DNS_PORT = 22061
SINK_PORT = 22062
CAROL = "carol@example.com"  # whitelist on: friend@ok.org, @family.net
NOW = 1_700_000_000.0

ZONE = Zone({"strict.test": [("TXT", "v=spf1 ip4:192.0.2.10 -all")]})


def notice_config(**kw: Any) -> AgentConfig:
    return make_config(
        whitelist_notice=True,
        spam={"spf": False, "nameservers": [f"127.0.0.1:{DNS_PORT}"], "dns_timeout": 2},
        notify_smtp=f"127.0.0.1:{SINK_PORT}",
        **kw,
    )


def job(sender: str = "someone@strict.test", recipient: str = CAROL, now: float = NOW) -> NoticeJob:
    return NoticeJob(sender, recipient, "192.0.2.10", "mail.strict.test", now)


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[EmailMessage, Sequence[str]]] = []

    def __call__(self, msg: EmailMessage, to: Sequence[str]) -> bool:
        self.sent.append((msg, to))
        return True


@pytest.fixture
def store() -> Iterator[StateStore]:
    s = SqliteStore(":memory:")
    yield s
    s.close()


@pytest.fixture(scope="module")
def nameserver() -> Iterator[str]:
    with dns_server(ZONE, DNS_PORT) as ns:
        yield ns


# -- who may get a notice -----------------------------------------------------------------


def test_only_whitelist_rejects_are_marked_for_a_notice() -> None:
    wl = SenderList(enabled=True, entries=["friend@ok.org"])
    v = check_whitelist(wl, "x@y.org", CAROL, "ask carol")
    assert v is not None and v.notice
    b = check_blacklist(SenderList(enabled=True, entries=["@y.org"]), "x@y.org", CAROL)
    assert b is not None and not b.notice


def test_notice_is_off_by_default() -> None:
    policy = Policy(make_config())
    verdict = policy.check_lists(inbound(CAROL, "someone@strict.test"), CAROL)
    assert verdict is not None and verdict.notice
    assert policy.notice_job(inbound(CAROL, "someone@strict.test"), verdict, NOW) is None


def test_notice_job_for_a_whitelist_reject() -> None:
    policy = Policy(notice_config())
    req = inbound(CAROL, "SomeOne@Strict.test", client="192.0.2.10", helo="mail.strict.test")
    verdict = policy.check_lists(req, CAROL)
    assert verdict is not None
    assert policy.notice_job(req, verdict, NOW) == NoticeJob(
        "someone@strict.test", CAROL, "192.0.2.10", "mail.strict.test", NOW
    )
    # A blacklist reject of the same account earns nothing (carol blacklists @family.net).
    black = policy.check_lists(inbound(CAROL, "x@family.net"), CAROL)
    assert black is not None and not black.notice
    assert policy.notice_job(inbound(CAROL, "x@family.net"), black, NOW) is None


@pytest.mark.parametrize(
    "sender",
    [
        "",  # null sender: bounces are never answered
        "MAILER-DAEMON@strict.test",
        "owner-list@strict.test",
        "list-request@strict.test",
        "noreply@strict.test",
        "bounce-123@strict.test",
        "postmaster@example.com",  # the agent's own From: no loop with ourselves
        "a b@strict.test",  # odd envelope addresses never reach a header or an RCPT
        'x"y@strict.test',
        "x@strict.test\r\nBcc: victim@example.org",
        "no-domain",
    ],
)
def test_no_notice_for_null_robot_own_or_odd_senders(sender: str) -> None:
    assert make_notice_job(notice_config(), inbound(CAROL, sender), CAROL, NOW) is None


# -- the message --------------------------------------------------------------------------


def test_notice_message_headers_and_default_text() -> None:
    config = notice_config()
    msg = make_whitelist_notice(config, job())
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["To"] == "someone@strict.test"
    assert msg["From"] == notice_from(config)
    assert "<postmaster@example.com>" in msg["From"]
    assert CAROL in msg["Subject"]
    body = msg.get_content()
    assert config.whitelist_reject_text in body
    assert "someone@strict.test" in body and CAROL in body


def test_custom_notice_text_with_placeholders() -> None:
    text = "Dear {sender},\n{recipient} only reads approved mail. {Braces} stay as they are."
    msg = make_whitelist_notice(notice_config(whitelist_notice_text=text), job())
    assert msg.get_content() == (
        "Dear someone@strict.test,\ncarol@example.com only reads approved mail. "
        "{Braces} stay as they are.\n"
    )


def test_lock_alert_uses_the_same_sender() -> None:
    config = notice_config()
    alert = make_lock_alert(config, "alice@example.com", "hour", {"hour": 3}, NOW)
    assert alert["From"] == notice_from(config)


# -- the decision -------------------------------------------------------------------------


def test_one_notice_per_sender_per_recipient_per_day(store: StateStore) -> None:
    config, out = notice_config(), Outbox()

    def deliver(j: NoticeJob) -> str:
        return deliver_whitelist_notice(config, j, store, lambda _: "pass", out)

    assert deliver(job()) == "sent"
    assert deliver(job(now=NOW + 3600)) == "not sent: already sent today"
    assert deliver(job(sender="other@strict.test")) == "sent"
    assert deliver(job(recipient="bob@example.com")) == "sent"
    assert deliver(job(now=NOW + WHITELIST_NOTICE_TTL)) == "sent"
    someone, other = ["someone@strict.test"], ["other@strict.test"]
    assert [to for _, to in out.sent] == [someone, other, someone, someone]


@pytest.mark.parametrize("result", ["fail", "softfail", "neutral", "none", "temperror"])
def test_no_notice_unless_spf_passes_and_the_day_is_not_used_up(
    store: StateStore, result: str
) -> None:
    config, out = notice_config(), Outbox()
    outcome = deliver_whitelist_notice(config, job(), store, lambda _: result, out)
    assert outcome == f"not sent: SPF {result}"
    assert out.sent == []
    # The forged attempt did not take the real sender's notice of the day.
    assert deliver_whitelist_notice(config, job(), store, lambda _: "pass", out) == "sent"


def test_failed_send_is_reported(store: StateStore) -> None:
    outcome = deliver_whitelist_notice(
        notice_config(), job(), store, lambda _: "pass", lambda m, t: False
    )
    assert outcome == "send failed"


def test_notice_spf_through_a_real_dns_server(nameserver: str) -> None:
    # SPF checks of inbound mail are off in this config: notices still evaluate SPF.
    policy = Policy(notice_config())
    assert policy.spf is None and policy.notice_spf is not None
    assert policy.notice_spf_result(job()) == "pass"
    forged = NoticeJob("someone@strict.test", CAROL, "192.0.2.11", "x.test", NOW)
    assert policy.notice_spf_result(forged) == "fail"
    unknown = NoticeJob("someone@strict.test", CAROL, "unknown", "x.test", NOW)
    assert policy.notice_spf_result(unknown) == "none"


def test_send_mail_uses_the_null_envelope_sender() -> None:
    config = notice_config()
    with smtp_sink(SINK_PORT) as sink:
        assert send_mail(config.notify_smtp, make_whitelist_notice(config, job()), [job().sender])
        (env,) = sink.wait_for(1)
    assert env.mail_from == ""
    assert env.rcpts == ("someone@strict.test",)
    msg = email.message_from_bytes(env.data, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"


def test_send_mail_failure_is_false_not_an_exception() -> None:
    config = notice_config()
    # Nothing listens on the sink port outside a `smtp_sink` block.
    assert not send_mail(config.notify_smtp, make_whitelist_notice(config, job()), ["a@b.test"])


# -- in the policy service ----------------------------------------------------------------


async def ask(sock: str, req: dict[str, str]) -> str:
    reader, writer = await asyncio.open_unix_connection(sock)
    writer.write(encode(req))
    await writer.drain()
    data = await asyncio.wait_for(reader.readuntil(b"\n\n"), 10)
    writer.close()
    return data.decode().strip().removeprefix("action=")


def serve(tmp: Path, config: AgentConfig, body: Any, **service_kw: Any) -> None:
    async def main() -> None:
        sock = str(tmp / "policy.sock")
        store = SqliteStore(tmp / "state.db")
        service = PolicyService(Policy(config), store, **service_kw)
        stop = asyncio.Event()
        server = asyncio.create_task(run_policy_service(f"unix:{sock}", service, stop))
        while not os.path.exists(sock):
            await asyncio.sleep(0.01)
        try:
            await body(sock)
        finally:
            stop.set()
            await server  # drains background notices
            store.close()

    asyncio.run(main())


def test_the_reject_never_waits_for_the_notice(tmp_path: Path) -> None:
    """The notice job blocks until the client has its reply: if the service waited for the
    notice, the reply would never come (the client's 10 s read timeout fails the test)."""
    replied = threading.Event()
    jobs: list[NoticeJob] = []

    def send_notice(policy: Policy, j: NoticeJob, store: StateStore) -> None:
        assert replied.wait(10)
        jobs.append(j)

    async def body(sock: str) -> None:
        reply = await ask(sock, inbound(CAROL, "someone@strict.test", client="192.0.2.10"))
        assert reply.startswith("REJECT 5.7.1 <carol@example.com>: Ask carol")
        replied.set()
        assert await ask(sock, inbound(CAROL, "friend@ok.org")) == "DUNNO"

    serve(tmp_path, notice_config(), body, send_notice=send_notice)
    assert [j.sender for j in jobs] == ["someone@strict.test"]


def test_service_sends_one_notice_only_after_spf_pass(tmp_path: Path, nameserver: str) -> None:
    async def body(sock: str) -> None:
        for _ in range(2):  # the same sender twice the same day
            req = inbound(CAROL, "someone@strict.test", client="192.0.2.10")
            assert (await ask(sock, req)).startswith("REJECT")
        forged = inbound(CAROL, "forged@strict.test", client="192.0.2.11")
        assert (await ask(sock, forged)).startswith("REJECT")

    with smtp_sink(SINK_PORT) as sink:
        serve(tmp_path, notice_config(), body)
        received = sink.wait_for(1)
    assert len(received) == 1
    assert received[0].rcpts == ("someone@strict.test",)
    assert received[0].mail_from == ""
