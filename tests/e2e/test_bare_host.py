"""From a bare Debian host to a running mail server with one `mailcfg apply` (issue 12).

The host is a minimal Debian 12 root (`barehost`: minbase, openssh-server and python3 from
the Debian archive, nothing else) running only its sshd in a network namespace; its apt
reaches the archive only through the test's proxy on the lab bridge, and its name server is
the test's, on the bridge too. One `mailcfg apply` of a one-host inventory (roles postfix,
dovecot, agent; ACME against Debian's `pebble` on the bridge) installs Postfix, Dovecot,
certbot and the agent's venv, makes the vmail user and the directories, obtains the
certificate and installs the release. The root has no init (no
systemd as PID 1), so the test then starts Postfix, Dovecot and the agent itself, each with
the command line and user its Debian unit or mailcfg's unit declares (`postfix start`;
`dovecot -F`; the agent as `mailcfg-agent:postfix` with group `adm`, from
`/opt/mailcfg/agent/current`). The host then receives mail for an account on 25, lets the
account send on 587 after STARTTLS and AUTH, serves IMAP over TLS on 993 with the certificate
pebble issued, the agent answers, and the next `mailcfg plan --detailed-exitcode` exits 0.
A second test upgrades the agent (a controller whose sources say another version: a new
release with the new install, `current` moved) and rolls back to the old one.

Needs root, the Debian archive over HTTP (through the proxy) and the package index for the
agent's wheelhouse (made once, then cached); each missing piece fails or skips saying so.
Takes about 3-5 minutes, most of it apt downloading and installing in the host.
"""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import smtplib
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from barehost import (
    BareHostLab,
    apt_proxy,
    bare_tarball,
    maildir_messages,
    newer_checkout,
    run_mailcfg,
    ssh_host,
)
from netns import RUNNER_ADDRESS, NetnsHost, listening_ports, wait_until
from pebble import PebblePorts, running_pebble
from test_push import PASSWORD, make_hash

from tests.runtime.dnsserver import Zone, dns_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
PROXY_PORT = 23600
PORTS = PebblePorts(acme=23610, management=23611, http_01=23680, tls_alpn=23681)
DNS_PORT = 53  # the host's resolver (resolv.conf names no port); on the lab bridge
DOMAIN = "bare.example"
MAIL_NAME = f"mx.{DOMAIN}"
ACCOUNT = f"alice@{DOMAIN}"
LIVE = "/etc/letsencrypt/live/mailcfg"
CA_IN_HOST = "/etc/mcfg-test/pebble-ca.pem"
AGENT = "/opt/mailcfg/agent/current/bin/mailcfg-agent"


