"""Mail-log line → event: Postfix (smtpd, cleanup, qmgr, pickup, delivery agents, postscreen)
and Dovecot (imap-login, pop3-login, imap/pop3 sessions).

Accepted line formats: classic syslog (`May  1 12:00:00 host prog[pid]: …`, no year), RFC 3339
syslog (`2024-05-01T12:00:00.123+02:00 host prog[pid]: …`), Postfix's own `maillog_file`
(postlogd: classic, optionally with microseconds) and Dovecot's `log_path` (no host, no pid,
the level kept: `imap-login: Info: Login: …`).

Speed (the follower's backfill runs at ~1 M lines/s): a chunk is never split into lines.
`split_days` finds its runs of one calendar day with two `str.count` calls, and one combined
regex (`LOG_RE`) finds the lines of interest in C; Python only sees those. `match_event` turns
a match into an event; `runtime.logs.stats.Tally.add_text` counts the frequent kinds straight
from the match instead.

Events are plain tuples, first element the kind, second the calendar day of the line
(`YYYY-MM-DD`); `event_fields` names the rest. Addresses are lower-cased. A line that is not a
log line at all is `UNKNOWN` and counted; a log line of no interest is `None`. Nothing here
raises on bad input.

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
PICKED_UP: Final = "picked_up"  # (day, qid, time)            pickup: submitted by sendmail
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
    PICKED_UP: ("qid", "time"),
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


# One pass over a chunk finds every line of interest: every match starts at a ": " (a literal
# prefix the regex engine scans for in C), then a fixed-width look-behind picks the kind:
# Postfix messages follow the tag's "]: " (`postfix[/name]/prog[pid]: `), Dovecot login lines
# "imap-login: "/"pop3-login: ", Dovecot session ends the session ids' ">: ". Quantifiers are
# possessive so a failing alternative never backtracks; `lastindex` (the group that closed
# last, one per alternative) says which alternative matched. Most of the ": " are of no
# interest, so what runs at each is kept cheap: a look-behind costs more than a character
# test, so the Dovecot session-end rule tests its first letter ("D", or "I" of "Info: ")
# before it looks behind; comma-separated fields are stepped over a field at a time, not a
# character at a time (`client=…, sasl_username=`, like `to=<…>, …, status=`).
LOG_RE = re.compile(
    r""":\ (?:
    (?<=\]:\ )(?:
        (?P<qid>[0-9A-Za-z]++):\ (?:
            to=<(?P<to>[^>\n]*+)>,(?:[^,\n]*+,)*?\ status=(?P<status>sent|bounced|deferred)
          | from=<(?P<sender>[^>\n]*+)>,\ size=\d++,\ nrcpt=(?P<nrcpt>\d++)
          | (?P<removed>removed)$
          | client=(?:[^,\n]*+,)*?\ sasl_username=(?P<sasl>[^,\n]*+)
          | (?P<uid>uid=\d++\ from=<)
          | (?:milter-)?reject:\ (?P<reject>[^\n]*+)
        )
      | (?P<lost>lost\ connection\ after\ )
      | (?P<conn>disconnect\ from\ )
      | warning:\ [^\n]*?\ authentication\ failed[^\n]*?,\ sasl_username=(?P<failed>[^,\n]*+)
    )
  | (?<=\ (?P<svc>imap|pop3)-login:\ )(?:Info:\ )?(?:
        Login:\ user=<(?P<login>[^>\n]*+)>
      | [^\n]*?\(auth\ failed[^\n]*?\ user=<(?P<login_failed>[^>\n]*+)>
    )
  | (?:D(?<=[>)]:\ D)|I(?<=[>)]:\ I)nfo:\ D)(?P<closed>isconnected)
    (?::\ Connection\ closed|\ for\ inactivity)
)""",
    re.VERBOSE | re.MULTILINE,
)
_G = LOG_RE.groupindex
G_STATUS, G_NRCPT, G_REMOVED, G_CONN = _G["status"], _G["nrcpt"], _G["removed"], _G["conn"]
G_SASL, G_UID, G_REJECT, G_LOST = _G["sasl"], _G["uid"], _G["reject"], _G["lost"]
G_FAILED, G_LOGIN, G_LOGIN_FAILED, G_CLOSED = (
    _G["failed"],
    _G["login"],
    _G["login_failed"],
    _G["closed"],
)
G_SVC = _G["svc"]
# The Dovecot session (`imap(user)<pid><id>` or `imap(user)`) that ends just before a match.
_SESSION_RE = re.compile(r" (imap|pop3)\(([^)\n]*)\)[^:\s]*\Z")

Segment = tuple[int, int, str | None, int]  # start, end, day (None: per line), lines


def at_line_tag(text: str, pos: int) -> bool:
    """Whether the ": " at `pos` ends its line's program tag (`postfix/smtp[1]: `,
    `imap-login: `; after syslog's `dovecot: ` too, as Dovecot names its process there).
    What follows the tag is the message, where a remote server's reply, a sender address or
    a SASL user name is written as given: `said: 450 x]: F00: to=<alice@example.com>, y,
    status=sent` must not count as a delivery, nor a forged pickup charge an account."""
    start = text.rfind("\n", 0, pos) + 1
    first = text.find(": ", start, pos)
    if first < 0:
        return True
    return (
        text.find(": ", first + 2, pos) < 0
        and text[text.rfind(" ", start, first) + 1 : first].partition("[")[0] == "dovecot"
    )


def split_days(text: str, days: DayResolver) -> list[Segment]:
    """`text` (whole lines) as runs of lines of one calendar day: `(start, end, day, lines)`,
    with `day` None for a run whose lines must be dated one by one (mixed days, lines without
    a timestamp). A log's lines are in time order, so a chunk is nearly always one run, or two
    at midnight: checking that is two `str.count` calls, not a look at every line."""
    out: list[Segment] = []
    _split(text, 0, len(text), days, out, 4)
    return out


def _split(
    text: str, start: int, end: int, days: DayResolver, out: list[Segment], depth: int
) -> None:
    if start >= end:
        return
    # The day part of a timestamp: "2024-05-01T" (RFC 3339) or "May  1" (classic, no year).
    width = 11 if text[start + 4 : start + 5] == "-" and text[start + 10 : start + 11] == "T" else 6
    prefix = text[start : start + width]
    day = days.day_of(text, start) if "\n" not in prefix else None
    if day is not None:
        key = "\n" + prefix
        # Lines in [start, end) other than the first, and how many of them share its prefix.
        others = text.count("\n", start, end - 1)
        if text.count(key, start, end - 1) == others:
            out.append((start, end, day, others + 1))
            return
        if depth > 0:
            # Time order: the lines of this day end after the last line that starts with it.
            last = max(text.rfind(key, start, end - 1), start - 1)
            cut = text.find("\n", last + 1, end) + 1 or end
            if cut < end:
                _split(text, start, cut, days, out, depth - 1)
                _split(text, cut, end, days, out, depth - 1)
                return
    out.append((start, end, None, text.count("\n", start, end - 1) + 1))


class LineParser:
    """Turns log text into events; counts `unknown` (relevant-looking text that is not on a
    log line with a timestamp). Lines matching no event pattern are skipped at C speed."""

    def __init__(self, days: DayResolver) -> None:
        self.days = days
        self.unknown = 0

    def parse_text(self, text: str) -> list[Event]:
        """Events of `text` (whole lines, "\n"-separated) in log order."""
        out: list[Event] = []
        append = out.append
        for start, end, seg_day, _ in split_days(text, self.days):
            if seg_day is None:
                out += self.events_between(text, start, end)
                continue
            for m in LOG_RE.finditer(text, start, end):
                if not at_line_tag(text, m.start()):
                    continue
                event = match_event(m, text, seg_day, self.days)
                if event is not None:
                    append(event)
        return out

    def events_between(self, text: str, start: int, end: int) -> list[Event]:
        """Events of the whole lines in `text[start:end]`, each line dated by itself."""
        out: list[Event] = []
        for m in LOG_RE.finditer(text, start, end):
            if not at_line_tag(text, m.start()):
                continue
            day = self.line_day(text, m.start())
            if day is None:
                continue
            event = match_event(m, text, day, self.days)
            if event is not None:
                out.append(event)
        return out

    def parse_line(self, line: str) -> Event | None:
        """The event of one line: None if of no interest, `UNKNOWN` if not a log line."""
        if self.days.day_of(line, 0) is None:
            self.unknown += 1
            return UNKNOWN
        events = self.parse_text(line.rstrip("\n") + "\n")
        return events[0] if events else None

    def line_day(self, text: str, pos: int) -> str | None:
        """The day of the line holding `pos` (counted as unknown when it has none)."""
        start = text.rfind("\n", 0, pos) + 1
        day = self.days.cache.get(text[start : start + 10]) or self.days.day_of(text, start)
        if day is None:
            self.unknown += 1
        return day


def match_event(m: re.Match[str], text: str, day: str, days: DayResolver) -> Event | None:
    """The event of one `LOG_RE` match on a line of `day`; dispatches on the group that
    closed last."""
    last = m.lastindex
    if last == G_STATUS:
        qid, to, status = m.group(1, 2, 3)
        return (DELIVERY, day, qid, to.lower(), status)
    if last == G_NRCPT:
        qid, sender, nrcpt = m.group(1, 4, 5)
        return (QUEUED, day, qid, sender.lower(), int(nrcpt))
    if last == G_REMOVED:
        return (REMOVED, day, m.group(1))
    if last == G_CONN:
        return (SMTP_END, day, postfix_tag(text, m.start()))
    if last == G_LOGIN:
        return (LOGIN, day, m.group(G_SVC), m.group(G_LOGIN).lower())
    if last == G_SASL:
        tag = postfix_tag(text, m.start())
        if tag.endswith("smtpd]") or "/smtpd[" in tag:
            return (SMTP_AUTH, day, tag, m.group(G_SASL).strip().lower())
        return None
    if last == G_REJECT:
        return _reject(day, m.group(G_REJECT))
    if last == G_LOST:
        return (SMTP_LOST, day, postfix_tag(text, m.start()))
    if last == G_FAILED:
        return (LOGIN_FAILED, day, "smtp", m.group(G_FAILED).strip().lower())
    if last == G_LOGIN_FAILED:
        return (LOGIN_FAILED, day, m.group(G_SVC), m.group(G_LOGIN_FAILED).lower())
    if last == G_CLOSED:
        session = dovecot_session(text, m.start())
        return None if session is None else (SESSION_LOST, day, *session)
    if last == G_UID:
        return (PICKED_UP, day, m.group(1), line_time(text, m.start(), day, days))
    return None


def line_time(text: str, pos: int, day: str, days: DayResolver) -> float:
    """Seconds since the epoch of the line holding `pos`."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", start)
    return days.epoch_of(text[start : end if end >= 0 else len(text)], day)


