"""Known traffic through a real Postfix + Dovecot; the agent's statistics must match exactly.

Traffic: authenticated submissions (local delivery, a 2-recipient message, an unknown local
user refused at RCPT), a bounce and a deferral from a fake next hop, the same deferral again
once the next hop is down, inbound mail from an outside address, a relay attempt with a spoofed
local sender, a dropped authenticated SMTP session, an SMTP AUTH failure, IMAP and POP3 logins,
an IMAP login failure and an IMAP session dropped by the client. The follower (`follow --once`)
and the backfill (`ingest`) must both produce the expected counters; `queued` comes from the
real queue (`postqueue -j`, run by `follow --once` and by `stats`). Set MAILCFG_KEEP_E2E=1
to keep the logs (they are the source of the parser fixtures in tests/runtime/fixtures/logs/).
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.inventory import Inventory

pytestmark = pytest.mark.e2e

PORT_BASE = 23100  # listeners at +10 … +95
NEXT_HOP_PORT = 23297  # fake next hop: 550 for bounce*, 451 for defer*
PASSWORD = "e2e-Secret-9"
OUTSIDE = "127.0.0.2"  # not in trusted_networks: a real outside client


def _hash(password: str) -> str:
    out = subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _inventory() -> Inventory:
    pw = _hash(PASSWORD)
    return Inventory.model_validate(
        {
            "hosts": {
                "mx1": {
                    "address": "127.0.0.1",
                    "hostname": "mx1.example.com",
                    "transport": "local",
                    "root": "/nonexistent",
                }
            },
            "domains": {
                "example.com": {
                    "domain": "example.com",
                    "accounts": [
                        {"name": "alice", "password": pw},
                        {"name": "bob", "password": pw},
                    ],
                }
            },
        }
    )


class FakeNextHop:
    """A minimal SMTP server on loopback: 550 for recipients starting with "bounce", 451 for
    "defer", 250 otherwise."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                f.write(b"220 nexthop ESMTP\r\n")
                f.flush()
                for raw in f:
                    cmd = raw.decode(errors="replace").strip().upper()
                    if cmd.startswith(("EHLO", "HELO")):
                        reply = "250 nexthop"
                    elif cmd.startswith("RCPT TO:<BOUNCE"):
                        reply = "550 5.1.1 no such user"
                    elif cmd.startswith("RCPT TO:<DEFER"):
                        reply = "451 4.3.0 try again later"
                    elif cmd == "DATA":
                        f.write(b"354 go ahead\r\n")
                        f.flush()
                        for body in f:
                            if body in (b".\r\n", b".\n"):
                                break
                        reply = "250 2.0.0 queued"
                    elif cmd == "QUIT":
                        f.write(b"221 bye\r\n")
                        f.flush()
                        break
                    else:
                        reply = "250 ok"
                    f.write(reply.encode() + b"\r\n")
                    f.flush()

    def close(self) -> None:
        self.sock.close()


def _submit(port: int, sender: str, rcpts: list[str], password: str = PASSWORD) -> Any:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.starttls(context=ctx)
        s.login(sender, password)
        return s.sendmail(sender, rcpts, f"From: {sender}\r\nSubject: t\r\n\r\nhello\r\n")


def _run_agent(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.logs.commands", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _agent_config(path: Path, state: str, logs: list[Path], postfix_config_dir: Path) -> None:
    config = {
        "host": "mx1",
        "hostname": "mx1.example.com",
        "listen": "unix:/nonexistent",
        "state": state,
        "local_domains": ["example.com"],
        "accounts": {
            a: {"limits": {"per_hour": 100}} for a in ("alice@example.com", "bob@example.com")
        },
        "global_filter_reject_text": "x",
        "whitelist_reject_text": "x",
        "default_limits": {"per_hour": 100},
        "postmaster": "postmaster@example.com",
        "logs": [str(p) for p in logs],
        "postfix_config_dir": str(postfix_config_dir),
        "state_dir": str(path.parent / "agent-state"),
    }
    path.write_text(json.dumps(config))


@contextlib.contextmanager
def _base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mailcfg-stats-e2e-"))
    try:
        yield base
    finally:
        if not os.environ.get("MAILCFG_KEEP_E2E"):
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base}")


