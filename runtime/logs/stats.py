"""Events → per-account per-day counters, with the queue-id and session tracking it needs.

`Tally` attributes each event to an account (decisions documented in `AccountPolicy`):
- `sent` / `bounced` / `deferred`: one per recipient delivery attempt of a message whose
  envelope sender (the latest `qmgr … from=<…>`) is a local address;
- `received`: one per successful delivery to a local address;
- `rejected`: Postfix `reject:` lines whose sender is local (outbound shipments refused);
- `imap_logins` / `pop3_logins` / `login_failures` (IMAP, POP3, SMTP AUTH);
- `lost_connections`: smtpd sessions in which the account authenticated and that end with
  `lost connection after …`, plus Dovecot sessions closed by the client or for inactivity.
`blacklist_blocked` / `spf_blocked` are counted by the policy service when it decides (it knows
why it refused; the log line alone cannot tell a policy text from a server text), and `queued`
is a gauge read from `postqueue -j` (`queue_gauge`), never from the log.

Tracking state is bounded: a queue id is dropped on `removed`, an smtpd session on
`disconnect`; only local senders and sendmail-submitted ids are remembered. `snapshot()` /
`restore()` carry it across a restart of the follower.

Log-driven limits: a message submitted with the `sendmail` command (`pickup`) never passes the
policy service, so when qmgr first sees it the recipients (or the message) are charged to the
sender's account with `consume(force=True)`; `Tally.charges` lists them, dated by the pickup
line, for the caller to apply (`runtime.logs.ingest.apply_charges`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.logs.parser import (
    DELIVERY,
    G_CONN,
    G_FAILED,
    G_LOGIN,
    G_LOGIN_FAILED,
    G_LOST,
    G_NRCPT,
    G_REJECT,
    G_REMOVED,
    G_SASL,
    G_STATUS,
    G_SVC,
    LOG_RE,
    LOGIN,
    LOGIN_FAILED,
    PICKED_UP,
    QUEUED,
    REJECT,
    REMOVED,
    SESSION_LOST,
    SMTP_AUTH,
    SMTP_END,
    SMTP_LOST,
    Event,
    LineParser,
    at_line_tag,
    match_event,
    postfix_tag,
    reject_sender,
    split_days,
)

# Tracked ids beyond this are evicted oldest-first (a queue this large means the log lost
# `removed` lines, e.g. the follower started mid-way; never grow without bound).
MAX_TRACKED = 200_000
# Distinct raw addresses remembered with their local form (or "" when not local).
MAX_ADDRESSES = 65_536


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """Which addresses get counters: any address of a local domain. Login failures only for
    known accounts (when the list is known), so a dictionary attack does not mint rows."""

    local_domains: frozenset[str]
    accounts: frozenset[str] = frozenset()

    def is_local(self, address: str) -> bool:
        at = address.rfind("@")
        return at > 0 and address[at + 1 :] in self.local_domains

    def is_account(self, address: str) -> bool:
        return address in self.accounts if self.accounts else self.is_local(address)


@dataclass(frozen=True, slots=True)
class Charge:
    """Recipients of a sendmail-submitted message to charge to `account`'s sending limits;
    `time` is when it was submitted (its `pickup` line), not when the log was read."""

    account: str
    recipients: int
    day: str
    qid: str
    time: float


# The counters the log gives, in the order of a row's slots (`Tally.by_day`).
LOG_COUNTERS = (
    "sent",
    "bounced",
    "deferred",
    "received",
    "rejected",
    "imap_logins",
    "pop3_logins",
    "login_failures",
    "lost_connections",
)
SLOT = {name: i for i, name in enumerate(LOG_COUNTERS)}
RECEIVED, REJECTED, LOGIN_FAILURES, LOST = (
    SLOT["received"],
    SLOT["rejected"],
    SLOT["login_failures"],
    SLOT["lost_connections"],
)
LOGIN_SLOT = {"imap": SLOT["imap_logins"], "pop3": SLOT["pop3_logins"]}
Rows = dict[str, list[int]]  # account → its counters of one day, in LOG_COUNTERS order


@dataclass
class Tally:
    """Counters since the last `take_rows`, as day → account → one list of ints: the state
    grows with accounts and days, never with lines, and a count is one list slot increment."""

    policy: AccountPolicy
    by_day: dict[str, Rows] = field(default_factory=dict)
    senders: dict[str, str] = field(default_factory=dict)  # qid → local sender
    picked_up: dict[str, float] = field(default_factory=dict)  # qid → time of pickup
    sessions: dict[str, str] = field(default_factory=dict)  # smtpd tag → account
    charges: list[Charge] = field(default_factory=list)
    # Raw address as logged → its lower-cased form if local, else "": one dict hit per line
    # instead of lower() + domain split + set lookup.
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[tuple[str, str, str], int]:
        """The counters as {(day, account, name): n} (no zeros): for tests and debugging."""
        return {
            (day, account, LOG_COUNTERS[i]): n
            for day, rows in self.by_day.items()
            for account, row in rows.items()
            for i, n in enumerate(row)
            if n
        }

    def local_address(self, raw: str) -> str:
        """`raw` lower-cased if it is a local address, else ""."""
        known = self.addresses.get(raw)
        if known is not None:
            return known
        address = raw.lower()
        if not self.policy.is_local(address):
            address = ""
        if len(self.addresses) >= MAX_ADDRESSES:
            self.addresses.clear()
        self.addresses[raw] = address
        return address

    def day_rows(self, day: str) -> Rows:
        rows = self.by_day.get(day)
        if rows is None:
            rows = self.by_day[day] = {}
        return rows

    def add_events(self, events: Iterable[Event]) -> None:
        senders = self.senders
        is_local = self.policy.is_local
        inc = self._inc
        for ev in events:
            kind = ev[0]
            if kind == DELIVERY:
                _, day, qid, rcpt, status = ev
                sender = senders.get(qid)
                if sender is not None:
                    inc(day, sender, SLOT[status])
                if status == "sent" and is_local(rcpt):
                    inc(day, rcpt, RECEIVED)
            elif kind == QUEUED:
                _, day, qid, sender, nrcpt = ev
                if is_local(sender):
                    if qid not in senders and len(senders) >= MAX_TRACKED:
                        del senders[next(iter(senders))]
                    senders[qid] = sender
                    when = self.picked_up.pop(qid, None)
                    if when is not None and self.policy.is_account(sender):
                        self.charges.append(Charge(sender, nrcpt, day, qid, when))
                else:
                    senders.pop(qid, None)
                    self.picked_up.pop(qid, None)
            elif kind == REMOVED:
                senders.pop(ev[2], None)
                self.picked_up.pop(ev[2], None)
            elif kind == LOGIN:
                _, day, service, account = ev
                if is_local(account):
                    inc(day, account, LOGIN_SLOT.get(service, SLOT["pop3_logins"]))
            elif kind == SMTP_END:
                self.sessions.pop(ev[2], None)
            elif kind == SMTP_AUTH:
                if is_local(ev[3]):
                    if len(self.sessions) >= MAX_TRACKED:
                        del self.sessions[next(iter(self.sessions))]
                    self.sessions[ev[2]] = ev[3]
            elif kind == SMTP_LOST:
                account = self.sessions.pop(ev[2], None)
                if account is not None:
                    inc(ev[1], account, LOST)
            elif kind == SESSION_LOST:
                if is_local(ev[3]):
                    inc(ev[1], ev[3], LOST)
            elif kind == REJECT:
                if is_local(ev[2]):
                    inc(ev[1], ev[2], REJECTED)
            elif kind == LOGIN_FAILED:
                if self.policy.is_account(ev[3]):
                    inc(ev[1], ev[3], LOGIN_FAILURES)
            elif kind == PICKED_UP:
                if len(self.picked_up) >= MAX_TRACKED:
                    del self.picked_up[next(iter(self.picked_up))]
                self.picked_up[ev[2]] = ev[3]

    def add_text(self, text: str, parser: LineParser) -> int:
        """Count the events of `text` (whole lines) and return its number of lines: the same
        counts as `add_events(parser.parse_text(text))` (a test holds them equal). A run of
        lines of one day (nearly every chunk) goes through `_count_day`; lines of mixed days
        (a chunk across midnight, lines without a timestamp) are dated one by one as events."""
        lines = 0
        for start, end, day, segment_lines in split_days(text, parser.days):
            lines += segment_lines
            if day is None:
                self.add_events(parser.events_between(text, start, end))
            else:
                self._count_day(text, start, end, day, parser)
        return lines

    def _count_day(self, text: str, start: int, end: int, day: str, parser: LineParser) -> None:
        """Count `text[start:end]`, lines of `day`: the agent's hot path, fused into one loop
        that builds no event for the frequent lines. Per match: one dispatch on the group that
        closed last, one or two dict hits and a list slot increment."""
        senders = self.senders
        sessions = self.sessions
        picked_up = self.picked_up
        addresses = self.addresses
        local_address = self.local_address
        rfind = text.rfind
        is_account = self.policy.is_account
        width = len(LOG_COUNTERS)
        slot = SLOT
        rows = self.day_rows(day)
        find = text.find
        for m in LOG_RE.finditer(text, start, end):
            pos = m.start()
            # `at_line_tag`, asked only when the line has a ": " before the match (Dovecot
            # through syslog, or text after the tag): most lines of interest have none.
            if find(": ", rfind("\n", 0, pos) + 1, pos) >= 0 and not at_line_tag(text, pos):
                continue
            last = m.lastindex
            if last == G_STATUS:
                qid, rcpt, status = m.group(1, 2, 3)
                sender = senders.get(qid)
                if sender is not None:
                    row = rows.get(sender)
                    if row is None:
                        row = rows[sender] = [0] * width
                    row[slot[status]] += 1
                if status == "sent":
                    account = addresses.get(rcpt)
                    if account is None:
                        account = local_address(rcpt)
                    if account:
                        row = rows.get(account)
                        if row is None:
                            row = rows[account] = [0] * width
                        row[RECEIVED] += 1
            elif last == G_CONN:
                if sessions:
                    pos = m.start()  # the tag is the word before (see `postfix_tag`)
                    sessions.pop(text[rfind(" ", 0, pos) + 1 : pos], None)
            elif last == G_NRCPT:
                qid, sender = m.group(1, 4)
                account = addresses.get(sender)
                if account is None:
                    account = local_address(sender)
                if not account:
                    senders.pop(qid, None)
                    if picked_up:
                        picked_up.pop(qid, None)
                elif picked_up:
                    # Maybe a sendmail submission to charge: the event path holds the rules.
                    self.add_events((_queued(m, day),))
                else:
                    if qid not in senders and len(senders) >= MAX_TRACKED:
                        del senders[next(iter(senders))]
                    senders[qid] = account
            elif last == G_REMOVED:
                qid = m.group(1)
                senders.pop(qid, None)
                if picked_up:
                    picked_up.pop(qid, None)
            elif last == G_LOGIN:
                raw = m.group(G_LOGIN)
                account = addresses.get(raw)
                if account is None:
                    account = local_address(raw)
                if account:
                    row = rows.get(account)
                    if row is None:
                        row = rows[account] = [0] * width
                    row[LOGIN_SLOT[m.group(G_SVC)]] += 1
            elif last == G_SASL:
                tag = postfix_tag(text, m.start())
                if tag.endswith("smtpd]") or "/smtpd[" in tag:
                    raw = m.group(G_SASL)
                    account = addresses.get(raw)
                    if account is None:
                        account = local_address(raw.strip())
                    if account:
                        if len(sessions) >= MAX_TRACKED:
                            del sessions[next(iter(sessions))]
                        sessions[tag] = account
            elif last == G_LOST:
                if sessions:
                    pos = m.start()
                    account = sessions.pop(text[rfind(" ", 0, pos) + 1 : pos], None)
                    if account is not None:
                        self._inc(day, account, LOST)
            elif last in (G_LOGIN_FAILED, G_FAILED):
                raw = m.group(last)
                if last == G_FAILED:
                    raw = raw.strip()  # Postfix's sasl_username= may carry spaces
                account = addresses.get(raw)
                if account is None:
                    account = local_address(raw)
                if account and is_account(account):
                    self._inc(day, account, LOGIN_FAILURES)
            elif last == G_REJECT:
                raw = reject_sender(m.group(G_REJECT))
                if raw is not None:
                    account = addresses.get(raw)
                    if account is None:
                        account = local_address(raw)
                    if account:
                        self._inc(day, account, REJECTED)
            else:
                event = match_event(m, text, day, parser.days)
                if event is not None:
                    self.add_events((event,))

    def _inc(self, day: str, account: str, slot: int) -> None:
        rows = self.day_rows(day)
        row = rows.get(account)
        if row is None:
            row = rows[account] = [0] * len(LOG_COUNTERS)
        row[slot] += 1

    def take_rows(self) -> CounterRows:
        """The counters accumulated since the last call, grouped by (day, account); resets."""
        by_day, self.by_day = self.by_day, {}
        return CounterRows(by_day)

    def take_charges(self) -> list[Charge]:
        charges, self.charges = self.charges, []
        return charges

    def snapshot(self) -> str:
        """The tracking state (not the counters) as JSON."""
        return json.dumps(
            {"senders": self.senders, "picked_up": self.picked_up, "sessions": self.sessions},
            separators=(",", ":"),
        )

    def restore(self, text: str) -> None:
        data: Any = json.loads(text)
        self.senders = {str(k): str(v) for k, v in data["senders"].items()}
        # Times of pickups (an older snapshot held days: those pending charges are dropped).
        self.picked_up = {
            str(k): float(v) for k, v in data["picked_up"].items() if isinstance(v, (int, float))
        }
        self.sessions = {str(k): str(v) for k, v in data["sessions"].items()}


class CounterRows(Mapping[tuple[str, str], Mapping[str, int]]):
    """`Tally.take_rows`: (day, account) → {counter: n} (no zeros), made from the day's lists
    as each row is read: a backfill of thousands of account-days hands them to the store
    without a second copy of them all."""

    def __init__(self, by_day: dict[str, Rows]) -> None:
        self._by_day = by_day

    def __getitem__(self, key: tuple[str, str]) -> dict[str, int]:
        day, account = key
        return _named(self._by_day[day][account])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for day, rows in self._by_day.items():
            for account in rows:
                yield day, account

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._by_day.values())


def _named(row: list[int]) -> dict[str, int]:
    return {LOG_COUNTERS[i]: n for i, n in enumerate(row) if n}


def _queued(m: re.Match[str], day: str) -> Event:
    qid, sender, nrcpt = m.group(1, 4, 5)
    return (QUEUED, day, qid, sender.lower(), int(nrcpt))


def queue_gauge(postqueue_json: str, policy: AccountPolicy) -> tuple[dict[str, int], int]:
    """Messages now in the queue per local sender, from `postqueue -j` output (one JSON object
    per line); returns (counts, number of lines that were not JSON objects)."""
    counts: dict[str, int] = {}
    bad = 0
    for line in postqueue_json.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            sender = str(entry["sender"]).lower()
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        if policy.is_local(sender):
            counts[sender] = counts.get(sender, 0) + 1
    return counts, bad


def merge_rows(
    rows: Iterable[Mapping[tuple[str, str], Mapping[str, int]]],
) -> dict[tuple[str, str], dict[str, int]]:
    """Sum several `take_rows` results."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for batch in rows:
        for key, counters in batch.items():
            target = out.setdefault(key, {})
            for name, n in counters.items():
                target[name] = target.get(name, 0) + n
    return out
