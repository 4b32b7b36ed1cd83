# ruff: noqa: E501 (log line templates are as long as the real lines)
"""Generate a realistic Postfix + Dovecot mail log for the benchmark, with the counters it must
give (`--expect`), counted here from what each line means, not by parsing it.

    python bench/logparse/generate.py [--lines N] [--accounts A] [--domains D] [--days N]
        [--format rfc3339|classic] [--seed S] [--expect FILE] > mail.log

Shape of a Debian 12 mail host (Postfix with postscreen, submission and smtps services, Dovecot
LMTP, IMAP and POP3): stories run interleaved as on a real host, each on its own process ids
drawn from pools (smtpd, cleanup, smtp, lmtp, pipe, bounce, postscreen; one qmgr), and their lines
land in time order over `days` days. Stories: inbound mail through postscreen (PASS OLD/NEW,
DNSBL ranks, pregreet rejects) to one or more local recipients over LMTP or pipe, some with a
mixed-case address, some deferred (quota) and retried; authenticated submission to outside
(sent, deferred and retried later, bounced with a non-delivery notice delivered back over LMTP),
local-to-local mail, sessions lost after DATA, policy and relay rejects (`NOQUEUE: reject:`,
`milter-reject:`), forged local senders refused on port 25; webmail mail through `sendmail`
(pickup); IMAP/POP3 logins with logouts, closed connections and idle timeouts; auth failures
of accounts and of dictionary-attack names (not accounts: not counted); TLS lines, anvil and
scache statistics, cron and systemd noise. Timestamps are RFC 3339 with microseconds and a
zone offset as Debian 12's rsyslog writes them (`RSYSLOG_FileFormat`), or the classic
`May  1 12:00:00`. Deterministic (seeded).

The expectation follows the agent's documented counting rules (README, "The agent"), per
account per day of the line: sent/bounced/deferred per delivery attempt of a local sender's
message, received per successful delivery to an account, rejected per `reject:` line with a
local sender, logins, login failures of accounts, lost connections (Dovecot sessions closed
by the client or for inactivity; smtpd sessions that authenticated, queued mail and lost the
connection).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# A line to write: its text after "host ", and the counters it moves: ((account, counter), …).
Line = tuple[str, tuple[tuple[str, str], ...]]
# A story yields lines, or None to pause (a deferred message waits for its retry).
Story = Iterator[Line | None]

NONE: tuple[tuple[str, str], ...] = ()
CONCURRENT = 12  # stories running at once (sessions, deliveries)
ZONE = timezone(timedelta(hours=2))
FIRST_NAMES = [
    "anna",
    "ben",
    "carla",
    "dan",
    "eva",
    "finn",
    "gina",
    "hugo",
    "ida",
    "jan",
    "kim",
    "lea",
    "max",
    "nina",
    "otto",
    "paul",
    "rosa",
    "sam",
    "tina",
    "uwe",
]


@dataclass(frozen=True)
class Shape:
    lines: int = 2_000_000
    accounts: int = 3_000
    domains: int = 150
    days: int = 7
    fmt: str = "rfc3339"
    seed: int = 1
    start: datetime = datetime(2024, 5, 1, tzinfo=ZONE)


class Pool:
    """Process ids of one Postfix/Dovecot service: a story holds one while its session runs."""

    def __init__(self, rnd: random.Random, first: int, size: int) -> None:
        self.free = list(range(first, first + size * 13, 13))
        rnd.shuffle(self.free)

    def take(self) -> int:
        return self.free.pop()

    def give(self, pid: int) -> None:
        self.free.insert(0, pid)


class Host:
    """The mail host's population and the stories of its traffic."""

    def __init__(self, shape: Shape) -> None:
        self.rnd = rnd = random.Random(shape.seed)
        self.domains = [f"{rnd.choice(FIRST_NAMES)}{i}-mail.example" for i in range(shape.domains)]
        self.accounts = [
            f"{rnd.choice(FIRST_NAMES)}.{i}@{self.domains[i % shape.domains]}"
            for i in range(shape.accounts)
        ]
        # Some domains deliver through pipe (dovecot-lda) instead of LMTP.
        self.domain_set = set(self.domains)
        self.piped = {d for d in self.domains if rnd.random() < 0.2}
        self.outside = [f"contact{i}@remote{i % 400}.example.net" for i in range(6000)]
        self.pools = {
            name: Pool(rnd, first, 500)
            for name, first in (
                ("smtpd", 10000), ("cleanup", 20000), ("smtp", 30000), ("lmtp", 40000),
                ("pipe", 50000), ("bounce", 60000), ("postscreen", 70000), ("dovecot", 80000),
            )
        }  # fmt: skip
        self.qid = 0x3F2A10C
        self.port = 40000

    def new_qid(self) -> str:
        self.qid += self.rnd.randint(3, 400)
        return f"{self.qid:X}{self.rnd.randint(0, 15):X}"

    def ip(self) -> str:
        return f"198.51.{self.rnd.randint(0, 255)}.{self.rnd.randint(1, 254)}"

    def local_addr(self) -> str:
        return self.rnd.choice(self.accounts)

    def next_port(self) -> int:
        self.port = 1024 + (self.port + 7) % 64000
        return self.port

    def is_local(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() in self.domain_set

    # -- stories ----------------------------------------------------------------------------

    def story(self) -> Story:
        k = self.rnd.random()
        if k < 0.36:
            return self.inbound()
        if k < 0.52:
            return self.submission()
        if k < 0.55:
            return self.webmail()
        if k < 0.80:
            return self.mailbox_session()
        if k < 0.88:
            return self.postscreen_reject()
        if k < 0.93:
            return self.smtpd_reject()
        if k < 0.97:
            return self.auth_failure()
        return self.noise()

    def deliver_local(self, qid: str, rcpt: str, sender_local: str | None) -> Iterator[Line]:
        """One delivery of `qid` to the local `rcpt` (as written in the log): LMTP or pipe."""
        rnd = self.rnd
        account = rcpt.lower()
        domain = account.rpartition("@")[2]
        deferred = rnd.random() < 0.03
        status = "deferred" if deferred else "sent"
        effects = [(account, "received")] if not deferred else []
        if sender_local:
            effects.append((sender_local, status))
        if domain in self.piped:
            pid = self.pools["pipe"].take()
            text = (
                f"postfix/pipe[{pid}]: {qid}: to=<{rcpt}>, relay=dovecot, delay=0.{rnd.randint(10, 99)}, delays=0.05/0/0/0.1, dsn=4.3.0, status=deferred (temporary failure. Command output: Quota exceeded (mailbox for user is full) )"
                if deferred
                else f"postfix/pipe[{pid}]: {qid}: to=<{rcpt}>, relay=dovecot, delay=0.{rnd.randint(10, 99)}, delays=0.05/0/0/0.1, dsn=2.0.0, status=sent (delivered via dovecot service)"
            )
            yield text, tuple(effects)
            self.pools["pipe"].give(pid)
            return
        pid = self.pools["lmtp"].take()
        dpid = self.pools["dovecot"].take()
        yield f"dovecot: lmtp({dpid}): Connect from local", NONE
        if deferred:
            yield (
                f"dovecot: lmtp({account})<{dpid}><Ab{dpid}x{qid[:4]}>: Error: quota exceeded",
                NONE,
            )
            yield (
                f"postfix/lmtp[{pid}]: {qid}: to=<{rcpt}>, relay=mail.{domain}[private/dovecot-lmtp], delay=0.2, delays=0.1/0/0/0.1, dsn=4.2.2, status=deferred (host mail.{domain}[private/dovecot-lmtp] said: 452 4.2.2 <{account}> Quota exceeded (mailbox for user is full) (in reply to end of DATA command))",
                tuple(effects),
            )
        else:
            yield (
                f"dovecot: lmtp({account})<{dpid}><Ab{dpid}x{qid[:4]}>: msgid=<{qid}.{rnd.randint(1, 10**6)}@{domain}>: saved mail to INBOX",
                NONE,
            )
            yield (
                f"postfix/lmtp[{pid}]: {qid}: to=<{rcpt}>, relay=mail.{domain}[private/dovecot-lmtp], delay=0.0{rnd.randint(1, 9)}, delays=0.01/0/0.01/0.03, dsn=2.0.0, status=sent (250 2.0.0 <{account}> Ab{dpid}x Saved)",
                tuple(effects),
            )
        yield f"dovecot: lmtp({dpid}): Disconnect from local: Logged out (state=READY)", NONE
        self.pools["lmtp"].give(pid)
        self.pools["dovecot"].give(dpid)

    def inbound(self) -> Story:
        rnd = self.rnd
        ip, port = self.ip(), self.next_port()
        yield (
            f"postfix/postscreen[{(ps := self.pools['postscreen'].take())}]: CONNECT from [{ip}]:{port} to [192.0.2.1]:25",
            NONE,
        )
        if rnd.random() < 0.3:
            yield (
                f"postfix/dnsblog[{ps + 1}]: addr {ip} listed by domain list.dnswl.org as 127.0.10.0",
                NONE,
            )
            yield f"postfix/postscreen[{ps}]: PASS NEW [{ip}]:{port}", NONE
        else:
            yield f"postfix/postscreen[{ps}]: PASS OLD [{ip}]:{port}", NONE
        self.pools["postscreen"].give(ps)
        pid = self.pools["smtpd"].take()
        host = f"mail{rnd.randint(1, 90)}.remote{rnd.randint(0, 399)}.example.net"
        yield f"postfix/smtpd[{pid}]: connect from {host}[{ip}]", NONE
        yield (
            f"postfix/smtpd[{pid}]: Anonymous TLS connection established from {host}[{ip}]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
            NONE,
        )
        qid = self.new_qid()
        sender = rnd.choice(self.outside) if rnd.random() < 0.97 else ""
        rcpts = [self.local_addr() for _ in range(rnd.choice((1, 1, 1, 1, 2, 3)))]
        rcpts = [r.capitalize() if rnd.random() < 0.03 else r for r in rcpts]
        yield f"postfix/smtpd[{pid}]: {qid}: client={host}[{ip}]", NONE
        cl = self.pools["cleanup"].take()
        yield f"postfix/cleanup[{cl}]: {qid}: message-id=<{rnd.randint(1, 10**9)}@{host}>", NONE
        self.pools["cleanup"].give(cl)
        yield (
            f"postfix/qmgr[1186]: {qid}: from=<{sender}>, size={rnd.randint(900, 400000)}, nrcpt={len(rcpts)} (queue active)",
            NONE,
        )
        yield (
            f"postfix/smtpd[{pid}]: disconnect from {host}[{ip}] ehlo=2 starttls=1 mail=1 rcpt={len(rcpts)} data=1 quit=1 commands={6 + len(rcpts)}",
            NONE,
        )
        self.pools["smtpd"].give(pid)
        retry: list[str] = []
        for r in rcpts:
            for line in self.deliver_local(qid, r, None):
                yield line
                if "status=deferred" in line[0]:
                    retry.append(r)
        if retry:
            yield None  # the queue manager retries later
            yield (
                f"postfix/qmgr[1186]: {qid}: from=<{sender}>, size=4000, nrcpt={len(rcpts)} (queue active)",
                NONE,
            )
            for r in retry:
                account = r.lower()
                pid = self.pools["lmtp"].take()
                yield (
                    f"postfix/lmtp[{pid}]: {qid}: to=<{r}>, relay=mail.{account.rpartition('@')[2]}[private/dovecot-lmtp], delay=1800, delays=1800/0/0.01/0.03, dsn=2.0.0, status=sent (250 2.0.0 <{account}> Saved)",
                    ((account, "received"),),
                )
                self.pools["lmtp"].give(pid)
        yield f"postfix/qmgr[1186]: {qid}: removed", NONE

    def deliver_remote(
        self, qid: str, sender: str, rcpt: str, *, retried: bool = False
    ) -> Iterator[Line]:
        """One delivery attempt to an outside address; a deferred one ends the iterator with
        its last line's status in the text, for the caller to retry."""
        rnd = self.rnd
        pid = self.pools["smtp"].take()
        mx = f"mx{rnd.randint(1, 3)}.{rcpt.rpartition('@')[2]}"
        st = rnd.random()
        if st < 0.86 or (retried and st < 0.95):
            yield (
                f"postfix/smtp[{pid}]: Trusted TLS connection established to {mx}[203.0.113.{rnd.randint(1, 254)}]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature ECDSA (P-256) server-digest SHA256",
                NONE,
            )
            yield (
                f"postfix/smtp[{pid}]: {qid}: to=<{rcpt}>, relay={mx}[203.0.113.9]:25, delay=0.{rnd.randint(10, 99)}, delays=0.1/0.01/0.2/0.3, dsn=2.0.0, status=sent (250 2.0.0 OK  1714550000 x{rnd.randint(1, 10**6)} - gsmtp)",
                ((sender, "sent"),),
            )
        elif st < 0.95:
            yield (
                f"postfix/smtp[{pid}]: connect to {mx}[203.0.113.7]:25: Connection timed out",
                NONE,
            )
            yield (
                f"postfix/smtp[{pid}]: {qid}: to=<{rcpt}>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to {mx}[203.0.113.7]:25: Connection timed out)",
                ((sender, "deferred"),),
            )
        else:
            yield (
                f"postfix/smtp[{pid}]: {qid}: to=<{rcpt}>, relay={mx}[203.0.113.5]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=5.1.1, status=bounced (host {mx}[203.0.113.5] said: 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table (in reply to RCPT TO command))",
                ((sender, "bounced"),),
            )
        self.pools["smtp"].give(pid)

    def outbound_delivery(self, qid: str, sender: str, rcpts: list[str], size: int) -> Story:
        """qmgr's part of a local sender's message: deliveries, retries, a bounce notice."""
        rnd = self.rnd
        yield (
            f"postfix/qmgr[1186]: {qid}: from=<{sender}>, size={size}, nrcpt={len(rcpts)} (queue active)",
            NONE,
        )
        pending, bounced = list(rcpts), []
        for attempt in range(3):
            again = []
            for r in pending:
                if self.is_local(r):
                    lines = list(self.deliver_local(qid, r, sender))
                else:
                    lines = list(self.deliver_remote(qid, sender, r, retried=attempt > 0))
                yield from lines
                status = delivery_status(lines)
                if status == "deferred":
                    again.append(r)
                elif status == "bounced":
                    bounced.append(r)
            if not again:
                break
            pending = again
            if attempt == 2:
                break  # still in the queue when the log ends
            yield None
            yield (
                f"postfix/qmgr[1186]: {qid}: from=<{sender}>, size={size}, nrcpt={len(rcpts)} (queue active)",
                NONE,
            )
        if bounced:
            notice = self.new_qid()
            bp = self.pools["bounce"].take()
            yield f"postfix/bounce[{bp}]: {qid}: sender non-delivery notification: {notice}", NONE
            self.pools["bounce"].give(bp)
            yield (
                f"postfix/cleanup[{rnd.choice((20000, 20013))}]: {notice}: message-id=<{notice}.bounce@mx.example>",
                NONE,
            )
            yield f"postfix/qmgr[1186]: {notice}: from=<>, size=6000, nrcpt=1 (queue active)", NONE
            yield from self.deliver_local(notice, sender, None)
            yield f"postfix/qmgr[1186]: {notice}: removed", NONE
        yield f"postfix/qmgr[1186]: {qid}: removed", NONE

    def recipients(self) -> list[str]:
        rnd = self.rnd
        n = rnd.choice((1, 1, 1, 1, 2, 2, 3, 5))
        return [
            self.local_addr() if rnd.random() < 0.15 else rnd.choice(self.outside) for _ in range(n)
        ]

    def submission(self) -> Story:
        rnd = self.rnd
        service = rnd.choice(("submission", "submission", "smtps"))
        pid = self.pools["smtpd"].take()
        tag = f"postfix/{service}/smtpd[{pid}]"
        ip, sender = self.ip(), self.local_addr()
        client = f"dyn-{ip.replace('.', '-')}.isp.example.net[{ip}]"
        yield f"{tag}: connect from {client}", NONE
        yield (
            f"{tag}: Anonymous TLS connection established from {client}: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256",
            NONE,
        )
        if rnd.random() < 0.06:  # refused by policy (sending limit) or a bad recipient
            rcpt = rnd.choice(self.outside)
            yield (
                f"{tag}: NOQUEUE: reject: RCPT from {client}: 450 4.7.1 <{rcpt}>: Recipient address rejected: sending limit reached, try later; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<[192.168.1.20]>",
                ((sender, "rejected"),),
            )
            yield (
                f"{tag}: disconnect from {client} ehlo=2 starttls=1 auth=1 mail=1 rcpt=0/1 quit=1 commands=6/7",
                NONE,
            )
            self.pools["smtpd"].give(pid)
            return
        qid = self.new_qid()
        rcpts = self.recipients()
        yield f"{tag}: {qid}: client={client}, sasl_method=PLAIN, sasl_username={sender}", NONE
        cl = self.pools["cleanup"].take()
        yield (
            f"postfix/cleanup[{cl}]: {qid}: message-id=<{rnd.randint(1, 10**9)}@{sender.rpartition('@')[2]}>",
            NONE,
        )
        if rnd.random() < 0.005:  # the content filter refuses an outbound message
            yield (
                f"postfix/cleanup[{cl}]: {qid}: milter-reject: END-OF-MESSAGE from {client}: 5.7.1 Spam message rejected; from=<{sender}> to=<{rcpts[0]}> proto=ESMTP helo=<[192.168.1.20]>",
                ((sender, "rejected"),),
            )
            self.pools["cleanup"].give(cl)
            yield (
                f"{tag}: disconnect from {client} ehlo=2 starttls=1 auth=1 mail=1 rcpt=1 data=0/1 quit=1 commands=6/7",
                NONE,
            )
            self.pools["smtpd"].give(pid)
            return
        self.pools["cleanup"].give(cl)
        if rnd.random() < 0.03:  # the client drops after DATA, mail queued in this session
            yield (
                f"{tag}: lost connection after DATA from {client}",
                ((sender, "lost_connections"),),
            )
            yield (
                f"{tag}: disconnect from {client} ehlo=2 starttls=1 auth=1 mail=1 rcpt={len(rcpts)} data=1 commands={6 + len(rcpts)}",
                NONE,
            )
        else:
            yield (
                f"{tag}: disconnect from {client} ehlo=2 starttls=1 auth=1 mail=1 rcpt={len(rcpts)} data=1 quit=1 commands={7 + len(rcpts)}",
                NONE,
            )
        self.pools["smtpd"].give(pid)
        yield from self.outbound_delivery(qid, sender, rcpts, rnd.randint(900, 2_000_000))

    def webmail(self) -> Story:
        rnd = self.rnd
        qid, sender = self.new_qid(), self.local_addr()
        yield f"postfix/pickup[1190]: {qid}: uid=33 from=<{sender}>", NONE
        cl = self.pools["cleanup"].take()
        yield (
            f"postfix/cleanup[{cl}]: {qid}: message-id=<{rnd.randint(1, 10**9)}.webmail@{sender.rpartition('@')[2]}>",
            NONE,
        )
        self.pools["cleanup"].give(cl)
        yield from self.outbound_delivery(qid, sender, self.recipients(), rnd.randint(900, 90000))

    def mailbox_session(self) -> Story:
        rnd = self.rnd
        account = self.local_addr()
        svc = "imap" if rnd.random() < 0.75 else "pop3"
        pid = self.pools["dovecot"].take()
        session = f"{rnd.getrandbits(64):016x}"[:16]
        ip = self.ip()
        yield (
            f"dovecot: {svc}-login: Login: user=<{account}>, method=PLAIN, rip={ip}, lip=192.0.2.1, mpid={pid}, TLS, session=<{session}>",
            ((account, f"{svc}_logins"),),
        )
        if rnd.random() < 0.5:
            yield None  # the session stays open a while
        end = rnd.random()
        if end < 0.8:
            yield (
                f"dovecot: {svc}({account})<{pid}><{session}>: Logged out in=312 out=8410 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
                NONE,
            )
        elif end < 0.93:
            yield (
                f"dovecot: {svc}({account})<{pid}><{session}>: Disconnected: Connection closed (IDLE running for 0.001 + waiting input for 28.4 secs, 2 B in + 10+0 B out, state=wait-input) in=120 out=4000 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
                ((account, "lost_connections"),),
            )
        else:
            yield (
                f"dovecot: {svc}({account})<{pid}><{session}>: Disconnected for inactivity in=80 out=300 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0",
                ((account, "lost_connections"),),
            )
        self.pools["dovecot"].give(pid)

    def postscreen_reject(self) -> Story:
        rnd = self.rnd
        ip, port = self.ip(), self.next_port()
        ps = self.pools["postscreen"].take()
        yield f"postfix/postscreen[{ps}]: CONNECT from [{ip}]:{port} to [192.0.2.1]:25", NONE
        if rnd.random() < 0.4:
            yield (
                f"postfix/postscreen[{ps}]: PREGREET 11 after 0.12 from [{ip}]:{port}: EHLO User\\r\\n",
                NONE,
            )
        else:
            yield (
                f"postfix/dnsblog[{ps + 1}]: addr {ip} listed by domain zen.spamhaus.org as 127.0.0.4",
                NONE,
            )
            yield f"postfix/postscreen[{ps}]: DNSBL rank 3 for [{ip}]:{port}", NONE
            forged = rnd.random() < 0.1
            sender = self.local_addr() if forged else rnd.choice(self.outside)
            rcpt = self.local_addr()
            yield (
                f"postfix/postscreen[{ps}]: NOQUEUE: reject: RCPT from [{ip}]:{port}: 550 5.7.1 Service unavailable; client [{ip}] blocked using zen.spamhaus.org; from=<{sender}>, to=<{rcpt}>, proto=ESMTP, helo=<User>",
                ((sender, "rejected"),) if forged else NONE,
            )
        yield f"postfix/postscreen[{ps}]: DISCONNECT [{ip}]:{port}", NONE
        self.pools["postscreen"].give(ps)

    def smtpd_reject(self) -> Story:
        rnd = self.rnd
        pid = self.pools["smtpd"].take()
        ip = self.ip()
        client = f"unknown[{ip}]"
        yield f"postfix/smtpd[{pid}]: connect from {client}", NONE
        k = rnd.random()
        if k < 0.4:
            sender, rcpt, effects = rnd.choice(self.outside), rnd.choice(self.outside), NONE
            text = f"454 4.7.1 <{rcpt}>: Relay access denied"
        elif k < 0.8:
            sender, rcpt, effects = rnd.choice(self.outside), self.local_addr(), NONE
            text = f"450 4.7.1 Client host rejected: cannot find your reverse hostname, [{ip}]"
        else:  # a forged local sender on port 25
            sender, rcpt = self.local_addr(), self.local_addr()
            effects = ((sender, "rejected"),)
            text = f"553 5.7.1 <{sender}>: Sender address rejected: not logged in"
        yield (
            f"postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from {client}: {text}; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{ip}>",
            effects,
        )
        yield f"postfix/smtpd[{pid}]: lost connection after RCPT from {client}", NONE
        yield (
            f"postfix/smtpd[{pid}]: disconnect from {client} ehlo=1 mail=1 rcpt=0/1 commands=2/3",
            NONE,
        )
        self.pools["smtpd"].give(pid)

    def auth_failure(self) -> Story:
        rnd = self.rnd
        ip = self.ip()
        real = rnd.random() < 0.6
        account = (
            self.local_addr()
            if real
            else f"{rnd.choice(('admin', 'info', 'test', 'sales'))}@{rnd.choice(self.domains)}"
        )
        effects = ((account, "login_failures"),) if real else NONE
        k = rnd.random()
        if k < 0.4:
            yield (
                f"dovecot: auth: passwd-file({account},{ip},<Zz{rnd.getrandbits(32):x}>): Password mismatch",
                NONE,
            )
            yield (
                f"dovecot: imap-login: Disconnected: Connection closed (auth failed, 3 attempts in 15 secs): user=<{account}>, method=PLAIN, rip={ip}, lip=192.0.2.1, TLS, session=<Zz{rnd.getrandbits(32):x}>",
                effects,
            )
        elif k < 0.6:
            yield (
                f"dovecot: pop3-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<{account}>, method=PLAIN, rip={ip}, lip=192.0.2.1, TLS, session=<Zz{rnd.getrandbits(32):x}>",
                effects,
            )
        else:
            pid = self.pools["smtpd"].take()
            tag = f"postfix/submission/smtpd[{pid}]"
            yield f"{tag}: connect from unknown[{ip}]", NONE
            if rnd.random() < 0.8:
                yield (
                    f"{tag}: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={account}",
                    effects,
                )
            else:  # no user name logged: nobody to count it for
                yield (
                    f"{tag}: warning: unknown[{ip}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
                    NONE,
                )
            yield f"{tag}: lost connection after AUTH from unknown[{ip}]", NONE
            yield f"{tag}: disconnect from unknown[{ip}] ehlo=1 auth=0/1 commands=1/2", NONE
            self.pools["smtpd"].give(pid)

    def noise(self) -> Story:
        rnd = self.rnd
        k = rnd.random()
        if k < 0.3:
            yield (
                f"postfix/anvil[1201]: statistics: max connection rate 3/60s for (smtp:{self.ip()}) at May  1 12:00:00",
                NONE,
            )
            yield "postfix/anvil[1201]: statistics: max cache size 4 at May  1 12:00:00", NONE
        elif k < 0.5:
            yield "postfix/scache[1202]: statistics: start interval May  1 12:00:00", NONE
            yield "postfix/scache[1202]: statistics: domain lookup hits=0 miss=3 success=0%", NONE
        elif k < 0.8:
            yield (
                f"CRON[{rnd.randint(10000, 60000)}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
                NONE,
            )
        elif k < 0.9:
            yield "systemd[1]: Starting logrotate.service - Rotate log files...", NONE
            yield "systemd[1]: logrotate.service: Deactivated successfully.", NONE
        else:
            yield (
                f"postfix/smtpd[{rnd.randint(2000, 3000)}]: warning: hostname host-{rnd.randint(1, 999)}.example.net does not resolve to address {self.ip()}: Name or service not known",
                NONE,
            )


def delivery_status(lines: list[Line]) -> str:
    """The status (sent, deferred, bounced) of the delivery line among `lines`."""
    text = next(t for t, _ in lines if ", status=" in t)
    return text.rpartition(", status=")[2].split(" ", 1)[0]


class Clock:
    """Timestamps of lines spread evenly over the days, in the chosen format."""

    def __init__(self, shape: Shape) -> None:
        self.start = shape.start
        self.step = shape.days * 86400 / shape.lines
        self.fmt = shape.fmt
        self._second = -1
        self._prefix = ""
        self._day = ""

    def stamp(self, n: int) -> tuple[str, str]:
        """(timestamp text, YYYY-MM-DD) of the n-th line."""
        t = n * self.step
        second = int(t)
        if second != self._second:
            self._second = second
            when = self.start + timedelta(seconds=second)
            self._day = when.strftime("%Y-%m-%d")
            if self.fmt == "classic":
                self._prefix = f"{when:%b} {when.day:2d} {when:%H:%M:%S}"
            else:
                self._prefix = when.strftime("%Y-%m-%dT%H:%M:%S")
        if self.fmt == "classic":
            return self._prefix, self._day
        micros = int((t - second) * 1e6)
        return f"{self._prefix}.{micros:06d}+02:00", self._day


def generate(shape: Shape, write: Callable[[str], object]) -> dict[tuple[str, str], dict[str, int]]:
    """Write `shape.lines` lines through `write`; return the counters they must give."""
    host = Host(shape)
    rnd = host.rnd
    clock = Clock(shape)
    expect: dict[tuple[str, str], dict[str, int]] = {}
    active: list[Story] = [host.story() for _ in range(CONCURRENT)]
    waiting: deque[tuple[int, Story]] = deque()
    n = 0
    batch: list[str] = []
    while n < shape.lines:
        if waiting and waiting[0][0] <= n:
            active.append(waiting.popleft()[1])
        i = rnd.randrange(len(active))
        item = next(active[i], False)
        if item is False:  # story done: a new one starts, unless a resumed one took its place
            if len(active) > CONCURRENT:
                active[i] = active[-1]
                active.pop()
            else:
                active[i] = host.story()
            continue
        if item is None:  # paused: resumes a few hundred lines later
            waiting.append((n + rnd.randint(200, 3000), active[i]))
            active[i] = host.story()
            continue
        text, effects = item
        stamp, day = clock.stamp(n)
        batch.append(f"{stamp} mx {text}\n")
        for account, counter in effects:
            row = expect.setdefault((day, account), {})
            row[counter] = row.get(counter, 0) + 1
        n += 1
        if len(batch) >= 4096:
            write("".join(batch))
            batch.clear()
    write("".join(batch))
    return expect


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("lines", nargs="?", type=int, default=Shape.lines)
    ap.add_argument("--accounts", type=int, default=Shape.accounts)
    ap.add_argument("--domains", type=int, default=Shape.domains)
    ap.add_argument("--days", type=int, default=Shape.days)
    ap.add_argument("--format", dest="fmt", choices=("rfc3339", "classic"), default=Shape.fmt)
    ap.add_argument("--seed", type=int, default=Shape.seed)
    ap.add_argument("--expect", help="write the expected counters and the population here (JSON)")
    args = ap.parse_args()
    shape = Shape(args.lines, args.accounts, args.domains, args.days, args.fmt, args.seed)
    expect = generate(shape, sys.stdout.write)
    if args.expect:
        host = Host(shape)  # same seed: the same population
        with open(args.expect, "w") as f:
            json.dump(
                {
                    "domains": host.domains,
                    "accounts": host.accounts,
                    "counters": [
                        [day, account, row] for (day, account), row in sorted(expect.items())
                    ],
                },
                f,
            )


if __name__ == "__main__":
    main()