def _drive_traffic(mh: Any, hop: FakeNextHop) -> None:
    sub = mh.ports["submission"]
    smtp = mh.ports["smtp"]
    _submit(sub, "alice@example.com", ["bob@example.com"])
    _submit(sub, "alice@example.com", ["bob@example.com", "carol@remote.test"])
    _submit(sub, "alice@example.com", ["bounce-me@remote.test"])
    _submit(sub, "alice@example.com", ["defer-me@remote.test"])
    # Unknown local user: refused at RCPT (the other recipient is accepted and delivered).
    refused = _submit(sub, "bob@example.com", ["nobody@example.com", "alice@example.com"])
    assert "nobody@example.com" in refused
    # SMTP AUTH failure.
    with pytest.raises(smtplib.SMTPAuthenticationError):
        _submit(sub, "bob@example.com", ["alice@example.com"], password="wrong")
    # Authenticated session dropped after RCPT.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP("127.0.0.1", sub, timeout=20)
    s.starttls(context=ctx)
    s.login("bob@example.com", PASSWORD)
    s.mail("bob@example.com")
    s.rcpt("alice@example.com")
    s.sock.close()
    # Inbound from outside, and a relay attempt with a spoofed local sender.
    with smtplib.SMTP("127.0.0.1", smtp, timeout=20, source_address=(OUTSIDE, 0)) as s:
        s.sendmail("someone@outside.test", ["bob@example.com"], "Subject: in\r\n\r\nhi\r\n")
    with (
        smtplib.SMTP("127.0.0.1", smtp, timeout=20, source_address=(OUTSIDE, 0)) as s,
        pytest.raises(smtplib.SMTPRecipientsRefused),
    ):
        s.sendmail("alice@example.com", ["x@elsewhere.test"], "Subject: r\r\n\r\nx\r\n")
    # IMAP: a login and logout, a dropped session, a failed login; POP3: two logins.
    imap = imaplib.IMAP4("127.0.0.1", mh.ports["imap"])
    imap.login("alice@example.com", PASSWORD)
    imap.logout()
    imap = imaplib.IMAP4("127.0.0.1", mh.ports["imap"])
    imap.login("bob@example.com", PASSWORD)
    imap.select("INBOX")
    imap.sock.close()
    imap = imaplib.IMAP4("127.0.0.1", mh.ports["imap"])
    with pytest.raises(imaplib.IMAP4.error):
        imap.login("alice@example.com", "wrong")
    imap.logout()
    for _ in range(2):
        pop = poplib.POP3("127.0.0.1", mh.ports["pop3"])
        pop.user("bob@example.com")
        pop.pass_(PASSWORD)
        pop.quit()
    mh.wait_for_messages("bob@example.com", 3)
    mh.wait_for_messages("alice@example.com", 2)  # bob's message + the bounce report
    mh.wait_for_log("status=bounced")
    mh.wait_for_log("status=deferred")
    # The next hop goes down: the deferred message is tried again and deferred again.
    hop.close()
    mh.flush_queue()
    _wait_count(mh.maillog, "status=deferred", 2)
    _wait_count(mh.dovecot_log, "Disconnected", 1)
    _wait_count(mh.maillog, "lost connection after", 1)


def _wait_count(path: Path, text: str, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.read_text(errors="replace").count(text) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {n} lines with {text!r}")


EXPECTED = {
    "alice@example.com": {
        "sent": 3,  # bob (1st message), bob and carol (2nd message)
        "bounced": 1,
        "deferred": 2,
        "queued": 1,
        "rejected": 1,  # the relay attempt with alice as (spoofed) sender
        "imap_logins": 1,
        "login_failures": 1,
        "received": 2,
    },
    "bob@example.com": {
        "sent": 1,
        "rejected": 1,  # nobody@example.com
        "pop3_logins": 2,
        "imap_logins": 1,
        "lost_connections": 2,  # dropped SMTP session + dropped IMAP session
        "login_failures": 2,  # smtplib tries AUTH PLAIN, then LOGIN: two failures logged
        "received": 3,
    },
}


def test_statistics_match_known_traffic() -> None:
    from tests.e2e.mailhost import boot_mailhost

    with _base() as base:
        hop = FakeNextHop(NEXT_HOP_PORT)
        policy = {
            "postfix_main": {"default_transport": f"smtp:[127.0.0.1]:{NEXT_HOP_PORT}"},
            "dovecot_auth_failure_delay": "0",
        }
        try:
            with boot_mailhost(_inventory(), "mx1", base / "host", PORT_BASE, policy=policy) as mh:
                _drive_traffic(mh, hop)
                assert mh.postqueue(), "the deferred mail should still be queued"
                logs = [mh.maillog, mh.dovecot_log]
                config = base / "agent.json"
                _agent_config(
                    config, f"sqlite:///{base}/state.db", logs, Path(mh.postfix_config_dir)
                )
                # `follow --once` sets the `queued` gauge from the real queue (postqueue -j).
                _run_agent("follow", "--once", "--config", str(config))
                followed_once = json.loads(
                    _run_agent("stats", "--no-queue", "--format", "json", "--config", str(config))
                )
                # `stats` refreshes the gauge itself: a stale value is replaced by the queue's.
                from runtime.state.sqlite import SqliteStore

                store = SqliteStore(base / "state.db")
                for account in EXPECTED:
                    store.set_stat(time.strftime("%Y-%m-%d"), account, "queued", 9)
                store.close()
                followed = json.loads(
                    _run_agent("stats", "--format", "json", "--config", str(config))
                )
                # Backfill of the same logs into a fresh store gives the same counters.
                _run_agent(
                    "ingest", "--config", str(config), "--state", f"sqlite:///{base}/b.db",
                    *map(str, logs),
                )  # fmt: skip
                ingested = json.loads(
                    _run_agent(
                        "stats",
                        "--no-queue",
                        "--format",
                        "json",
                        "--config",
                        str(config),
                        "--state",
                        f"sqlite:///{base}/b.db",
                    )
                )
                for kept in ("maillog", "dovecot_log"):
                    shutil.copy(getattr(mh, kept), base / f"{kept}.txt")
        finally:
            hop.close()
        today = time.strftime("%Y-%m-%d")
        got = {r["account"]: {k: v for k, v in r.items() if v and k not in ("day", "account")}
               for r in followed if r["day"] == today}  # fmt: skip
        assert got == EXPECTED
        got_once = {r["account"]: {k: v for k, v in r.items() if v and k not in ("day", "account")}
                    for r in followed_once if r["day"] == today}  # fmt: skip
        assert got_once == EXPECTED
        got_ingest = {
            r["account"]: {k: v for k, v in r.items() if v and k not in ("day", "account")}
            for r in ingested
        }
        without_queue = {
            a: {k: v for k, v in c.items() if k != "queued"} for a, c in EXPECTED.items()
        }
        assert got_ingest == without_queue
