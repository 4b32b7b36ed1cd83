"""An apply to a host where systemd is PID 1: what the bare-host test cannot show, since its root
has no init (`systemdhost`: a Debian 12 root booted with systemd in its own namespaces).

One `mailcfg apply` of a one-host inventory (postfix, dovecot, agent; DKIM and DMARC, so the
rspamd role; SRS, so postsrsd's) installs the packages, whose scripts start their daemons
under systemd as on any Debian host, and installs the agent's venv and unit, enabled and
started by the apply. Then: every unit is active and enabled, the agent's main process runs
the interpreter of the install `current` names, and mail received on port 25 passes rspamd's
milter and is delivered. A second apply, by a controller of another version that also changes
rspamd's DMARC switch and postsrsd's ports, restarts the agent onto the new install (a new main
process, the new interpreter), reloads rspamd (same main process, still active), restarts
postsrsd on its new port, and mail still arrives. `mailcfg rollback` then restarts the agent
onto the old install.

Needs root, the Debian archive over HTTP (through the lab's proxy) and the package index for
the agent's wheelhouse. About 3-5 minutes, most of it apt in the host.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from barehost import apt_proxy, maildir_messages, newer_checkout, run_mailcfg, ssh_host
from netns import RUNNER_ADDRESS, NetnsHost, listening_ports, wait_until
from systemdhost import SystemdHostLab, systemd_tarball, unit_main_pid, wait_active
from test_push import PASSWORD, make_hash

from tests.runtime.dnsserver import Zone, dns_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
PROXY_PORT = 23800
DNS_PORT = 53  # the host's resolver (resolv.conf names no port); on the lab bridge
DOMAIN = "sd.example"
MAIL_NAME = f"mx.{DOMAIN}"
ACCOUNT = f"alice@{DOMAIN}"
RSPAMD_MILTER = 11332  # policy.filter_ports.rspamd_proxy's default
UNITS = ["postfix.service", "dovecot.service", "mailcfg-agent.service", "rspamd.service",
         "postsrsd.service"]  # fmt: skip


@dataclass
class Booted:
    lab: SystemdHostLab
    host: NetnsHost
    workdir: Path
    inventory: Path

    @property
    def root(self) -> Path:
        return self.lab.rootfs(self.host)

    def mailcfg(self, *args: str, source: Path = REPO) -> subprocess.CompletedProcess[str]:
        """`mailcfg COMMAND INVENTORY ARGS` run from the checkout `source`."""
        return run_mailcfg(self.inventory, self.workdir, *args, source=source)

    def in_host(self, command: str) -> str:
        return self.lab.run_in_host(self.host, command, timeout=120).stdout

    def applied(self, *args: str, source: Path = REPO) -> None:
        """`mailcfg ARGS` succeeded; else the failure with the units' journal."""
        done = self.mailcfg(*args, source=source)
        if done.returncode != 0:
            journal = self.in_host(
                "journalctl --no-pager -n 80 -u mailcfg-agent -u rspamd -u postsrsd 2>&1; "
                "systemctl --failed --no-pager 2>&1"
            )
            recap = done.stdout[done.stdout.rfind("recap:") :]
            raise AssertionError(f"{args[0]} failed:\n{recap}\n{done.stderr}\n{journal}")

    def main_pid(self, unit: str) -> int:
        return unit_main_pid(self.lab, self.host, unit)

    def agent_interpreter(self) -> str:
        """argv[0] of the agent's main process: the venv interpreter its script names."""
        pid = self.main_pid("mailcfg-agent.service")
        assert pid, self.in_host("systemctl status --no-pager mailcfg-agent 2>&1 | tail -30")
        return self.in_host(f"tr '\\0' '\\n' < /proc/{pid}/cmdline | head -n 1").strip()

    def ports(self) -> set[int]:
        """TCP ports listening in the host."""
        return {port for _, port in listening_ports(self.lab.init_pid(self.host))}

    def current_agent(self) -> str:
        return os.readlink(self.root / "opt/mailcfg/agent/current")


def write_inventory(
    directory: Path, host: NetnsHost, lab: SystemdHostLab, *, changed: bool = False
) -> None:
    """The host's inventory; `changed`: rspamd's DMARC switch and postsrsd's ports differ."""
    mailcfg = {
        "schema_version": 1,
        "hosts": {
            "mx": ssh_host(lab, host, MAIL_NAME, DOMAIN),
        },
        "policy": {
            "trusted_networks": ["127.0.0.1/32"],
            "reject_unknown_sender_domain": False,
            "tls": {
                "cert": "/etc/ssl/certs/ssl-cert-snakeoil.pem",
                "key": "/etc/ssl/private/ssl-cert-snakeoil.key",
            },
            "dkim": {"selector": "mc2026a"},
            "dmarc": {"enforce": not changed},
            "srs": True,
            "filter_ports": ({"srs_forward": 10011, "srs_reverse": 10012} if changed else {}),
        },
    }
    domain = {
        "domain": DOMAIN,
        "accounts": [{"name": "alice", "password": make_hash(PASSWORD), "quota": "100M"}],
    }
    (directory / "domains").mkdir(parents=True, exist_ok=True)
    (directory / "mailcfg.yml").write_text(json.dumps(mailcfg, indent=1))
    (directory / "domains" / f"{DOMAIN}.yml").write_text(json.dumps(domain, indent=1))


