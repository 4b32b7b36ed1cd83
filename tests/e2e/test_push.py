"""Push over SSH: `mailcfg apply` to three namespace hosts with real sshd, Postfix and Dovecot.

The tests form one story on a shared fleet and run in file order: first apply and mail flow
(including a redirect delivered across hosts), a one-account change, a change Postfix rejects,
the SSH connection killed during apply, a host down, and a hand edit repaired by apply.

Cross-host delivery without DNS: an inventory may not route mail (`transport_maps` is refused
in `postfix_main`), so the fleet runs mailcfg with its own copy of the roles whose postfix
defaults read `transport_maps` from a `fleet_routes` file the harness puts next to each host's
main.cf (`b.example smtp:[198.18.0.x]`, the other hosts' domains). The agent role is left out
here (no systemd in the namespaces to run it); its policy hook is tested by the agent's own
e2e tests.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import shutil
import smtplib
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mailhost import ensure_vmail_user, host_paths, make_self_signed_cert, make_traversable
from netns import NetnsHost, NetnsLab, listening_ports, wait_until

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
NAMES = ("a", "b", "c")
REPO = Path(__file__).resolve().parents[2]


def make_hash(password: str) -> str:
    return subprocess.run(
        ["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


@dataclass
class FleetHost:
    name: str  # inventory name: "a", "b", "c"
    net: NetnsHost
    base: Path  # everything of this host's mail system lives below

    @property
    def domain(self) -> str:
        return f"{self.name}.example"

    @property
    def postfix_dir(self) -> Path:
        return self.base / "etc/postfix"

    @property
    def queue_dir(self) -> Path:
        return self.base / "spool/postfix"

    @property
    def dovecot_conf(self) -> Path:
        return self.base / "etc/dovecot/dovecot.conf"

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.base / "vmail" / domain / local / "Maildir"

    def messages(self, address: str) -> list[bytes]:
        found: list[Path] = []
        for sub in ("new", "cur"):
            d = self.maildir(address) / sub
            if d.is_dir():
                found.extend(p for p in d.iterdir() if p.is_file())
        return [p.read_bytes() for p in found]


class Fleet:
    """Three namespace hosts, their inventory, and the `mailcfg` command run against it."""

    def __init__(self, lab: NetnsLab, workdir: Path, names: Sequence[str] = NAMES) -> None:
        self.lab = lab
        self.workdir = workdir
        self.names = tuple(names)
        self.inventory = workdir / "inventory"
        self.hash = make_hash(PASSWORD)
        self.hosts = {
            name: FleetHost(name, net, net.root / "mail")
            for name, net in zip(names, (lab.add_host() for _ in names), strict=True)
        }
        self.uid, self.gid = ensure_vmail_user()
        self.host_policy: dict[str, dict[str, Any]] = {n: {} for n in names}
        self.global_policy: dict[str, Any] = {}
        users = {"a": "alice", "b": "bob", "c": "carol"}
        self.accounts: dict[str, list[dict[str, Any]]] = {
            n: [self.account(users.get(n, "user"))] for n in names
        }
        self.redirects: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        if "a" in names and "b" in names:
            self.redirects["a"].append({"name": "info", "to": ["bob@b.example"]})
        self.roles = workdir / "roles"
        copy_roles_with_routes(self.roles)
        for host in self.hosts.values():
            self.prepare(host)
        self.write_inventory()

    def account(self, name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "password": self.hash, "quota": "100M", **extra}

    def prepare(self, host: FleetHost) -> None:
        """Directories and a certificate the inventory points at (a real host has them from
        its packages)."""
        b = host.base
        for d in ("log", "spool/postfix", "run/dovecot", "etc/systemd/system"):
            (b / d).mkdir(parents=True, exist_ok=True)
        (b / "lib/postfix").mkdir(parents=True, exist_ok=True)
        shutil.chown(b / "lib/postfix", "postfix", "postfix")  # or master.lock is refused
        (b / "vmail").mkdir(parents=True, exist_ok=True)
        os.chown(b / "vmail", self.uid, self.gid)
        make_self_signed_cert(b / "tls", f"mx.{host.domain}")
        host.postfix_dir.mkdir(parents=True, exist_ok=True)
        (host.postfix_dir / ROUTES).write_text(
            "".join(
                f"{o.domain} smtp:[{o.net.address}]\n" for o in self.hosts.values() if o is not host
            )
        )
        make_traversable(b)

    def policy_of(self, host: FleetHost) -> dict[str, Any]:
        b = host.base
        policy: dict[str, Any] = {
            "trusted_networks": ["127.0.0.1/32"],
            "reject_unknown_sender_domain": False,
            "tls": {"cert": str(b / "tls/cert.pem"), "key": str(b / "tls/key.pem")},
            "paths": host_paths(b, self.uid, self.gid),
        }
        return merge(policy, self.host_policy[host.name])

    def write_inventory(self) -> None:
        hosts = {
            h.name: {
                "address": h.net.address,
                "hostname": f"mx.{h.domain}",
                "transport": "ssh",
                "ssh": {
                    "identity_file": str(self.lab.identity_file),
                    "known_hosts": str(self.lab.known_hosts),
                    "connect_timeout": 2,
                    "command_timeout": 120,
                },
                "roles": ["postfix", "dovecot"],
                "domains": [h.domain],
                "policy": self.policy_of(h),
            }
            for h in self.hosts.values()
        }
        doc = {"schema_version": 1, "hosts": hosts, "policy": self.global_policy}
        (self.inventory / "domains").mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no quoting surprises in generated files.
        (self.inventory / "mailcfg.yml").write_text(json.dumps(doc, indent=1))
        for name in self.names:
            domain = {
                "domain": f"{name}.example",
                "accounts": self.accounts[name],
                "redirects": self.redirects[name],
            }
            (self.inventory / "domains" / f"{name}.example.yml").write_text(
                json.dumps(domain, indent=1)
            )

    def mailcfg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "compiler", args[0], str(self.inventory),
             "--roles", str(self.roles), "--cache", str(self.workdir / "cache"), *args[1:]],
            capture_output=True, text=True, cwd=self.workdir, timeout=600, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def apply(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.mailcfg("apply", "--yes", *args)

    # -- services --------------------------------------------------------------------------

    def start_services(self, host: FleetHost) -> None:
        self.lab.run_in_host(host.net, f"postfix -c {host.postfix_dir} start")
        self.lab.start_service(
            host.net, ["dovecot", "-F", "-c", str(host.dovecot_conf)], host.base / "log/dovecot.out"
        )
        sshd = host.net.sshd_pid()
        assert sshd is not None

        def ready() -> bool:
            ports = {p for _, p in listening_ports(sshd)}
            sockets = all(
                (host.queue_dir / "private" / s).exists() for s in ("auth", "dovecot-lmtp")
            )
            return {25, 143, 587} <= ports and sockets

        wait_until(ready, f"Postfix and Dovecot of {host.name}", timeout=30)

    def stop_services(self, host: FleetHost) -> None:
        with contextlib.suppress(Exception):
            self.lab.run_in_host(host.net, f"postfix -c {host.postfix_dir} stop", check=False)
        self.lab.stop_services(host.net)

    def release_of(self, host: FleetHost) -> str | None:
        current = host.net.state_dir / "current"
        if current.is_symlink():
            return os.readlink(current).rstrip("/").rsplit("/", 1)[-1]
        return current.read_text().strip() if current.exists() else None

    # -- mail ------------------------------------------------------------------------------

    def send(self, host: FleetHost, rcpt: str, subject: str) -> None:
        msg = f"From: someone@outside.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nhello\r\n"
        with smtplib.SMTP(host.net.address, 25, timeout=20) as smtp:
            smtp.ehlo("client.outside.example")
            smtp.sendmail("someone@outside.example", [rcpt], msg)

    def wait_delivered(self, host: FleetHost, address: str, subject: str) -> None:
        def arrived() -> bool:
            return any(f"Subject: {subject}".encode() in m for m in host.messages(address))

        log = host.base / "log/mail.log"
        try:
            wait_until(arrived, f"{subject} for {address} on {host.name}", timeout=30)
        except RuntimeError as exc:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{exc}\n--- {log}\n{tail}") from exc

    def assert_mail_flows(self, host: FleetHost, address: str) -> None:
        subject = f"probe-{uuid.uuid4().hex[:10]}"
        self.send(host, address, subject)
        self.wait_delivered(host, address, subject)

    def imap_login(self, host: FleetHost, address: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with imaplib.IMAP4(host.net.address, 143, timeout=20) as imap:
            imap.starttls(ssl_context=ctx)
            assert imap.login(address, PASSWORD)[0] == "OK"
            assert imap.select("INBOX", readonly=True)[0] == "OK"


ROUTES = "fleet_routes"


def copy_roles_with_routes(dest: Path) -> None:
    """The repository's roles, with a postfix default that routes other hosts' domains by the
    `fleet_routes` file beside main.cf (role defaults are code: they may set transport_maps)."""
    shutil.copytree(REPO / "roles", dest)
    defaults = dest / "postfix/defaults.yml"
    text = defaults.read_text()
    assert "\npostfix_main:\n" in text
    defaults.write_text(
        text.replace(
            "\npostfix_main:\n",
            f"\npostfix_main:\n  transport_maps: texthash:${{config_directory}}/{ROUTES}\n",
        )
    )


def merge(low: dict[str, Any], high: dict[str, Any]) -> dict[str, Any]:
    out = dict(low)
    for k, v in high.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, sshd, Postfix, Dovecot)")
    with NetnsLab() as lab:
        fleet = Fleet(lab, tmp_path_factory.mktemp("push"))
        try:
            yield fleet
        finally:
            for host in fleet.hosts.values():
                fleet.stop_services(host)


def recap_line(output: str, host: str) -> str:
    return next((line for line in output.splitlines() if line.startswith(f"{host} ")), "")


# -- the story -------------------------------------------------------------------------------


def test_first_apply_then_mail_flows_across_hosts(fleet: Fleet) -> None:
    result = fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    for name, host in fleet.hosts.items():
        assert recap_line(result.stdout, name).split()[1] == "changed", result.stdout
        assert fleet.release_of(host) is not None
        assert (host.postfix_dir / "main.cf").exists()
        assert (host.postfix_dir / "virtual_mailbox_maps.db").exists()  # built on the host
        fleet.start_services(host)
    a, b, c = (fleet.hosts[n] for n in NAMES)
    fleet.assert_mail_flows(a, "alice@a.example")
    fleet.assert_mail_flows(c, "carol@c.example")
    fleet.assert_mail_flows(b, "bob@b.example")
    # Never an open relay: an outside client cannot send through a to b's domain...
    with pytest.raises(smtplib.SMTPRecipientsRefused, match="Relay access denied"):
        fleet.send(a, "bob@b.example", "relay attempt")
    # ...but a redirect on a to an account on b is relayed by a's Postfix to b over SMTP.
    subject = f"redirect-{uuid.uuid4().hex[:8]}"
    fleet.send(a, "info@a.example", subject)
    fleet.wait_delivered(b, "bob@b.example", subject)
    fleet.imap_login(a, "alice@a.example")
    fleet.imap_login(b, "bob@b.example")
    # Nothing left to do.
    plan = fleet.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_changing_one_account_touches_only_that_host_and_its_files(fleet: Fleet) -> None:
    before = {n: fleet.release_of(h) for n, h in fleet.hosts.items()}
    fleet.accounts["b"].append(fleet.account("dave"))
    fleet.write_inventory()
    plan = fleet.mailcfg("plan", "--format", "json")
    assert plan.returncode == 0, plan.stderr
    plans = {p["host"]: p for p in json.loads(plan.stdout)["plans"]}
    assert not plans["a"]["changes"] and not plans["c"]["changes"]
    changed = {c["path"] for c in plans["b"]["changes"]}
    b = fleet.hosts["b"]
    assert changed == {
        str(b.postfix_dir / "virtual_mailbox_maps"),
        str(b.postfix_dir / "sender_login_maps"),
        str(b.base / "etc/dovecot/users"),
    }
    result = fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert recap_line(result.stdout, "a").split()[1] == "ok"
    assert recap_line(result.stdout, "b").split()[1] == "changed"
    assert recap_line(result.stdout, "c").split()[1] == "ok"
    after = {n: fleet.release_of(h) for n, h in fleet.hosts.items()}
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] != before["b"]
    fleet.assert_mail_flows(b, "dave@b.example")  # Postfix reloaded the new map
    fleet.imap_login(b, "dave@b.example")  # Dovecot reads the new passwd-file
    fleet.assert_mail_flows(b, "bob@b.example")


def test_change_rejected_by_postfix_keeps_the_previous_release(fleet: Fleet) -> None:
    c = fleet.hosts["c"]
    before = fleet.release_of(c)
    main_cf = (c.postfix_dir / "main.cf").read_bytes()
    fleet.host_policy["c"] = {"postfix_main": {"line_length_limit": "lots"}}
    fleet.write_inventory()
    result = fleet.apply()
    assert result.returncode == 1
    line = recap_line(result.stdout + result.stderr, "c")
    assert "failed" in line, result.stdout + result.stderr
    # Postfix's own words reach the user.
    assert "bad numerical configuration: line_length_limit = lots" in result.stdout + result.stderr
    assert "lots" in result.stdout + result.stderr
    assert fleet.release_of(c) == before
    assert (c.postfix_dir / "main.cf").read_bytes() == main_cf
    fleet.assert_mail_flows(c, "carol@c.example")
    fleet.host_policy["c"] = {}
    fleet.write_inventory()
    plan = fleet.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr


# The on-host apply runs these programs in order; seeing one running on the host means the
# apply is in that step. `None` marks the upload (before the on-host script starts).
STEPS: dict[str, Callable[[list[str]], bool]] = {
    "stage": lambda argv: any("onhost-" in a for a in argv) and "apply" in argv,
    "build": lambda argv: argv[:1] == ["postmap"] and "-q" not in argv,
    "validate": lambda argv: (
        argv[:1] in (["postconf"], ["doveconf"])
        or (argv[:2] == ["postfix", "-c"] and "check" in argv)
    ),
    "activate": lambda argv: "reload" in argv,
    "verify": lambda argv: any("smtplib" in a or "create_connection" in a for a in argv),
}


def netns_inode(host: NetnsHost) -> int:
    return os.stat(f"/run/netns/{host.name}").st_ino


def processes_in(inode: int) -> Iterator[list[str]]:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/net").st_ino != inode:
                continue
            raw = Path(f"/proc/{entry.name}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv and argv[0].startswith(("/bin/sh", "sh")) and "-c" in argv:
            argv = argv[argv.index("-c") + 1 :][:1]
            argv = argv[0].split() if argv else []
        yield argv


class ConnectionKiller:
    """Kills the host's SSH connections as soon as a process of `step` runs there."""

    def __init__(self, lab: NetnsLab, host: NetnsHost, step: str) -> None:
        self.lab, self.host, self.step = lab, host, step
        self.hit = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        inode, match = netns_inode(self.host), STEPS[self.step]
        while not self.done.is_set():
            if any(match(argv) for argv in processes_in(inode)):
                self.lab.kill_ssh_connections(self.host)
                self.hit.set()
                return

    def __enter__(self) -> ConnectionKiller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize("step", list(STEPS))
