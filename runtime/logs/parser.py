"""Mail-log line → event: Postfix (smtpd, cleanup, qmgr, pickup, delivery agents, postscreen)
and Dovecot (imap-login, pop3-login, imap/pop3 sessions).

Accepted line formats: classic syslog (`May  1 12:00:00 host prog[pid]: …`, no year), RFC 3339
syslog (`2024-05-01T12:00:00.123+02:00 host prog[pid]: …`), Postfix's own `maillog_file`
(postlogd: classic, optionally with microseconds) and Dovecot's `log_path` (no host, no pid,
the level kept: `imap-login: Info: Login: …`).

Events are plain tuples (cheap: most lines of a busy log are parsed at > 1 M lines/s), first
element the kind, second the calendar day of the line (`YYYY-MM-DD`); `event_fields` names the
rest. Addresses are lower-cased. A line that is not a log line at all is `UNKNOWN` and counted;
a log line of no interest is `None`. Nothing here raises on bad input.

The classic timestamp has no year: `DayResolver` supplies it (the given year, or the current one
for live logs) and moves to the next year when the month goes back (December → January).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

# Event kinds (first tuple element) and the names of the following fields.
LOGIN: Final = "login"  # (day, service, account)            Dovecot imap/pop3 login
LOGIN_FAILED: Final = "login_failed"  # (day, service, account)  imap/pop3/smtp auth failure
SESSION_LOST: Final = "session_lost"  # (day, service, account)  Dovecot session dropped
QUEUED: Final = "queued"  # (day, qid, sender, nrcpt)        qmgr: message entered active queue
PICKED_UP: Final = "picked_up"  # (day, qid)                  pickup: submitted by sendmail
DELIVERY: Final = "delivery"  # (day, qid, recipient, status) sent | bounced | deferred
REMOVED: Final = "removed"  # (day, qid)                      qmgr: message left the queue
REJECT: Final = "reject"  # (day, sender, recipient)          any Postfix `reject:` line
SMTP_AUTH: Final = "smtp_auth"  # (day, session, account)     smtpd session authenticated
SMTP_LOST: Final = "smtp_lost"  # (day, session)              smtpd lost connection
SMTP_END: Final = "smtp_end"  # (day, session)                smtpd connect/disconnect

UNKNOWN: Final = ("unknown",)

EVENT_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    LOGIN: ("service", "account"),
    LOGIN_FAILED: ("service", "account"),
    SESSION_LOST: ("service", "account"),
    QUEUED: ("qid", "sender", "nrcpt"),
    PICKED_UP: ("qid",),
    DELIVERY: ("qid", "recipient", "status"),
    REMOVED: ("qid",),
    REJECT: ("sender", "recipient"),
    SMTP_AUTH: ("session", "account"),
    SMTP_LOST: ("session",),
    SMTP_END: ("session",),
}

Event = tuple[Any, ...]

_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    )
}
_DELIVERY_AGENTS: Final = frozenset(
    ("smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard")
)
_STATUSES: Final = frozenset(("sent", "bounced", "deferred"))


def event_fields(event: Event) -> dict[str, Any]:
    """An event as a dict (`kind`, `day`, then its named fields): for tests and debugging."""
    if event == UNKNOWN:
        return {"kind": "unknown"}
    names = EVENT_FIELDS[event[0]]
    return {"kind": event[0], "day": event[1], **dict(zip(names, event[2:], strict=True))}


class DayResolver:
    """Calendar day of a line's timestamp; supplies the year classic syslog lines lack."""

    def __init__(self, year: int | None = None, now: float | None = None) -> None:
        self._cache: dict[str, str | None] = {}
        self._explicit = year is not None
        if year is None:
            t = time.localtime(time.time() if now is None else now)
            self._year = t.tm_year
            self._now_month = t.tm_mon
        else:
            self._year = year
            self._now_month = 12
        self._last_month = 0

    def day_of(self, line: str) -> str | None:
        """`YYYY-MM-DD` of the line, or None if it does not start with a timestamp."""
        if len(line) > 10 and line[4] == "-" and line[10] == "T":
            return line[:10]  # RFC 3339: the day as the host wrote it
        key = line[:6]
        day = self._cache.get(key)
        if day is None:
            day = self._classic(key)
            if day is not None and len(self._cache) < 1024:
                self._cache[key] = day
        return day

    def _classic(self, key: str) -> str | None:
        month = _MONTHS.get(key[:3])
        if month is None or key[3:4] != " ":
            return None
        digits = key[4:6].strip()
        if not digits.isdigit() or not 1 <= int(digits) <= 31:
            return None
        year = self._year
        if self._last_month == 0 and not self._explicit and month > self._now_month:
            # A live log read in January still holds December's lines: last year.
            year = self._year = year - 1
        elif self._last_month - month > 6:
            year = self._year = year + 1  # December → January rollover
            self._cache.clear()
        elif month - self._last_month > 6 and self._last_month:
            return f"{year - 1:04d}-{month:02d}-{int(digits):02d}"  # a late line of last year
        self._last_month = month
        return f"{year:04d}-{month:02d}-{int(digits):02d}"

    def epoch_of(self, line: str, day: str) -> float:
        """Seconds since the epoch of the line's timestamp (local time for classic lines)."""
        try:
            if line[4] == "-" and line[10] == "T":
                from datetime import datetime

                return datetime.fromisoformat(line[: line.index(" ")]).timestamp()
            clock = line[7:15]
            parts = time.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")
            return time.mktime(parts)
        except (ValueError, IndexError):
            return time.time()


