"""Mail the agent sends itself: the whitelist notice to a rejected sender and the postmaster
alert when an account is locked.

Both come from the host's postmaster (`notice_from`) with a null envelope sender, so a failing
notice can never bounce into a loop, and are submitted over plain SMTP to the local Postfix
(`notify_smtp`, a client in mynetworks). Sending is blocking (smtplib): the policy server runs
it in a worker thread so no decision waits for it. A failure is logged, never raised: the
reject or the lock is what protects the host, the mail is a courtesy.

Whitelist notice (the original panel's "response with policy explanation", off by default):
a sender rejected by a recipient's whitelist may get one explanation mail per recipient per
day, and only if SPF says the sender's domain authorised the client (`pass`) — never to a
forged address, which would make the host a backscatter source. Null, list and robot senders
never get one (RFC 3834).
"""

from __future__ import annotations

import logging
import re
import smtplib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid

from runtime.policy.dnsbl import split_host_port
from runtime.state.base import StateStore
from schemas.agent import AgentConfig

log = logging.getLogger(__name__)

# "At most one per sender per recipient per day": a rolling day per (sender, recipient) key.
WHITELIST_NOTICE_TTL = 86_400.0

# Senders that must not get automatic replies (RFC 3834 section 2: robots and lists).
_ROBOT_LOCALS = frozenset(
    {"mailer-daemon", "noreply", "no-reply", "donotreply", "do-not-reply", "listserv",
     "majordomo", "bounce", "bounces"}
)  # fmt: skip
# Only plain addresses go into a header and an RCPT: anything quoted, spaced or odd is skipped.
_PLAIN_ADDRESS = re.compile(r"[a-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[a-z0-9-]+(\.[a-z0-9-]+)+")


def notice_from(config: AgentConfig) -> str:
    """The From of every mail the agent sends: the host's postmaster (a real, replyable
    address every mail domain must have)."""
    return formataddr((f"Mail system of {config.hostname}", config.postmaster))


# -- whitelist notice ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoticeJob:
    """A whitelist reject that may deserve an explanation mail to `sender` about `recipient`;
    `client` and `helo` are what SPF is evaluated for."""

    sender: str
    recipient: str
    client: str
    helo: str
    now: float


def is_robot_sender(sender: str) -> bool:
    local = sender.rpartition("@")[0].lower()
    return (
        local in _ROBOT_LOCALS
        or local.startswith(("owner-", "bounce-", "bounces-"))
        or local.endswith(("-request", "-owner", "-bounces"))
    )


def make_notice_job(
    config: AgentConfig, req: Mapping[str, str], recipient: str, now: float
) -> NoticeJob | None:
    """The notice to consider for a whitelist reject of `req`, or None when none may be sent:
    notices off, null/odd/robot sender, or a sender that is the agent itself."""
    if not config.whitelist_notice:
        return None
    sender = req.get("sender", "").lower()
    if not _PLAIN_ADDRESS.fullmatch(sender) or is_robot_sender(sender):
        return None
    if sender == config.postmaster.lower():
        return None
    return NoticeJob(
        sender=sender,
        recipient=recipient.lower(),
        client=req.get("client_address", ""),
        helo=req.get("helo_name", ""),
        now=now,
    )


def notice_key(job: NoticeJob) -> str:
    return f"whitelist-notice:{job.sender}>{job.recipient}"


def default_notice_text(config: AgentConfig) -> str:
    return (
        "Hello,\n\n"
        "your message to {recipient} was not delivered:\n\n"
        f"    {config.whitelist_reject_text}\n\n"
        "This recipient accepts mail only from senders on an approved list, and {sender}\n"
        "is not on it. Please ask the recipient by other means to add your address, then\n"
        "send your message again.\n\n"
        f"This is an automatic notice from {config.hostname}, sent at most once a day per\n"
        "sender and recipient. Replies to it are not read by the recipient.\n"
    )


def make_whitelist_notice(config: AgentConfig, job: NoticeJob) -> EmailMessage:
    template = config.whitelist_notice_text or default_notice_text(config)
    # Plain replacement, not str.format: an admin's text may contain braces of its own.
    body = template.replace("{sender}", job.sender).replace("{recipient}", job.recipient)
    msg = EmailMessage()
    msg["From"] = notice_from(config)
    msg["To"] = job.sender
    msg["Subject"] = f"Your message to {job.recipient} was not delivered"
    msg["Date"] = formatdate(job.now, localtime=True)
    msg["Message-ID"] = make_msgid(domain=config.hostname)
    msg["Auto-Submitted"] = "auto-replied"
    # Keeps Exchange/Outlook out-of-office replies from answering the notice.
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(body if body.endswith("\n") else body + "\n")
    return msg


def deliver_whitelist_notice(
    config: AgentConfig,
    job: NoticeJob,
    store: StateStore,
    check_spf: Callable[[NoticeJob], str],
    send: Callable[[EmailMessage, Sequence[str]], bool],
) -> str:
    """Decide and send one notice (blocking); returns what happened, for the log and tests.
    SPF first, then the ledger: a failed SPF check must not use up the day's notice. The
    ledger is taken before sending, so two concurrent rejects send one mail; a failed send is
    not retried that day (a courtesy mail is not worth a second one)."""
    result = check_spf(job)
    if result != "pass":
        return f"not sent: SPF {result}"
    if not store.once(notice_key(job), WHITELIST_NOTICE_TTL, job.now):
        return "not sent: already sent today"
    if not send(make_whitelist_notice(config, job), [job.sender]):
        return "send failed"
    return "sent"


# -- lock alert ---------------------------------------------------------------------------


def make_lock_alert(
    config: AgentConfig, account: str, reason: str, counts: Mapping[str, int], now: float
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = notice_from(config)
    msg["To"] = config.postmaster
    msg["Subject"] = f"[mailcfg] {account} locked on {config.hostname}: {reason}"
    msg["Date"] = formatdate(now, localtime=True)
    msg["Message-ID"] = make_msgid(domain=config.hostname)
    msg["Auto-Submitted"] = "auto-generated"
    usage = ", ".join(f"{k} {v}" for k, v in counts.items()) or "n/a"
    msg.set_content(
        f"The account {account} was locked on {config.hostname} at "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(now))}.\n\n"
        f"Reason: {reason}\nUsage this hour/day/month: {usage}\n\n"
        "Every further submission from it is deferred until an administrator runs\n"
        f"  mailcfg-agent unlock {account}\n"
        "on the host (or `mailcfg unlock INVENTORY HOST ADDRESS`). A sudden burst usually means\n"
        "a stolen password: change it before unlocking.\n"
    )
    return msg


# -- submission ---------------------------------------------------------------------------


def send_mail(
    smtp: str, msg: EmailMessage, to_addrs: Sequence[str] | None = None, timeout: float = 30.0
) -> bool:
    """Submit `msg` to `host:port` (recipients: `to_addrs`, default the headers'); False
    (logged) on any failure."""
    host, port = split_host_port(smtp, 25)
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as s:
            # Envelope sender is null so a failing notice can never bounce into a loop.
            refused = s.send_message(msg, from_addr="<>", to_addrs=to_addrs)
    except (OSError, smtplib.SMTPException) as exc:
        log.error("could not send %r to %s via %s: %s", msg["Subject"], msg["To"], smtp, exc)
        return False
    if refused:
        log.error("%r: recipients refused via %s: %s", msg["Subject"], smtp, refused)
    return True