def test_ssh_connection_killed_during_apply(fleet: Fleet, step: str) -> None:
    a = fleet.hosts["a"]
    before = fleet.release_of(a)
    # A change that needs every step: a new account rebuilds maps and reloads both services.
    fleet.accounts["a"].append(fleet.account(f"k{step}"))
    fleet.write_inventory()
    with ConnectionKiller(fleet.lab, a.net, step) as killer:
        result = fleet.apply("--host", "a")
    output = result.stdout + result.stderr
    print(f"connection killed at {step}: {killer.hit.is_set()}, apply exit {result.returncode}")
    if not killer.hit.is_set():
        # The step finished between two looks at /proc: the apply must simply have worked.
        assert result.returncode == 0, output
    else:
        assert result.returncode in (0, 1), output
        if result.returncode == 1:
            assert "unreachable" in recap_line(output, "a") or "connection" in output, output
    # The on-host transaction is one process that does not need the connection: it runs to
    # its end (holding the host lock meanwhile, so a concurrent apply is refused).
    inode = netns_inode(a.net)
    wait_until(
        lambda: not any(STEPS["stage"](argv) for argv in processes_in(inode)),
        "the abandoned on-host apply to finish",
        timeout=120,
    )
    # Old or new release, never something in between; mail flows.
    assert fleet.release_of(a) is not None
    fleet.assert_mail_flows(a, "alice@a.example")
    # The next apply completes (and is a no-op if the killed one had committed).
    again = fleet.apply("--host", "a")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.release_of(a) != before
    fleet.assert_mail_flows(a, f"k{step}@a.example")
    plan = fleet.mailcfg("plan", "--detailed-exitcode", "--host", "a")
    assert plan.returncode == 0, plan.stdout + plan.stderr