def _between(text: str, start: str, end: str, pos: int = 0) -> str | None:
    i = text.find(start, pos)
    if i < 0:
        return None
    i += len(start)
    j = text.find(end, i)
    return text[i:j] if j >= 0 else None


class LineParser:
    """Turns lines into events; counts `unknown` (not a log line) and `lines`."""

    def __init__(self, days: DayResolver) -> None:
        self.days = days
        self.unknown = 0

    def parse_line(self, line: str) -> Event | None:
        day = self.days.day_of(line)
        if day is None:
            self.unknown += 1
            return UNKNOWN
        # The tag ends at the first ": " (a timestamp has ':' but never ': ').
        colon = line.find(": ", 15)
        if colon < 0:
            self.unknown += 1
            return UNKNOWN
        tag = line[line.rfind(" ", 0, colon) + 1 : colon]
        msg = line[colon + 2 :]
        if tag.startswith("postfix"):
            bracket = tag.find("[")
            program = tag[tag.rfind("/", 0, bracket if bracket > 0 else None) + 1 : bracket]
            if bracket < 0:
                program = tag[tag.rfind("/") + 1 :]
            return self._postfix(day, program, tag, msg, line)
        if tag.startswith("dovecot"):
            colon = msg.find(": ")
            if colon < 0:
                return None
            tag = msg[:colon]
            msg = msg[colon + 2 :]
        return self._dovecot(day, tag, msg)

    # -- Postfix ---------------------------------------------------------------------------

    def _postfix(self, day: str, program: str, tag: str, msg: str, line: str) -> Event | None:
        if program in _DELIVERY_AGENTS:
            i = msg.find(": to=<")
            if i < 0 or " " in msg[:i]:
                return None
            j = msg.find(">", i + 6)
            if j < 0:
                return None
            k = msg.find(", status=", j)
            if k < 0:
                return None
            k += 9
            end = msg.find(" ", k)
            status = msg[k:end] if end >= 0 else msg[k:]
            if status not in _STATUSES:
                return None
            return (DELIVERY, day, msg[:i], msg[i + 6 : j].lower(), status)
        if program == "qmgr":
            i = msg.find(": ")
            if i < 0:
                return None
            rest = msg[i + 2 :]
            if rest.startswith("from=<"):
                j = rest.find(">, size=", 6)
                n = rest.find(", nrcpt=", j)
                if j < 0 or n < 0:
                    return None  # "from=<…>, status=expired, returned to sender"
                n += 8
                e = n
                while e < len(rest) and rest[e].isdigit():
                    e += 1
                return (QUEUED, day, msg[:i], rest[6:j].lower(), int(rest[n:e] or 0))
            if rest == "removed":
                return (REMOVED, day, msg[:i])
            return None
        if " reject: " in msg or msg.startswith(("NOQUEUE: reject:", "NOQUEUE: milter-reject:")):
            return self._reject(day, msg)
        if program == "smtpd":
            if msg.startswith(("connect from ", "disconnect from ")):
                return (SMTP_END, day, tag)
            if msg.startswith("lost connection after "):
                return (SMTP_LOST, day, tag)
            i = msg.find(", sasl_username=")
            if i >= 0:
                account = msg[i + 16 :]
                end = account.find(",")
                if end >= 0:
                    account = account[:end]
                account = account.strip().lower()
                if msg.startswith("warning: "):
                    if " authentication failed" in msg and account:
                        return (LOGIN_FAILED, day, "smtp", account)
                    return None
                if ": client=" in msg and account:
                    return (SMTP_AUTH, day, tag, account)
            return None
        if program == "pickup":
            i = msg.find(": uid=")
            if i > 0 and " " not in msg[:i]:
                return (PICKED_UP, day, msg[:i])
        return None

    def _reject(self, day: str, msg: str) -> Event | None:
        end = msg.rfind(" proto=")
        if end < 0:
            end = len(msg)
        j = msg.rfind(" from=<", 0, end)
        if j < 0:
            return None
        j += 7
        k = msg.find(">", j)
        if k < 0:
            return None
        sender = msg[j:k].lower()
        recipient = _between(msg, " to=<", ">", k) or ""
        return (REJECT, day, sender, recipient.lower())

    # -- Dovecot ---------------------------------------------------------------------------

    def _dovecot(self, day: str, tag: str, msg: str) -> Event | None:
        if msg.startswith(("Info: ", "Warning: ")):
            msg = msg[msg.find(" ") + 1 :]
        if tag == "imap-login" or tag == "pop3-login":
            service = tag[:4]
            if msg.startswith("Login: user=<"):
                account = _between(msg, "user=<", ">")
                return (LOGIN, day, service, account.lower()) if account else None
            if "(auth failed" in msg:
                account = _between(msg, " user=<", ">")
                return (LOGIN_FAILED, day, service, account.lower()) if account else None
            return None
        if tag.startswith(("imap(", "pop3(")) and msg.startswith(
            ("Disconnected: Connection closed", "Disconnected for inactivity")
        ):
            end = tag.find(")")
            account = tag[5:end]
            return (SESSION_LOST, day, tag[:4], account.lower()) if end > 5 else None
        return None


def parse_lines(lines: Iterable[str], parser: LineParser) -> list[Event]:
    """Events of `lines` (None results dropped); the hot loop of ingest and follow."""
    parse = parser.parse_line
    out: list[Event] = []
    append = out.append
    for line in lines:
        event = parse(line)
        if event is not None:
            append(event)
    return out
