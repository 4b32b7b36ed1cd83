"""The policy checks, one small function per concern, and the verdicts they return.

Inbound order (the original Mailcfg panel's): global input filter → recipient's blacklist →
recipient's whitelist → SPF → DNS blacklists. Each check returns a `Verdict` or None ("no
opinion, go on"). Outbound: the reply to a sending-limit decision (the limit rules themselves
are runtime.state.limits').

The global filter's regexes are RE2 (`schemas.policy.compile_filter_regex`, the one compile
`mailcfg validate` uses too): matched in time linear in the sender's length whatever the
pattern, against the sender's UTF-8 (bytes that are not UTF-8 count as one character each,
never an exception that would answer the fail-safe action).

Statistics: every inbound reject counts `rejected` for one local account (`Verdict.account`;
which one for a redirect: see runtime.policy.recipients); a reject by an account's blacklist or
by a DNS blacklist also counts `blacklist_blocked` (the panel's "BList: incoming mail blocked
by blacklists" covers both); an SPF reject also counts `spf_blocked`. A reply names the
recipient as addressed (`rcpt`), never the account behind a redirect. These counters are
written by the policy service only; the log follower must not count them again from
Postfix's `reject:` lines.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.state.limits import LimitResult
from schemas.domain import SenderList
from schemas.policy import compile_filter_regex, filter_regex


@dataclass(frozen=True, slots=True)
class Verdict:
    """A Postfix action (`DUNNO`, `REJECT 5.7.1 text`, `PREPEND header: value`...), the local
    account whose statistics counters it increments (None: no account's) and those counters."""

    action: str
    account: str | None = None
    counters: tuple[str, ...] = ()
    # A whitelist reject: the sender may get an explanation mail (runtime.notify).
    notice: bool = False


DUNNO = Verdict("DUNNO")


# -- global input filter ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SenderFilter:
    """Compiled global filter: lowercase substrings and case-insensitive RE2 regexes."""

    substrings: tuple[str, ...]
    patterns: tuple[Any, ...]  # re2 patterns (the module has no type stubs)
    reject_text: str


def compile_filter(lines: Sequence[str], reject_text: str) -> SenderFilter:
    """Lines are plain text (case-insensitive substring of the sender) or `/regex/`, compiled
    by the same function that validated them (`re2.error` for a line that would not)."""
    subs: list[str] = []
    pats: list[Any] = []
    for line in lines:
        pattern = filter_regex(line)
        if pattern is None:
            subs.append(line.lower())
        else:
            pats.append(compile_filter_regex(pattern))
    return SenderFilter(tuple(subs), tuple(pats), reject_text)


def sender_filtered(flt: SenderFilter, sender: str) -> bool:
    low = sender.lower()
    if any(s in low for s in flt.substrings):
        return True
    if not flt.patterns:
        return False
    try:
        data = sender.encode()
    except UnicodeEncodeError:
        # Bytes that were not UTF-8 (kept as surrogate escapes) become U+FFFD, one character
        # each, so `.` matches them as any other character: no exception, no way around.
        data = sender.encode(errors="surrogateescape").decode(errors="replace").encode()
    return any(p.search(data) is not None for p in flt.patterns)


def check_global_filter(flt: SenderFilter, sender: str, account: str | None) -> Verdict | None:
    if sender_filtered(flt, sender):
        return Verdict(f"REJECT 5.7.1 {flt.reject_text}", account, ("rejected",))
    return None


# -- per-account sender lists -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountList:
    """One account's enabled black or white list, as a set."""

    account: str
    entries: frozenset[str]


def make_account_list(account: str, lst: SenderList) -> AccountList | None:
    """The list as the checks use it, or None when it is off."""
    return AccountList(account, frozenset(lst.entries)) if lst.enabled else None


def sender_listed(entries: Container[str], sender: str) -> bool:
    """An entry is a full address (exact) or `@domain` (exactly that domain); both lowercase.
    The null sender `<>` matches nothing."""
    low = sender.lower()
    if "@" not in low:
        return False
    domain = low[low.rindex("@") :]
    return low in entries or domain in entries


def check_blacklists(lists: Sequence[AccountList], sender: str, rcpt: str) -> Verdict | None:
    """Refused when any of the lists (of the accounts mail to `rcpt` reaches) has the
    sender; counted for the first of those accounts."""
    for lst in lists:
        if sender_listed(lst.entries, sender):
            return Verdict(
                f"REJECT 5.7.1 <{rcpt}>: sender is on the recipient's blacklist",
                lst.account,
                ("rejected", "blacklist_blocked"),
            )
    return None


def check_whitelists(
    lists: Sequence[AccountList], sender: str, rcpt: str, text: str
) -> Verdict | None:
    """Refused when any of the lists lacks the sender (the null sender included, as in the
    original panel), with the configured explanation of how to get approved; counted for the
    first account whose list refused; marked for the optional notice mail."""
    for lst in lists:
        if not sender_listed(lst.entries, sender):
            return Verdict(
                f"REJECT 5.7.1 <{rcpt}>: {text}", lst.account, ("rejected",), notice=True
            )
    return None


def check_blacklist(lst: SenderList, sender: str, account: str) -> Verdict | None:
    """`check_blacklists` for one account addressed directly."""
    one = make_account_list(account, lst)
    return check_blacklists((one,), sender, account) if one is not None else None


def check_whitelist(lst: SenderList, sender: str, account: str, text: str) -> Verdict | None:
    """`check_whitelists` for one account addressed directly."""
    one = make_account_list(account, lst)
    return check_whitelists((one,), sender, account, text) if one is not None else None


# -- SPF ----------------------------------------------------------------------------------


def check_spf_result(
    result: str, explanation: str, header: str, account: str | None
) -> Verdict | None:
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


def check_dnsbl_listing(zone: str | None, client: str, account: str | None) -> Verdict | None:
    if zone is None:
        return None
    return Verdict(
        f"REJECT 5.7.1 Service unavailable; client [{client}] blocked using {zone}",
        account,
        ("rejected", "blacklist_blocked"),
    )


# -- outbound limits ----------------------------------------------------------------------


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