@dataclass
class Bare:
    lab: BareHostLab
    host: NetnsHost
    workdir: Path
    inventory: Path
    ca: Path

    @property
    def root(self) -> Path:
        return self.lab.rootfs(self.host)

    def mailcfg(self, *args: str, source: Path = REPO) -> subprocess.CompletedProcess[str]:
        """`mailcfg COMMAND INVENTORY ARGS` run from the checkout `source`."""
        return run_mailcfg(self.inventory, self.workdir, *args, source=source)

    def in_host(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.lab.run_in_host(self.host, command, check=False, timeout=timeout)

    def start_services(self) -> None:
        """Postfix, Dovecot and the agent as their units start them (no init in the root)."""
        done = self.in_host("postfix start")
        assert done.returncode == 0, done.stderr + done.stdout
        master = (self.root / "var/spool/postfix/pid/master.pid").read_text().split()[0]
        self.lab.track_pid(self.host, int(master))
        self.lab.start_service(self.host, ["dovecot", "-F"], self.workdir / "dovecot.out")
        # mailcfg-agent.service: RuntimeDirectory=mailcfg, StateDirectory=mailcfg/agent (0750
        # for its user), User=mailcfg-agent, Group=postfix, SupplementaryGroups=adm.
        made = self.in_host(
            "install -d -o mailcfg-agent -g postfix -m 0750 /run/mailcfg /var/lib/mailcfg/agent"
        )
        assert made.returncode == 0, made.stderr
        self.lab.start_service(
            self.host,
            ["setpriv", "--reuid=mailcfg-agent", "--regid=postfix", "--groups=adm",
             "--inh-caps=-all", AGENT, "serve", "--config", "/etc/mailcfg/agent.json"],
            self.workdir / "agent.out",
        )  # fmt: skip
        sshd = self.host.sshd_pid()
        assert sshd is not None

        def ready() -> bool:
            ports = {p for _, p in listening_ports(sshd)}
            return {25, 587, 993} <= ports and (self.root / "run/mailcfg/policy.sock").exists()

        try:
            wait_until(ready, "Postfix, Dovecot and the agent in the bare host", timeout=60)
        except RuntimeError as exc:
            out = (self.workdir / "agent.out").read_text(errors="replace")[-2000:]
            raise AssertionError(f"{exc}\n--- agent\n{out}") from exc


def write_inventory(directory: Path, host: NetnsHost, lab: BareHostLab) -> None:
    mailcfg = {
        "schema_version": 1,
        "hosts": {
            "mx": {
                **ssh_host(lab, host, MAIL_NAME, DOMAIN),
                "policy": {
                    "tls": {
                        "cert": f"{LIVE}/fullchain.pem",
                        "key": f"{LIVE}/privkey.pem",
                        "acme": {
                            "email": f"hostmaster@{DOMAIN}",
                            "directory": PORTS.directory,
                            "http_port": PORTS.http_01,
                            "ca_bundle": CA_IN_HOST,
                        },
                    },
                },
            }
        },
        "policy": {"trusted_networks": ["127.0.0.1/32"], "reject_unknown_sender_domain": False},
    }
    domain = {
        "domain": DOMAIN,
        "accounts": [{"name": "alice", "password": make_hash(PASSWORD), "quota": "100M"}],
    }
    (directory / "domains").mkdir(parents=True)
    (directory / "mailcfg.yml").write_text(json.dumps(mailcfg, indent=1))
    (directory / "domains" / f"{DOMAIN}.yml").write_text(json.dumps(domain, indent=1))


@contextmanager
def running_bare_host(workdir: Path) -> Iterator[Bare]:
    """A bare host, its inventory, the apt proxy, the name server and pebble, until the block
    ends (shared with `bench/push/bare.py`)."""
    proxy = f"http://{RUNNER_ADDRESS}:{PROXY_PORT}/"
    with BareHostLab(bare_tarball(), proxy, workdir / "lab") as lab:
        host = lab.add_host()
        root = lab.rootfs(host)
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text(f"nameserver {RUNNER_ADDRESS}\n")
        zone = Zone({MAIL_NAME: [("A", host.address)]})
        with (
            apt_proxy(PROXY_PORT),
            dns_server(zone, DNS_PORT, RUNNER_ADDRESS) as dns,
            running_pebble(workdir / "pebble", PORTS, dns) as ca,
        ):
            (root / CA_IN_HOST.lstrip("/")).parent.mkdir(parents=True)
            shutil.copy(ca, root / CA_IN_HOST.lstrip("/"))
            inventory = workdir / "inventory"
            write_inventory(inventory, host, lab)
            try:
                yield Bare(lab, host, workdir, inventory, ca)
            finally:
                lab.stop_services(host)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bare]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (network namespaces, chroot, sshd)")
    with running_bare_host(tmp_path_factory.mktemp("bare")) as state:
        yield state


def tls_context(ca: Path) -> ssl.SSLContext:
    """Trusts pebble's issuing chain only (fetched from its management API)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = True
    ctx.load_verify_locations(cafile=str(ca))
    return ctx


def pebble_roots(workdir: Path, ca: Path) -> Path:
    """Pebble's root and intermediate certificates (its management API), as one CA file."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    pems = []
    for path in ("roots/0", "intermediates/0"):
        url = f"https://{RUNNER_ADDRESS}:{PORTS.management}/{path}"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as answer:
            pems.append(answer.read().decode())
    bundle = workdir / "pebble-issuer.pem"
    bundle.write_text("\n".join(pems))
    return bundle


def wait_delivered(bare: Bare, subject: str) -> None:
    def arrived() -> bool:
        return any(
            f"Subject: {subject}".encode() in m for m in maildir_messages(bare.root, ACCOUNT)
        )

    try:
        wait_until(arrived, f"{subject} delivered to {ACCOUNT}", timeout=60)
    except RuntimeError as exc:
        queue = bare.in_host("postqueue -p").stdout
        raise AssertionError(f"{exc}\n--- queue\n{queue}") from exc


