"""Mail the agent sends itself: the postmaster alert when an account is locked.

Submitted over plain SMTP to the local Postfix (`notify_smtp`, trusted by mynetworks). Sending
is blocking (smtplib); the policy server runs it in a worker thread so no decision waits for it.
A failure is logged, never raised: the lock is what protects the host, the mail is a courtesy.
"""

from __future__ import annotations

import logging
import smtplib
import time
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from runtime.policy.dnsbl import split_host_port
from schemas.agent import AgentConfig

log = logging.getLogger(__name__)


def make_lock_alert(
    config: AgentConfig, account: str, reason: str, counts: Mapping[str, int], now: float
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"mailcfg-agent@{config.hostname}"
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


def send_mail(smtp: str, msg: EmailMessage, timeout: float = 30.0) -> bool:
    """Submit `msg` to `host:port`; False (logged) on any failure."""
    host, port = split_host_port(smtp, 25)
    try:
        with smtplib.SMTP(host, port, timeout=timeout) as s:
            # Envelope sender is null so a failing alert can never bounce into a loop.
            s.send_message(msg, from_addr="<>")
    except (OSError, smtplib.SMTPException) as exc:
        log.error("could not send %r to %s via %s: %s", msg["Subject"], msg["To"], smtp, exc)
        return False
    return True
