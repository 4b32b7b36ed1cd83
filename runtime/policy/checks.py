"""The policy checks, one small function per concern, and the verdicts they return.

Inbound order (the original Mailcfg panel's): global input filter → recipient's blacklist →
recipient's whitelist → SPF → DNS blacklists. Each check returns a `Verdict` or None ("no
opinion, go on"). Outbound: sending limits per authenticated account.

Statistics: every inbound reject counts `rejected` for the recipient account; a reject by the
account's blacklist or by a DNS blacklist also counts `blacklist_blocked` (the panel's "BList:
incoming mail blocked by blacklists" covers both); an SPF reject also counts `spf_blocked`.
These counters are written by the policy service only; the log follower must not count them
again from Postfix's `reject:` lines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from runtime.state.base import Window
from runtime.state.limits import LimitResult
from schemas.domain import SenderList
from schemas.policy import Limits


@dataclass(frozen=True, slots=True)
class Verdict:
    """A Postfix action (`DUNNO`, `REJECT 5.7.1 text`, `PREPEND header: value`...), the local
    account it concerns and the statistics counters it increments for that account."""

    action: str
    account: str | None = None
    counters: tuple[str, ...] = ()
    # A whitelist reject: the sender may get an explanation mail (runtime.notify).
    notice: bool = False


DUNNO = Verdict("DUNNO")


# -- global input filter ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderFilter:
    """Compiled global filter: lowercase substrings and case-insensitive regexes."""

    substrings: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]
    reject_text: str


def compile_filter(lines: Sequence[str], reject_text: str) -> SenderFilter:
    """Lines are plain text (case-insensitive substring of the sender) or `/regex/`."""
    subs: list[str] = []
    pats: list[re.Pattern[str]] = []
    for line in lines:
        if len(line) >= 2 and line.startswith("/") and line.endswith("/"):
            pats.append(re.compile(line[1:-1], re.IGNORECASE))
        else:
            subs.append(line.lower())
    return SenderFilter(tuple(subs), tuple(pats), reject_text)


def check_global_filter(flt: SenderFilter, sender: str, account: str) -> Verdict | None:
    low = sender.lower()
    if any(s in low for s in flt.substrings) or any(p.search(sender) for p in flt.patterns):
        return Verdict(f"REJECT 5.7.1 {flt.reject_text}", account, ("rejected",))
    return None


# -- per-account sender lists -------------------------------------------------------------


def sender_listed(entries: Sequence[str], sender: str) -> bool:
    """An entry is a full address (exact) or `@domain` (exactly that domain); both lowercase.
    The null sender `<>` matches nothing."""
    low = sender.lower()
    if "@" not in low:
        return False
    domain = low[low.rindex("@") :]
    return low in entries or domain in entries


def check_blacklist(lst: SenderList, sender: str, account: str) -> Verdict | None:
    if lst.enabled and sender_listed(lst.entries, sender):
        return Verdict(
            f"REJECT 5.7.1 <{account}>: sender is on the recipient's blacklist",
            account,
            ("rejected", "blacklist_blocked"),
        )
    return None


def check_whitelist(lst: SenderList, sender: str, account: str, text: str) -> Verdict | None:
    """Whitelist on: any sender not on it (the null sender included, as in the original
    panel) is rejected with the configured explanation of how to get approved; the verdict
    is marked for the optional notice mail."""
    if lst.enabled and not sender_listed(lst.entries, sender):
        return Verdict(f"REJECT 5.7.1 <{account}>: {text}", account, ("rejected",), notice=True)
    return None


# -- SPF ----------------------------------------------------------------------------------


def check_spf_result(result: str, explanation: str, header: str, account: str) -> Verdict | None:
    """pyspf result → verdict. fail: reject (RFC 7372 5.7.23); temperror: defer (4.7.24);
    softfail/neutral: accept with a Received-SPF header; others: no opinion."""
    if result == "fail":
        why = explanation or "SPF validation failed"
        return Verdict(
            f"REJECT 5.7.23 SPF fail: {one_line(why)}", account, ("rejected", "spf_blocked")
        )
    if result == "temperror":
        return Verdict(f"DEFER_IF_PERMIT 4.7.24 SPF temporary error: {one_line(explanation)}")
    if result in ("softfail", "neutral"):
        return Verdict(f"PREPEND {one_line(header, 900)}")
    return None


# -- DNS blacklists -----------------------------------------------------------------------


def check_dnsbl_listing(zone: str | None, client: str, account: str) -> Verdict | None:
    if zone is None:
        return None
    return Verdict(
        f"REJECT 5.7.1 Service unavailable; client [{client}] blocked using {zone}",
        account,
        ("rejected", "blacklist_blocked"),
    )


# -- outbound limits ----------------------------------------------------------------------


def limit_windows(limits: Limits) -> list[Window]:
    out = []
    if limits.per_hour is not None:
        out.append(Window("hour", limits.per_hour))
    if limits.per_day is not None:
        out.append(Window("day", limits.per_day))
    if limits.per_month is not None:
        out.append(Window("month", limits.per_month))
    return out


def check_limit_result(res: LimitResult, account: str) -> Verdict:
    """DEFER (not DEFER_IF_PERMIT): the check runs at END-OF-MESSAGE where nothing after it
    could turn it into a permit, and a plain DEFER is final and obvious in the log."""
    if res.allowed:
        return DUNNO
    if res.locked:
        return Verdict(
            f"DEFER 4.7.1 <{account}>: account locked for exceeding its sending limit; "
            "contact the postmaster",
            account,
        )
    period = _PERIOD.get(res.exceeded or "", "a")
    if res.newly_locked:
        return Verdict(
            f"DEFER 4.7.1 <{account}>: {period} sending limit exceeded; "
            "account locked, contact the postmaster",
            account,
        )
    return Verdict(
        f"DEFER 4.7.1 <{account}>: {period} sending limit exceeded; try again later",
        account,
    )


_PERIOD = {"hour": "hourly", "day": "daily", "month": "monthly"}


def one_line(text: str, limit: int = 400) -> str:
    return " ".join(text.split())[:limit]