def test_one_apply_makes_a_bare_debian_host_a_mail_server(bare: Bare) -> None:
    for tool in ("postconf", "dovecot", "certbot"):
        assert bare.in_host(f"command -v {tool}").returncode != 0, f"{tool} before the apply"
    plan = bare.mailcfg("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    for line in ("install package postfix", "install package dovecot-imapd", "run agent "):
        assert line in plan.stdout, plan.stdout
    started = time.monotonic()
    applied = bare.mailcfg("apply", "--yes")
    took = time.monotonic() - started
    assert applied.returncode == 0, applied.stdout + applied.stderr
    print(f"bare host to mail server: one apply took {took:.1f} s")

    bare.start_services()
    issuer = pebble_roots(bare.workdir, bare.ca)
    ctx = tls_context(issuer)
    # IMAP over TLS with pebble's certificate for the mail name (verified, hostname checked).
    with imaplib.IMAP4_SSL(bare.host.address, 993, ssl_context=_for_name(ctx)) as imap:
        assert imap.login(ACCOUNT, PASSWORD)[0] == "OK"
    # Port 25 receives for the account.
    subject = f"in-{uuid.uuid4().hex[:8]}"
    with smtplib.SMTP(bare.host.address, 25, timeout=30) as smtp:
        smtp.ehlo("client.outside.example")
        smtp.sendmail(
            "someone@outside.example", [ACCOUNT],
            f"From: someone@outside.example\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n\r\nhi\r\n",
        )  # fmt: skip
    wait_delivered(bare, subject)
    # 587: no AUTH before STARTTLS; after it the account sends (here to itself).
    subject = f"out-{uuid.uuid4().hex[:8]}"
    with smtplib.SMTP(bare.host.address, 587, timeout=30) as smtp:
        smtp.ehlo("laptop")
        assert not smtp.has_extn("auth")
        smtp.starttls(context=_for_name(ctx))
        smtp.ehlo("laptop")
        smtp.login(ACCOUNT, PASSWORD)
        smtp.sendmail(
            ACCOUNT, [ACCOUNT],
            f"From: {ACCOUNT}\r\nTo: {ACCOUNT}\r\nSubject: {subject}\r\n\r\nsent\r\n",
        )  # fmt: skip
    wait_delivered(bare, subject)
    # The agent answers, from the install mailcfg made.
    ping = bare.in_host(f"{AGENT} ping --config /etc/mailcfg/agent.json --wait 10")
    assert ping.returncode == 0, ping.stdout + ping.stderr

    again = bare.mailcfg("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr


def _for_name(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """`ctx`, checking the certificate against the mail name (we connect by address)."""
    wrapped = ctx.wrap_socket

    def wrap(sock: object, *args: object, **kwargs: object) -> ssl.SSLSocket:
        kwargs["server_hostname"] = MAIL_NAME
        return wrapped(sock, *args, **kwargs)  # type: ignore[arg-type]

    ctx.wrap_socket = wrap  # type: ignore[method-assign]
    return ctx


def agent_version(bare: Bare) -> str:
    code = "import importlib.metadata as m; print(m.version('mailcfg'))"
    out = bare.in_host(f'/opt/mailcfg/agent/current/bin/python3 -I -c "{code}"')
    return out.stdout.strip()


def test_an_agent_upgrade_is_a_release_and_rolls_back(bare: Bare) -> None:
    before = os.readlink(bare.root / "opt/mailcfg/agent/current")
    old_version = agent_version(bare)
    newer = bare.workdir / "newer"
    version = newer_checkout(REPO, newer)
    plan = bare.mailcfg("plan", source=newer)
    assert plan.returncode == 0 and f"run agent {version}-" in plan.stdout, plan.stdout
    applied = bare.mailcfg("apply", "--yes", source=newer)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    after = os.readlink(bare.root / "opt/mailcfg/agent/current")
    assert after.startswith(f"{version}-") and after != before
    assert agent_version(bare) == version
    assert (bare.root / "opt/mailcfg/agent" / before).is_dir()  # kept for the rollback

    back = bare.mailcfg("rollback", "mx", "--yes", source=newer)
    assert back.returncode == 0, back.stdout + back.stderr
    assert os.readlink(bare.root / "opt/mailcfg/agent/current") == before
    assert agent_version(bare) == old_version
