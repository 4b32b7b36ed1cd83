"""Names of the per-account daily statistics counters.

The contract between the agent (which stores them and prints them with
`mailcfg-agent stats --format json`) and the compiler (which gathers and reports them): the
original panel's columns plus what spots a stolen password (`login_failures`, `received`).
"""

from __future__ import annotations

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