def postfix_tag(text: str, pos: int) -> str:
    """`postfix/smtpd[123]`: the tag before the ": " at `pos` (a dated line has a space
    before it)."""
    return text[text.rfind(" ", 0, pos) + 1 : pos]


def dovecot_session(text: str, pos: int) -> tuple[str, str] | None:
    """(service, user) of the Dovecot session tag before the ": " at `pos`."""
    m = _SESSION_RE.search(text, text.rfind("\n", 0, pos) + 1, pos)
    if m is None:
        return None
    svc, user = m.groups()
    return (svc, user.lower()) if user else None


def _reject(day: str, msg: str) -> Event | None:
    """A `reject:` line's sender and recipient (`…; from=<s> to=<r> proto=…`; postscreen
    separates them with commas)."""
    k = reject_sender_end(msg)
    if k < 0:
        return None
    j = msg.rfind(" from=<", 0, k) + 7
    recipient = _between(msg, " to=<", ">", k) or ""
    return (REJECT, day, msg[j:k].lower(), recipient.lower())


def reject_sender(msg: str) -> str | None:
    """The envelope sender of a `reject:` line's text, as logged (not lower-cased)."""
    k = reject_sender_end(msg)
    return None if k < 0 else msg[msg.rfind(" from=<", 0, k) + 7 : k]


def reject_sender_end(msg: str) -> int:
    """Index of the ">" closing the sender in `…; from=<s> to=<r> proto=…`, or -1. The text
    before is server-made; only `helo=` after `proto=` is the client's, so the search for
    `from=<` stops there."""
    end = msg.rfind(" proto=")
    if end < 0:
        end = len(msg)
    j = msg.rfind(" from=<", 0, end)
    if j < 0:
        return -1
    return msg.find(">", j + 7)
