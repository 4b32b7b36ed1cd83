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

import re
import time
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
SMTP_END: Final = "smtp_end"  # (day, session)                smtpd session ended

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
        # First 10 characters of a line ("May  1 12:" or "2024-05-01") → its day.
        self.cache: dict[str, str] = {}
        self._explicit = year is not None
        if year is None:
            t = time.localtime(time.time() if now is None else now)
            self._year = t.tm_year
            self._now_month = t.tm_mon
        else:
            self._year = year
            self._now_month = 12
        self._last_month = 0

    def day_of(self, text: str, start: int = 0) -> str | None:
        """`YYYY-MM-DD` of the line at `start`, or None if it has no timestamp."""
        key = text[start : start + 10]
        if len(key) == 10 and key[4] == "-" and text[start + 10 : start + 11] == "T":
            day = key if key[:4].isdigit() and key[5:7].isdigit() else None  # RFC 3339
        else:
            day = self._classic(key[:6])
        if day is not None and len(key) == 10:
            if len(self.cache) >= 4096:
                self.cache.clear()
            self.cache[key] = day
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
            self.cache.clear()
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


# Postfix: every relevant message follows the tag's "]: " (tags are `postfix[/name]/prog[pid]`),
# so the regex engine jumps between "]: " occurrences in C and Python only sees relevant lines.
POSTFIX_RE = re.compile(
    r"\]: (?:"
    r"(?P<qid>\w+): (?:"
    r"to=<(?P<to>[^>\n]*)>,[^\n]*?, status=(?P<status>sent|bounced|deferred)"
    r"|from=<(?P<sender>[^>\n]*)>, size=\d+, nrcpt=(?P<nrcpt>\d+)"
    r"|(?P<removed>removed)(?=\n|$)"
    r"|client=[^\n]*?, sasl_username=(?P<sasl>[^,\n]*)"
    r"|(?P<uid>uid=\d+ from=<)"
    r"|(?:milter-)?reject: (?P<reject>[^\n]*)"
    r")"
    r"|(?P<lost>lost connection after )"
    r"|(?P<conn>disconnect from )"
    r"|warning: [^\n]*? authentication failed[^\n]*?, sasl_username=(?P<failed>[^,\n]*)"
    r")"
)
_G = POSTFIX_RE.groupindex
G_STATUS, G_NRCPT, G_REMOVED, G_CONN = _G["status"], _G["nrcpt"], _G["removed"], _G["conn"]
_G_SASL, _G_UID, _G_REJECT, _G_LOST = _G["sasl"], _G["uid"], _G["reject"], _G["lost"]
_G_FAILED = _G["failed"]

# Dovecot: login processes and imap/pop3 sessions (log_path keeps "Info: ", syslog drops it).
_DOVECOT_RE = re.compile(
    r" (?P<svc>imap|pop3)(?:"
    r"-login: (?:Info: )?(?:Login: user=<(?P<login>[^>\n]*)>"
    r"|[^\n]*?\(auth failed[^\n]*? user=<(?P<failed>[^>\n]*)>)"
    r"|\((?P<user>[^)\n]*)\)[^:\s]*: (?:Info: )?Disconnected(?:: Connection closed| for inactivity)"
    r")[^\n]*"
)


class LineParser:
    """Turns log text into events; counts `unknown` (relevant-looking text that is not on a
    log line with a timestamp). Lines matching no event pattern are skipped at C speed."""

    def __init__(self, days: DayResolver) -> None:
        self.days = days
        self.unknown = 0

    def parse_text(self, text: str) -> list[Event]:
        """Events of `text` (whole lines, "\n"-separated) in log order."""
        out = self._postfix(text)
        if " imap" in text or " pop3" in text:
            out.extend(self.dovecot_events(text))
        return out

    def parse_line(self, line: str) -> Event | None:
        """The event of one line: None if of no interest, `UNKNOWN` if not a log line."""
        if self.days.day_of(line, 0) is None:
            self.unknown += 1
            return UNKNOWN
        events = self.parse_text(line.rstrip("\n") + "\n")
        return events[0] if events else None

    def _line_day(self, text: str, pos: int) -> tuple[int, str | None]:
        start = text.rfind("\n", 0, pos) + 1
        return start, self.days.day_of(text, start)

    def _postfix(self, text: str) -> list[Event]:
        out: list[Event] = []
        append = out.append
        days = self.days
        cache = days.cache
        rfind = text.rfind
        for m in POSTFIX_RE.finditer(text):
            start = rfind("\n", 0, m.start()) + 1
            day = cache.get(text[start : start + 10]) or days.day_of(text, start)
            if day is None:
                self.unknown += 1
                continue
            event = self.postfix_event(m, text, start, day)
            if event is not None:
                append(event)
        return out

    def postfix_event(self, m: re.Match[str], text: str, start: int, day: str) -> Event | None:
        """The event of one `POSTFIX_RE` match on the line at `start`; dispatches on the group
        that closed last (one per alternative)."""
        last = m.lastindex
        pos = m.start()
        if last == G_STATUS:
            qid, to, status = m.group(1, 2, 3)
            return (DELIVERY, day, qid, to.lower(), status)
        if last == G_NRCPT:
            qid, sender, nrcpt = m.group(1, 4, 5)
            return (QUEUED, day, qid, sender.lower(), int(nrcpt))
        if last == G_REMOVED:
            return (REMOVED, day, m.group(1))
        if last == G_CONN:
            return (SMTP_END, day, text[text.rfind(" ", start, pos) + 1 : pos + 1])
        if last == _G_SASL:
            tag = text[text.rfind(" ", start, pos) + 1 : pos + 1]
            if tag.endswith("smtpd]") or "/smtpd[" in tag:
                return (SMTP_AUTH, day, tag, m.group(_G_SASL).strip().lower())
            return None
        if last == _G_REJECT:
            return _reject(day, m.group(_G_REJECT))
        if last == _G_LOST:
            return (SMTP_LOST, day, text[text.rfind(" ", start, pos) + 1 : pos + 1])
        if last == _G_FAILED:
            return (LOGIN_FAILED, day, "smtp", m.group(_G_FAILED).strip().lower())
        if last == _G_UID:
            return (PICKED_UP, day, m.group(1))
        return None

    def dovecot_events(self, text: str) -> list[Event]:
        out: list[Event] = []
        rfind = text.rfind
        for m in _DOVECOT_RE.finditer(text):
            start = rfind("\n", 0, m.start()) + 1
            day = self.days.cache.get(text[start : start + 10]) or self.days.day_of(text, start)
            if day is None:
                self.unknown += 1
                continue
            svc, login, failed, user = m.groups()
            if login is not None:
                out.append((LOGIN, day, svc, login.lower()))
            elif failed is not None:
                out.append((LOGIN_FAILED, day, svc, failed.lower()))
            elif user:
                out.append((SESSION_LOST, day, svc, user.lower()))
        return out


def _reject(day: str, msg: str) -> Event | None:
    """A `reject:` line's sender and recipient (`…; from=<s> to=<r> proto=…`; postscreen
    separates them with commas). The text before is server-made; only `helo=` after `proto=`
    is the client's, so the search stops there."""
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
    recipient = _between(msg, " to=<", ">", k) or ""
    return (REJECT, day, msg[j:k].lower(), recipient.lower())
