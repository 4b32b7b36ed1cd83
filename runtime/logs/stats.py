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
from collections.abc import Iterable, Mapping
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


@dataclass
class Tally:
    policy: AccountPolicy
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    senders: dict[str, str] = field(default_factory=dict)  # qid → local sender
    picked_up: dict[str, float] = field(default_factory=dict)  # qid → time of pickup
    sessions: dict[str, str] = field(default_factory=dict)  # smtpd tag → account
    charges: list[Charge] = field(default_factory=list)
    # Raw address as logged → its lower-cased form if local, else "": one dict hit per line
    # instead of lower() + domain split + set lookup.
    addresses: dict[str, str] = field(default_factory=dict)

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

    def add_events(self, events: Iterable[Event]) -> None:
        counts = self.counts
        senders = self.senders
        is_local = self.policy.is_local
        for ev in events:
            kind = ev[0]
            if kind == DELIVERY:
                _, day, qid, rcpt, status = ev
                sender = senders.get(qid)
                if sender is not None:
                    key = (day, sender, status)
                    counts[key] = counts.get(key, 0) + 1
                if status == "sent" and is_local(rcpt):
                    key = (day, rcpt, "received")
                    counts[key] = counts.get(key, 0) + 1
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
                    key = (day, account, "imap_logins" if service == "imap" else "pop3_logins")
                    counts[key] = counts.get(key, 0) + 1
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
                    self._inc(ev[1], account, "lost_connections")
            elif kind == SESSION_LOST:
                if is_local(ev[3]):
                    self._inc(ev[1], ev[3], "lost_connections")
            elif kind == REJECT:
                if is_local(ev[2]):
                    self._inc(ev[1], ev[2], "rejected")
            elif kind == LOGIN_FAILED:
                if self.policy.is_account(ev[3]):
                    self._inc(ev[1], ev[3], "login_failures")
            elif kind == PICKED_UP:
                if len(self.picked_up) >= MAX_TRACKED:
                    del self.picked_up[next(iter(self.picked_up))]
                self.picked_up[ev[2]] = ev[3]

    def add_text(self, text: str, parser: LineParser) -> int:
        """Count the events of `text` (whole lines) and return its number of lines: the same
        counts as `add_events(parser.parse_text(text))` (a test holds them equal), fused into
        one loop that builds no event for the frequent lines because this is the agent's hot
        path."""
        counts = self.counts
        senders = self.senders
        sessions = self.sessions
        picked_up = self.picked_up
        addresses = self.addresses
        local_address = self.local_address
        finditer = LOG_RE.finditer
        rfind = text.rfind
        is_account = self.policy.is_account
        lines = 0
        for start, end, segment_day, segment_lines in split_days(text, parser.days):
            lines += segment_lines
            for m in finditer(text, start, end):
                day = segment_day or parser.line_day(text, m.start())
                if day is None:
                    continue
                last = m.lastindex
                if last == G_STATUS:
                    qid, rcpt, status = m.group(1, 2, 3)
                    sender = senders.get(qid)
                    if sender is not None:
                        key = (day, sender, status)
                        counts[key] = counts.get(key, 0) + 1
                    if status == "sent":
                        account = addresses.get(rcpt)
                        if account is None:
                            account = local_address(rcpt)
                        if account:
                            key = (day, account, "received")
                            counts[key] = counts.get(key, 0) + 1
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
                elif last == G_LOGIN:
                    raw = m.group(G_LOGIN)
                    account = addresses.get(raw)
                    if account is None:
                        account = local_address(raw)
                    if account:
                        name = "imap_logins" if m.group(G_SVC) == "imap" else "pop3_logins"
                        key = (day, account, name)
                        counts[key] = counts.get(key, 0) + 1
                elif last == G_LOST:
                    if sessions:
                        pos = m.start()
                        account = sessions.pop(text[rfind(" ", 0, pos) + 1 : pos], None)
                        if account is not None:
                            key = (day, account, "lost_connections")
                            counts[key] = counts.get(key, 0) + 1
                elif last in (G_LOGIN_FAILED, G_FAILED):
                    raw = m.group(last)
                    if last == G_FAILED:
                        raw = raw.strip()  # Postfix's sasl_username= may carry spaces
                    account = addresses.get(raw)
                    if account is None:
                        account = local_address(raw)
                    if account and is_account(account):
                        key = (day, account, "login_failures")
                        counts[key] = counts.get(key, 0) + 1
                elif last == G_REJECT:
                    raw = reject_sender(m.group(G_REJECT))
                    if raw is not None:
                        account = addresses.get(raw)
                        if account is None:
                            account = local_address(raw)
                        if account:
                            key = (day, account, "rejected")
                            counts[key] = counts.get(key, 0) + 1
                else:
                    event = match_event(m, text, day, parser.days)
                    if event is not None:
                        self.add_events((event,))
        return lines

    def _inc(self, day: str, account: str, name: str) -> None:
        key = (day, account, name)
        self.counts[key] = self.counts.get(key, 0) + 1

    def take_rows(self) -> dict[tuple[str, str], dict[str, int]]:
        """The counters accumulated since the last call, grouped by (day, account); resets."""
        rows: dict[tuple[str, str], dict[str, int]] = {}
        for (day, account, name), n in self.counts.items():
            rows.setdefault((day, account), {})[name] = n
        self.counts = {}
        return rows

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