def test_one_host_down_the_others_are_applied(fleet: Fleet) -> None:
    c = fleet.hosts["c"]
    releases = {n: fleet.release_of(h) for n, h in fleet.hosts.items()}
    fleet.global_policy = {"message_size_limit": 20_000_000}
    fleet.write_inventory()
    fleet.lab.stop_host(c.net)
    try:
        result = fleet.apply()
    finally:
        fleet.lab.start_host(c.net)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    line = recap_line(output, "c")
    assert "unreachable" in line and c.net.address in line, output
    assert "timed out" in line or "unreachable" in line
    for name in ("a", "b"):
        assert recap_line(output, name).split()[1] == "changed", output
        assert fleet.release_of(fleet.hosts[name]) != releases[name]
        assert (
            "message_size_limit = 20000000"
            in (fleet.hosts[name].postfix_dir / "main.cf").read_text()
        )
    assert fleet.release_of(c) == releases["c"]
    # Back up: the next apply brings it in line.
    again = fleet.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    assert recap_line(again.stdout, "c").split()[1] == "changed"
    fleet.assert_mail_flows(c, "carol@c.example")


def test_hand_edit_is_shown_by_plan_and_repaired_by_apply(fleet: Fleet) -> None:
    b = fleet.hosts["b"]
    main_cf = b.postfix_dir / "main.cf"
    good = main_cf.read_text()
    fleet.lab.run_in_host(b.net, f"echo 'smtpd_banner = hacked by hand' >> {main_cf}")
    plan = fleet.mailcfg("plan", "--detailed-exitcode")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert f"update {main_cf}" in plan.stdout and "DRIFT" in plan.stdout
    assert "-smtpd_banner = hacked by hand" in plan.stdout
    result = fleet.apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert recap_line(result.stdout, "b").split()[1] == "changed"
    assert recap_line(result.stdout, "a").split()[1] == "ok"
    assert main_cf.read_text() == good
    again = fleet.mailcfg("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    fleet.assert_mail_flows(b, "bob@b.example")
