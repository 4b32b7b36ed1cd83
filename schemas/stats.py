"""Names of the per-account daily statistics counters, and what a day key is.

The contract between the agent (which stores them and prints them with
`mailcfg-agent stats --format json`) and the compiler (which gathers and reports them): the
original panel's columns plus what spots a stolen password (`login_failures`, `received`).
"""

from __future__ import annotations

import re
from datetime import date

_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

STAT_COUNTERS: tuple[str, ...] = (
    "pop3_logins",
    "imap_logins",
    "sent",
    "bounced",
    "deferred",
    "queued",
    "rejected",
    "blacklist_blocked",
    "spf_blocked",
    "lost_connections",
    "login_failures",
    "received",
)


def check_day(text: str) -> str:
    """`text` when it is a real date written YYYY-MM-DD (the agent's day keys), else a
    ValueError saying what is wrong."""
    if not _DAY.fullmatch(text):
        raise ValueError(f"{text!r} is not a day written YYYY-MM-DD")
    try:
        date.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is no date: {exc}") from None
    return text
