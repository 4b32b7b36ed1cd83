"""An apply never interrupts mail: 20 `mailcfg apply` runs while clients keep sessions going.

One namespace host (tests/e2e/netns.py: its own network namespace, named by the lab's
allocator, so its ports 25, 587 and 143 are its own and collide with no other test; nothing
listens on the runner) runs real Postfix, Dovecot and the agent (`mailcfg-agent serve` on the
rendered agent.json, as the unit would, but as root and without systemd). Every apply goes the
real way: the CLI, SSH, the on-host program and the roles' activations (`postfix reload`; the
agent's own reload of agent.json; Dovecot is reloaded only when dovecot.conf or its TLS pair
changed, which no apply here does: it rereads its passwd-files itself, and with Dovecot's
default `shutdown_clients = yes` a reload ends every open IMAP session 6 s later).

While the applies run, client threads on the runner (an outside address: not a trusted
network) loop with real smtplib/imaplib clients and no retries:
  - port 25: mail from outside to alice (the agent's inbound check, LMTP delivery);
  - port 587: STARTTLS, AUTH as alice, mail to bob (the agent's outbound limit check);
  - port 143: STARTTLS, login as alice, SELECT, FETCH; and one IMAP session held open through
    every apply (NOOP, SELECT and FETCH in a loop).
The applies rotate through: an account added and the previous one removed, another account's
password, a redirect added and the previous one removed, the agent's policy (sending limits
and a global filter entry), and a main.cf limit. Afterwards: no session failed, every message
sent is in its maildir, no service was restarted (same PIDs; reloads counted in the logs),
and the last account, password and redirect are in force. The figures are printed (`pytest
-s` shows them).
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mailhost import ensure_vmail_user, host_paths, make_self_signed_cert, make_traversable
from netns import NetnsHost, NetnsLab, listening_ports, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "no-interruption Secret 5"
DOMAIN = "a.example"
ALICE, BOB, CAROL = (f"{n}@{DOMAIN}" for n in ("alice", "bob", "carol"))
OUTSIDE = "someone@outside.example"
APPLIES = 20
PAUSE = 0.2  # between a client's sessions: keeps the 2-core CI machine usable
CLIENT_TIMEOUT = 30.0
DELIVERY_TIMEOUT = 60.0


def make_hash(password: str) -> str:
    return subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def client_tls() -> ssl.SSLContext:
    """Checks no certificate (the test host's is self-signed): the sessions are what count."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MailServer:
    """The namespace host, its inventory (written as files) and `mailcfg` run against it."""

    def __init__(self, lab: NetnsLab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.net: NetnsHost = lab.add_host()
        self.base = self.net.root / "mail"
        self.inventory = workdir / "inventory"
        self.uid, self.gid = ensure_vmail_user()
        self.hash = make_hash(PASSWORD)
        self.accounts: list[dict[str, Any]] = [
            self.account("alice"),
            self.account("bob"),
            self.account("carol", password=make_hash("carol 0")),
        ]
        self.carol_password = "carol 0"
        self.redirects: list[dict[str, Any]] = [{"name": "team", "to": [ALICE, BOB]}]
        self.policy: dict[str, Any] = {
            "trusted_networks": ["127.0.0.1/32"],
            "reject_unknown_sender_domain": False,
            "smtpd_error_sleep_time": "0s",
            "dovecot_auth_failure_delay": "0s",
            "tls": {"cert": str(self.base / "tls/cert.pem"), "key": str(self.base / "tls/key.pem")},
            "paths": host_paths(self.base, self.uid, self.gid),
            "policy_state": f"sqlite://{self.base / 'lib/agent/state.db'}",
            # No DNS in the lab: the runner's address is not loopback, so SPF would run.
            "spam": {"spf": False},
            "limits": {"per_hour": 100_000, "per_day": 1_000_000, "per_month": 10_000_000},
            "global_filter": ["casino-offers"],
            "smtpd_client_connection_count_limit": 50,
        }
        self.prepare()
        self.write_inventory()

    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "password": self.hash, "quota": "1G", **extra}

    @property
    def postfix_dir(self) -> Path:
        return self.base / "etc/postfix"

    @property
    def agent_config(self) -> Path:
        return self.base / "etc/mailcfg/agent.json"

    @property
    def maillog(self) -> Path:
        return self.base / "log/mail.log"

    @property
    def dovecot_log(self) -> Path:
        return self.base / "log/dovecot.log"

    @property
    def agent_log(self) -> Path:
        return self.base / "log/agent.out"

    def prepare(self) -> None:
        """What the host has before mailcfg (a real one from its packages): directories, a
        certificate, and `mailcfg-agent` on root's PATH (the agent role's verify runs it)."""
        b = self.base
        for d in ("log", "spool/postfix", "run/dovecot", "run/mailcfg", "lib/agent",
                  "etc/systemd/system"):  # fmt: skip
            (b / d).mkdir(parents=True, exist_ok=True)
        (b / "lib/postfix").mkdir(parents=True, exist_ok=True)
        shutil.chown(b / "lib/postfix", "postfix", "postfix")  # or master.lock is refused
        (b / "vmail").mkdir(parents=True, exist_ok=True)
        os.chown(b / "vmail", self.uid, self.gid)
        make_self_signed_cert(b / "tls", f"mx.{DOMAIN}")
        make_traversable(b)
        bindir = self.workdir / "host-sbin"
        bindir.mkdir()
        agent = bindir / "mailcfg-agent"
        agent.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m runtime "$@"\n')
        agent.chmod(0o755)
        self.lab.bind_mount(self.net, bindir, "/usr/local/sbin")

    def write_inventory(self) -> None:
        host = {
            "address": self.net.address,
            "hostname": f"mx.{DOMAIN}",
            "transport": "ssh",
            "ssh": {
                "identity_file": str(self.lab.identity_file),
                "known_hosts": str(self.lab.known_hosts),
                "connect_timeout": 2,
                "command_timeout": 120,
            },
            "roles": ["postfix", "dovecot", "agent"],
            "domains": [DOMAIN],
            "policy": self.policy,
        }
        (self.inventory / "domains").mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no quoting surprises in generated files.
        doc = {"schema_version": 1, "hosts": {"mx": host}}
        (self.inventory / "mailcfg.yml").write_text(json.dumps(doc, indent=1))
        domain = {"domain": DOMAIN, "accounts": self.accounts, "redirects": self.redirects}
        (self.inventory / "domains" / f"{DOMAIN}.yml").write_text(json.dumps(domain, indent=1))

    def mailcfg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "compiler", args[0], str(self.inventory),
             "--cache", str(self.workdir / "cache"), *args[1:]],
            capture_output=True, text=True, cwd=self.workdir, timeout=180, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def apply(self) -> subprocess.CompletedProcess[str]:
        return self.mailcfg("apply", "--yes")

    # -- services --------------------------------------------------------------------------

    def start_services(self) -> None:
        self.lab.start_service(
            self.net,
            ["env", f"PYTHONPATH={REPO}", sys.executable, "-m", "runtime", "serve",
             "--config", str(self.agent_config)],
            self.agent_log,
        )  # fmt: skip
        sock = self.base / "run/mailcfg/policy.sock"
        wait_until(sock.exists, "the agent's policy socket", timeout=30)
        self.lab.run_in_host(self.net, f"postfix -c {self.postfix_dir} start")
        self.lab.start_service(
            self.net,
            ["dovecot", "-F", "-c", str(self.base / "etc/dovecot/dovecot.conf")],
            self.base / "log/dovecot.out",
        )
        sshd = self.net.sshd_pid()
        assert sshd is not None
        queue = self.base / "spool/postfix/private"

        def ready() -> bool:
            ports = {p for _, p in listening_ports(sshd)}
            return {25, 143, 587} <= ports and all(
                (queue / s).exists() for s in ("auth", "dovecot-lmtp")
            )

        wait_until(ready, "Postfix and Dovecot", timeout=30)
        self.lab.track_pid(self.net, self.postfix_master())

    def stop_services(self) -> None:
        with contextlib.suppress(Exception):
            self.lab.run_in_host(self.net, f"postfix -c {self.postfix_dir} stop", check=False)
        self.lab.stop_services(self.net)

    def postfix_master(self) -> int:
        return int((self.base / "spool/postfix/pid/master.pid").read_text().split()[0])

    def dovecot_master(self) -> int:
        return int((self.base / "run/dovecot/master.pid").read_text().split()[0])

    def service_pids(self) -> dict[str, int]:
        """Postfix's and Dovecot's master and the agent: a restart would change one."""
        agent = self.net.services[0]
        return {"postfix": self.postfix_master(), "dovecot": self.dovecot_master(), "agent": agent}

    def flush_queue(self) -> None:
        self.lab.run_in_host(self.net, f"postqueue -c {self.postfix_dir} -f")

    def subjects(self, address: str) -> list[str]:
        """Subjects of the messages in the account's INBOX maildir."""
        local, domain = address.split("@")
        found: list[str] = []
        for sub in ("new", "cur"):
            d = self.base / "vmail" / domain / local / "Maildir" / sub
            for path in d.iterdir() if d.is_dir() else ():
                match = re.search(rb"^Subject: (.*?)\r?$", path.read_bytes(), re.M)
                if match:
                    found.append(match.group(1).decode())
        return found


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Client:
    """One looping client: counts its sessions and keeps every failure it met."""

    name: str
    session: Callable[[int], str | None]  # returns the subject of the message it sent
    held: bool = False  # one session throughout: its first failure ends it
    sessions: int = 0
    sent: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def loop(self, stop: threading.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                subject = self.session(n)
            except Exception as exc:
                self.failures.append(f"{self.name} #{n} at {stamp()}: {exc!r}")
                if self.held:
                    return
            else:
                self.sessions += 1
                if subject is not None:
                    self.sent.append(subject)
            stop.wait(PAUSE)


def stamp() -> str:
    """Wall-clock time as the daemons' logs write it, with milliseconds."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"


def message(sender: str, rcpt: str, subject: str) -> str:
    return f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nno interruption\r\n"


def inbound_session(address: str) -> Callable[[int], str]:
    def session(n: int) -> str:
        subject = f"in-{n}"
        with smtplib.SMTP(address, 25, timeout=CLIENT_TIMEOUT) as smtp:
            smtp.ehlo("client.outside.example")
            refused = smtp.sendmail(OUTSIDE, [ALICE], message(OUTSIDE, ALICE, subject))
            assert not refused, refused
        return subject

    return session


def submission_session(address: str) -> Callable[[int], str]:
    def session(n: int) -> str:
        subject = f"out-{n}"
        with smtplib.SMTP(address, 587, timeout=CLIENT_TIMEOUT) as smtp:
            smtp.ehlo("client.outside.example")
            smtp.starttls(context=client_tls())
            smtp.ehlo("client.outside.example")
            smtp.login(ALICE, PASSWORD)
            refused = smtp.sendmail(ALICE, [BOB], message(ALICE, BOB, subject))
            assert not refused, refused
        return subject

    return session


def imap_check(imap: imaplib.IMAP4) -> None:
    typ, data = imap.select("INBOX", readonly=True)
    assert typ == "OK", data
    count = int(data[0] or b"0")
    if count:
        typ, data = imap.fetch(str(count), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and data and data[0] is not None, data


def imap_login_works(address: str, user: str, password: str) -> bool:
    with imaplib.IMAP4(address, 143, timeout=CLIENT_TIMEOUT) as imap:
        imap.starttls(ssl_context=client_tls())
        try:
            imap.login(user, password)
        except imaplib.IMAP4.error:
            return False
        imap.logout()
        return True


def imap_session(address: str) -> Callable[[int], None]:
    def session(n: int) -> None:
        with imaplib.IMAP4(address, 143, timeout=CLIENT_TIMEOUT) as imap:
            imap.starttls(ssl_context=client_tls())
            assert imap.login(ALICE, PASSWORD)[0] == "OK"
            imap_check(imap)
            assert imap.logout()[0] == "BYE"

    return session


class HeldImap:
    """One IMAP session open from before the first apply to after the last."""

    def __init__(self, address: str) -> None:
        self.imap = imaplib.IMAP4(address, 143, timeout=CLIENT_TIMEOUT)
        self.imap.starttls(ssl_context=client_tls())
        assert self.imap.login(ALICE, PASSWORD)[0] == "OK"

    def session(self, n: int) -> None:
        assert self.imap.noop()[0] == "OK"
        imap_check(self.imap)

    def close(self) -> None:
        assert self.imap.logout()[0] == "BYE"


# -- the applies -----------------------------------------------------------------------------


def change_for(server: MailServer, i: int) -> str:
    """The i-th change (a rotation of five kinds); returns what it changes."""
    kind = i % 5
    if kind == 0:
        server.accounts = [a for a in server.accounts if not a["name"].startswith("temp")]
        server.accounts.append(server.account(f"temp{i}"))
        return f"account temp{i} added, the previous one removed"
    if kind == 1:
        server.carol_password = f"carol {i}"
        carol = next(a for a in server.accounts if a["name"] == "carol")
        carol["password"] = make_hash(server.carol_password)
        return "carol's password"
    if kind == 2:
        server.redirects = [r for r in server.redirects if not r["name"].startswith("fwd")]
        server.redirects.append({"name": f"fwd{i}", "to": [CAROL]})
        return f"redirect fwd{i} added, the previous one removed"
    if kind == 3:
        server.policy["limits"] = {**server.policy["limits"], "per_hour": 100_000 + i}
        server.policy["global_filter"] = ["casino-offers", f"bulk-{i}.example.net"]
        return "agent: sending limit and global filter"
    server.policy["smtpd_client_connection_count_limit"] = 50 + i
    return "main.cf: smtpd_client_connection_count_limit"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailServer]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd, Postfix, Dovecot)")
    with NetnsLab() as lab:
        server = MailServer(lab, tmp_path_factory.mktemp("no-interruption"))
        try:
            yield server
        finally:
            server.stop_services()
            if os.environ.get("MAILCFG_KEEP_E2E") == "1":  # the lab's directory is removed
                shutil.copytree(server.base / "log", server.workdir / "log")


def count_lines(path: Path, text: str) -> int:
    if not path.exists():
        return 0
    return sum(text in line for line in path.read_text(errors="replace").splitlines())


def test_twenty_applies_interrupt_no_session_and_lose_no_message(server: MailServer) -> None:
    first = server.apply()
    assert first.returncode == 0, first.stdout + first.stderr
    server.start_services()
    # Mailcfg reloads a Dovecot it has not reloaded yet (a new master PID) once, whatever
    # changed: part of the setup, like the first apply.
    server.carol_password = "carol warm-up"
    server.accounts[2]["password"] = make_hash(server.carol_password)
    server.write_inventory()
    warm_up = server.apply()
    assert warm_up.returncode == 0, warm_up.stdout + warm_up.stderr
    pids = server.service_pids()
    held = HeldImap(server.net.address)
    clients = [
        Client("smtp 25", inbound_session(server.net.address)),
        Client("submission 587", submission_session(server.net.address)),
        Client("imap 143", imap_session(server.net.address)),
        Client("imap 143 held", held.session, held=True),
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=c.loop, args=(stop,), name=c.name) for c in clients]
    reloads_before = {
        "postfix": count_lines(server.maillog, "reload -- version"),
        "dovecot": count_lines(server.dovecot_log, "SIGHUP received"),
        "agent": count_lines(server.agent_log, "reloaded "),
    }
    durations: list[float] = []
    changes: list[str] = []
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(1)  # sessions under way before the first apply
        for i in range(APPLIES):
            changes.append(change_for(server, i))
            server.write_inventory()
            began, began_at = time.monotonic(), stamp()
            result = server.apply()
            durations.append(time.monotonic() - began)
            changes[-1] += f" ({began_at} to {stamp()})"
            assert result.returncode == 0, f"apply {i} ({changes[-1]}):\n{result.stdout}"
            assert " changed" in result.stdout, result.stdout
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=CLIENT_TIMEOUT + 5)
    if not clients[3].failures:
        try:
            held.close()
        except Exception as exc:
            clients[3].failures.append(f"imap 143 held: logout at the end: {exc!r}")
    window = time.monotonic() - started

    reloads = {
        "postfix": count_lines(server.maillog, "reload -- version") - reloads_before["postfix"],
        "dovecot": count_lines(server.dovecot_log, "SIGHUP received") - reloads_before["dovecot"],
        "agent": count_lines(server.agent_log, "reloaded ") - reloads_before["agent"],
    }
    failures = [f for c in clients for f in c.failures]
    figures = (
        f"{len(durations)} applies in {window:.0f} s (each {min(durations):.1f}-"
        f"{max(durations):.1f} s, mean {sum(durations) / len(durations):.1f} s); "
        f"reloads {reloads}; "
        + "; ".join(f"{c.name}: {c.sessions} sessions" for c in clients)
        + f"; failed sessions: {len(failures)} (clients never retry)"
    )
    print(f"\nno interruption: {figures}")

    # Nothing the clients did failed, and no service was restarted.
    assert not failures, "\n".join(["applies:", *changes, "failures:", *failures])
    assert server.service_pids() == pids
    # Accounts and passwords reach Dovecot without a reload (it rereads its passwd-files).
    assert reloads["dovecot"] == 0 and reloads["postfix"] >= 1 and reloads["agent"] >= 1
    assert all(c.sessions >= APPLIES for c in clients), figures
    plan = server.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr

    # Every message accepted is delivered; some may have been deferred and need a retry.
    deferred = count_lines(server.maillog, "status=deferred")
    server.flush_queue()
    expected = {ALICE: set(clients[0].sent), BOB: set(clients[1].sent)}

    def delivered() -> bool:
        return all(want <= set(server.subjects(a)) for a, want in expected.items())

    wait_until(delivered, "every message in its maildir", timeout=DELIVERY_TIMEOUT)
    for address, want in expected.items():
        got = [s for s in server.subjects(address) if s in want]
        assert len(got) == len(want), f"{address}: a message delivered twice"
    print(
        f"no interruption: messages sent and delivered: {len(expected[ALICE])} inbound (25), "
        f"{len(expected[BOB])} submitted (587); deliveries deferred and retried: {deferred}"
    )

    # The last applies' accounts, password and redirect are in force (without a Dovecot reload).
    address = server.net.address
    assert imap_login_works(address, CAROL, server.carol_password)
    assert not imap_login_works(address, CAROL, "carol warm-up")
    temps = sorted(int(a["name"][4:]) for a in server.accounts if a["name"].startswith("temp"))
    assert imap_login_works(address, f"temp{temps[-1]}@{DOMAIN}", PASSWORD)
    assert not imap_login_works(address, f"temp{temps[-1] - 5}@{DOMAIN}", PASSWORD)
    fwd = next(r["name"] for r in server.redirects if r["name"].startswith("fwd"))
    rcpt = f"{fwd}@{DOMAIN}"
    with smtplib.SMTP(address, 25, timeout=CLIENT_TIMEOUT) as smtp:
        smtp.ehlo("client.outside.example")
        smtp.sendmail(OUTSIDE, [rcpt], message(OUTSIDE, rcpt, fwd))
    wait_until(lambda: fwd in server.subjects(CAROL), f"{fwd} for carol", timeout=30)