@pytest.fixture(scope="module")
def booted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Booted]:
    if os.geteuid() != 0:
        pytest.fail("e2e tests need root (namespaces, chroot, systemd)")
    workdir = tmp_path_factory.mktemp("systemd")
    proxy = f"http://{RUNNER_ADDRESS}:{PROXY_PORT}/"
    with SystemdHostLab(systemd_tarball(), proxy, workdir / "lab") as lab:
        host = lab.add_host()
        root = lab.rootfs(host)
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text(f"nameserver {RUNNER_ADDRESS}\n")
        zone = Zone({MAIL_NAME: [("A", host.address)]})
        with apt_proxy(PROXY_PORT), dns_server(zone, DNS_PORT, RUNNER_ADDRESS):
            inventory = workdir / "inventory"
            write_inventory(inventory, host, lab)
            yield Booted(lab, host, workdir, inventory)


def receive_one(booted: Booted) -> None:
    """A message from outside on port 25 reaches the account's maildir (through rspamd)."""
    # rspamd (re)loading after an apply answers on its milter port some seconds later; until
    # then Postfix tempfails (451), as a sender would retry.
    wait_until(lambda: RSPAMD_MILTER in booted.ports(), "rspamd's milter port", timeout=90)
    subject = f"in-{uuid.uuid4().hex[:8]}"
    try:
        with smtplib.SMTP(booted.host.address, 25, timeout=60) as smtp:
            smtp.ehlo("client.outside.example")
            headers = f"From: someone@outside.example\r\nTo: {ACCOUNT}\r\nSubject: {subject}"
            smtp.sendmail("someone@outside.example", [ACCOUNT], f"{headers}\r\n\r\nhi\r\n")
    except smtplib.SMTPException as exc:
        log = booted.in_host(
            "journalctl --no-pager -n 60 -u postfix@- -u rspamd 2>&1;"
            " tail -n 40 /var/log/rspamd/rspamd.log 2>&1"
        )
        raise AssertionError(f"{exc}\n--- log\n{log}") from exc

    def arrived() -> list[bytes]:
        return [m for m in maildir_messages(booted.root, ACCOUNT) if subject.encode() in m]

    try:
        wait_until(lambda: bool(arrived()), f"{subject} delivered to {ACCOUNT}", timeout=90)
    except RuntimeError as exc:
        queue = booted.in_host("postqueue -p; journalctl --no-pager -n 40 -u postfix@-")
        raise AssertionError(f"{exc}\n--- queue and log\n{queue}") from exc
    assert b"Authentication-Results:" in arrived()[0]  # rspamd's milter saw it


def test_one_apply_enables_and_starts_every_unit_under_systemd(booted: Booted) -> None:
    assert booted.in_host("systemctl is-system-running --wait || true").strip() in (
        "running",
        "degraded",
    )
    booted.applied("apply", "--yes")
    wait_active(booted.lab, booted.host, UNITS, timeout=60)
    # rspamd was running the package's stock workers (localhost): restarted onto mailcfg's
    # (a reload cannot move a worker's socket), the restart recorded.
    assert booted.in_host("cat /run/mailcfg-rspamd-workers").strip()
    enabled = booted.lab.run_in_host(booted.host, "systemctl is-enabled " + " ".join(UNITS))
    assert enabled.stdout.split() == ["enabled"] * len(UNITS), enabled.stdout
    # The unit runs the install `current` names, by its absolute path.
    install = booted.current_agent()
    assert booted.agent_interpreter().startswith(f"/opt/mailcfg/agent/{install}/bin/python")
    receive_one(booted)
    again = booted.mailcfg("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr


def test_a_new_release_restarts_the_agent_and_the_filters(booted: Booted) -> None:
    old_install = booted.current_agent()
    pids = {unit: booted.main_pid(unit) for unit in UNITS}
    newer = booted.workdir / "newer"
    version = newer_checkout(REPO, newer)
    write_inventory(booted.inventory, booted.host, booted.lab, changed=True)
    booted.applied("apply", "--yes", source=newer)
    wait_active(booted.lab, booted.host, UNITS, timeout=60)

    install = booted.current_agent()
    assert install.startswith(f"{version}-") and install != old_install
    assert booted.agent_interpreter().startswith(f"/opt/mailcfg/agent/{install}/bin/python")
    assert booted.main_pid("mailcfg-agent.service") != pids["mailcfg-agent.service"]
    # postsrsd restarted onto its new ports; rspamd reloaded in place (its workers re-read
    # the files), Postfix reloaded (its master stays).
    assert booted.main_pid("postsrsd.service") != pids["postsrsd.service"]
    assert {10011, 10012} <= booted.ports() and 10001 not in booted.ports()
    assert booted.main_pid("rspamd.service") == pids["rspamd.service"]
    receive_one(booted)

    booted.applied("rollback", "mx", "--yes", source=newer)
    wait_active(booted.lab, booted.host, UNITS, timeout=60)
    assert booted.current_agent() == old_install
    assert booted.agent_interpreter().startswith(f"/opt/mailcfg/agent/{old_install}/bin/python")
    assert {10001, 10002} <= booted.ports() and 10011 not in booted.ports()
    receive_one(booted)


def test_no_process_of_the_host_outlives_it(tmp_path: Path) -> None:
    """The lab's own cleanup: killing PID 1 ends every process of the host and its cgroups
    are removed (nothing of the host is left on this machine)."""
    proxy = f"http://{RUNNER_ADDRESS}:{PROXY_PORT}/"
    with SystemdHostLab(systemd_tarball(), proxy, tmp_path / "lab") as lab:
        host = lab.add_host()
        init = lab.init_pid(host)
        cgroups = list(lab.cgroups[host.name])
        assert cgroups and all(c.is_dir() for c in cgroups)
        lab.stop_sshd(host)
        assert not Path(f"/proc/{init}").exists()
        assert not any(c.exists() for c in cgroups)
