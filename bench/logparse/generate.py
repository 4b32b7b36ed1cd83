# ruff: noqa: E501 (log line templates are as long as the real lines)
"""Generate a realistic Postfix + Dovecot mail log (classic syslog format) for the benchmark.

Each message is the usual sequence of lines (smtpd connect, client=, cleanup, qmgr from,
one delivery per recipient, removed, disconnect); Dovecot logins, logouts and auth failures
are mixed in, plus relay rejects and deferrals. Deterministic (seeded).
"""

from __future__ import annotations

import itertools
import random
import sys
from collections.abc import Iterator


def generate_lines(seed: int = 1) -> Iterator[str]:
    rnd = random.Random(seed)
    accounts = [f"user{i}@example.com" for i in range(500)] + [
        f"staff{i}@example.org" for i in range(100)
    ]
    outside = [f"someone{i}@remote{i % 50}.net" for i in range(2000)]
    qid_n = 0x1A2B3C
    pid = 1000
    sec = 0
    while True:
        sec += 1
        h, m, s = (sec // 3600) % 24, (sec // 60) % 60, sec % 60
        day = 1 + (sec // 86400) % 28
        ts = f"May {day:2d} {h:02d}:{m:02d}:{s:02d} mx"
        pid += 1
        kind = rnd.random()
        if kind < 0.55:  # a message, authenticated outbound or inbound
            qid_n += 7
            qid = f"{qid_n:X}"
            outbound = rnd.random() < 0.5
            sender = rnd.choice(accounts) if outbound else rnd.choice(outside)
            rcpts = [
                rnd.choice(outside if outbound else accounts)
                for _ in range(rnd.choice((1, 1, 1, 2, 3)))
            ]
            yield f"{ts} postfix/smtpd[{pid}]: connect from mail.remote.net[198.51.100.{pid % 250}]"
            sasl = f", sasl_method=PLAIN, sasl_username={sender}" if outbound else ""
            yield f"{ts} postfix/smtpd[{pid}]: Anonymous TLS connection established from mail.remote.net[198.51.100.{pid % 250}]: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
            yield f"{ts} postfix/smtpd[{pid}]: {qid}: client=mail.remote.net[198.51.100.{pid % 250}]{sasl}"
            yield f"{ts} postfix/cleanup[{pid + 1}]: {qid}: message-id=<{qid_n}@remote.net>"
            yield f"{ts} postfix/qmgr[99]: {qid}: from=<{sender}>, size={rnd.randint(900, 90000)}, nrcpt={len(rcpts)} (queue active)"
            auth = "auth=1 " if outbound else ""  # Postfix 3 counts each command it saw
            yield f"{ts} postfix/smtpd[{pid}]: disconnect from mail.remote.net[198.51.100.{pid % 250}] ehlo=1 {auth}mail=1 rcpt={len(rcpts)} data=1 quit=1 commands={5 + bool(auth)}"
            for r in rcpts:
                if outbound:
                    st = rnd.random()
                    if st < 0.9:
                        yield f"{ts} postfix/smtp[{pid + 2}]: {qid}: to=<{r}>, relay=mx.remote.net[203.0.113.5]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as ABC)"
                    elif st < 0.95:
                        yield f"{ts} postfix/smtp[{pid + 2}]: {qid}: to=<{r}>, relay=none, delay=30, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to mx.remote.net[203.0.113.5]:25: Connection timed out)"
                    else:
                        yield f"{ts} postfix/smtp[{pid + 2}]: {qid}: to=<{r}>, relay=mx.remote.net[203.0.113.5]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=5.1.1, status=bounced (host mx.remote.net[203.0.113.5] said: 550 5.1.1 unknown user (in reply to RCPT TO command))"
                else:
                    yield f"{ts} postfix/lmtp[{pid + 2}]: {qid}: to=<{r}>, relay=mail.example.com[private/dovecot-lmtp], delay=0.05, delays=0.01/0/0.01/0.03, dsn=2.0.0, status=sent (250 2.0.0 <{r}> Saved)"
                    yield f"{ts} dovecot: lmtp({pid + 3}): Connect from local"
                    yield f"{ts} dovecot: lmtp({r})<{pid}><abcdef{pid}>: msgid=<{qid_n}@remote.net>: saved mail to INBOX"
            if outbound:
                yield f"{ts} postfix/smtp[{pid + 2}]: Verified TLS connection established to mx.remote.net[203.0.113.5]:25: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)"
            else:
                yield f"{ts} dovecot: lmtp({pid + 3}): Disconnect from local: Logged out (state=READY)"
            yield f"{ts} postfix/qmgr[99]: {qid}: removed"
        elif kind < 0.8:  # IMAP/POP3 session
            a = rnd.choice(accounts)
            svc = "imap" if rnd.random() < 0.7 else "pop3"
            yield f"{ts} dovecot: {svc}-login: Login: user=<{a}>, method=PLAIN, rip=198.51.100.{pid % 250}, lip=192.0.2.1, mpid={pid}, TLS, session=<Xy{pid}>"
            end = (
                "Logged out in=120 out=4000 deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0"
                if rnd.random() < 0.9
                else "Disconnected: Connection closed (IDLE finished 10.1 secs ago) in=80 out=300"
            )
            yield f"{ts} dovecot: {svc}({a})<{pid}><Xy{pid}>: {end}"
        elif kind < 0.9:  # relay attempt / reject
            yield f"{ts} postfix/smtpd[{pid}]: connect from unknown[198.51.100.{pid % 250}]"
            yield f"{ts} postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[198.51.100.{pid % 250}]: 454 4.7.1 <{rnd.choice(outside)}>: Relay access denied; from=<{rnd.choice(outside)}> to=<{rnd.choice(outside)}> proto=ESMTP helo=<spam>"
            yield f"{ts} postfix/smtpd[{pid}]: lost connection after RCPT from unknown[198.51.100.{pid % 250}]"
            yield f"{ts} postfix/smtpd[{pid}]: disconnect from unknown[198.51.100.{pid % 250}] ehlo=1 mail=1 rcpt=0/1 commands=2/3"
        else:  # auth failures and noise
            a = rnd.choice(accounts)
            yield f"{ts} dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<{a}>, method=PLAIN, rip=198.51.100.{pid % 250}, lip=192.0.2.1, TLS, session=<Zz{pid}>"
            yield f"{ts} postfix/smtpd[{pid}]: warning: unknown[198.51.100.{pid % 250}]: SASL LOGIN authentication failed: UGFzc3dvcmQ6, sasl_username={a}"
            yield f"{ts} postfix/anvil[98]: statistics: max connection rate 1/60s for (smtp:198.51.100.{pid % 250}) at {ts[:15]}"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    out = sys.stdout
    for line in itertools.islice(generate_lines(), n):
        out.write(line + "\n")


if __name__ == "__main__":
    main()
